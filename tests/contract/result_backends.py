"""The result-storage backends every result contract test runs against.

Each entry is ``(service, factory)``: the server it needs (None for none) and a function of
``(tmp_path, unique)`` returning an unopened store. Two calls with the same arguments give
two stores on the same location. Fixtures call ``tests.services.require(service)`` before a
factory, so the factories read server URLs from ``SERVICES`` knowing the server is up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omniq_mp.results.base import ResultStorage
from omniq_mp.results.file import FileResultStorage
from omniq_mp.results.memory import MemoryResultStorage
from omniq_mp.results.sqlite import SQLiteResultStorage
from tests.services import SERVICES

Factory = Callable[[Path, str], ResultStorage]


def _postgres(_: Path, unique: str) -> ResultStorage:
    from omniq_mp.results.postgres import PostgreSQLResultStorage

    return PostgreSQLResultStorage(dsn=SERVICES["postgres"].url, table=f"omniq_results_{unique}")


def _redis(_: Path, unique: str) -> ResultStorage:
    from omniq_mp.results.redis import RedisResultStorage

    return RedisResultStorage(url=SERVICES["redis"].url, prefix=f"omniq-test-{unique}")


def _nats(_: Path, unique: str) -> ResultStorage:
    from omniq_mp.results.nats import NATSResultStorage

    return NATSResultStorage(servers=[SERVICES["nats"].url], bucket=f"omniq_results_{unique}")


RESULT_BACKENDS: dict[str, tuple[str | None, Factory]] = {
    "memory": (None, lambda _, __: MemoryResultStorage()),
    "file": (None, lambda d, _: FileResultStorage(d / "results")),
    "file-memory": (None, lambda _, u: FileResultStorage(f"memory://omniq-{u}")),
    "sqlite": (None, lambda d, _: SQLiteResultStorage(d / "results.db")),
    "postgres": ("postgres", _postgres),
    "redis": ("redis", _redis),
    "nats": ("nats", _nats),
}
# Where a second store on the same location sees the first one's results, also after it
# closed: all but the dict of one MemoryResultStorage.
SHARED = [name for name in RESULT_BACKENDS if name != "memory"]


def backend_params(names: list[str]) -> list[Any]:
    """``names`` as pytest params, each marked with the server it needs (``-m "not nats"``)."""
    return [_marked(name, RESULT_BACKENDS[name][0]) for name in names]


def _marked(name: str, service: str | None) -> Any:
    return name if service is None else pytest.param(name, marks=getattr(pytest.mark, service))
