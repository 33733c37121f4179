"""Result storage backends behind :class:`~omniq_mp.results.base.ResultStorage`.

The server backends (PostgreSQL, Redis, NATS) load on first use, so importing this package
needs none of their extras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omniq_mp.lazy_names import lazy_attributes
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


# Server backends: imported when one of their names is first asked for.
__getattr__ = lazy_attributes(globals(), _LAZY)
