"""The event-storage backends every event contract test runs against.

Each entry is ``(service, factory)``: the server it needs (None for none) and a function of
``(tmp_path, unique)`` returning an unopened log. Two calls with the same arguments give two
logs on the same location, also in another process. Fixtures call
``tests.services.require(service)`` before a factory, so the factories read server URLs from
``SERVICES`` knowing the server is up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omniq_mp.eventstore.base import EventStorage
from omniq_mp.eventstore.file import FileEventStorage
from omniq_mp.eventstore.memory import MemoryEventStorage
from omniq_mp.eventstore.sqlite import SQLiteEventStorage
from tests.services import SERVICES

Factory = Callable[[Path, str], EventStorage]


def _postgres(_: Path, unique: str) -> EventStorage:
    from omniq_mp.eventstore.postgres import PostgreSQLEventStorage

    return PostgreSQLEventStorage(dsn=SERVICES["postgres"].url, table=f"omniq_events_{unique}")


def _redis(_: Path, unique: str) -> EventStorage:
    from omniq_mp.eventstore.redis import RedisEventStorage

    return RedisEventStorage(url=SERVICES["redis"].url, prefix=f"omniq-test-{unique}")


def _nats(_: Path, unique: str) -> EventStorage:
    from omniq_mp.eventstore.nats import NATSEventStorage

    return NATSEventStorage(
        servers=[SERVICES["nats"].url],
        stream=f"OMNIQ_EVENTS_{unique}",
        subject=f"omniq.test.{unique}",
    )


# Small file segments, so the shared contract also reads and purges across segments.
EVENT_BACKENDS: dict[str, tuple[str | None, Factory]] = {
    "memory": (None, lambda _, __: MemoryEventStorage()),
    "sqlite": (None, lambda d, _: SQLiteEventStorage(d / "events.db")),
    "file": (None, lambda d, _: FileEventStorage(d / "events", segment_events=50)),
    "postgres": ("postgres", _postgres),
    "redis": ("redis", _redis),
    "nats": ("nats", _nats),
}
SHARED = ["sqlite", "file", "postgres", "redis", "nats"]  # several processes can share these


def backend_params(names: list[str]) -> list[Any]:
    """``names`` as pytest params, each marked with the server it needs (``-m "not nats"``)."""
    return [_marked(name, EVENT_BACKENDS[name][0]) for name in names]


def _marked(name: str, service: str | None) -> Any:
    return name if service is None else pytest.param(name, marks=getattr(pytest.mark, service))
