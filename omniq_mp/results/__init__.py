"""Result storage backends behind :class:`~omniq_mp.results.base.ResultStorage`.

The server backends (PostgreSQL, Redis, NATS) load on first use, so importing this package
needs none of their extras.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from omniq_mp.results.base import ResultStorage, TaskResult
from omniq_mp.results.file import FileResultStorage
from omniq_mp.results.memory import MemoryResultStorage
from omniq_mp.results.sqlite import SQLiteResultStorage

if TYPE_CHECKING:
    from omniq_mp.results.nats import NATSResultStorage
    from omniq_mp.results.postgres import PostgreSQLResultStorage
    from omniq_mp.results.redis import RedisResultStorage

__all__ = [
    "FileResultStorage",
    "MemoryResultStorage",
    "NATSResultStorage",
    "PostgreSQLResultStorage",
    "RedisResultStorage",
    "ResultStorage",
    "SQLiteResultStorage",
    "TaskResult",
]

_LAZY = {
    "NATSResultStorage": "omniq_mp.results.nats",
    "PostgreSQLResultStorage": "omniq_mp.results.postgres",
    "RedisResultStorage": "omniq_mp.results.redis",
}


def __getattr__(name: str) -> Any:
    """Import a server backend's module when one of its names is first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
