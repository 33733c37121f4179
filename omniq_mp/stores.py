"""Build the event and result stores that settings name.

Each kind has a working default on a developer machine (a file under ``base_dir``, or the
server on localhost at its standard port), and each default can be overridden with the
``*_path``, ``*_url`` or ``*_dsn`` setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omniq_mp.errors import ConfigError

if TYPE_CHECKING:
    from omniq_mp.config import Settings
    from omniq_mp.eventstore.base import EventStorage
    from omniq_mp.results.base import ResultStorage

__all__ = [
    "DEFAULT_NATS_URL",
    "DEFAULT_REDIS_URL",
    "event_storage_at",
    "open_event_storage",
    "open_result_storage",
    "result_storage_at",
]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_NATS_URL = "nats://localhost:4222"


def open_event_storage(settings: Settings) -> EventStorage | None:
    """The (unopened) event store ``settings`` name, or None when events are off."""
    kind = settings.event_storage_type or "sqlite"
    if kind == "none":
        return None
    return event_storage_at(
        kind,
        path=settings.events_path,
        url=settings.event_storage_url,
        dsn=settings.event_storage_dsn or settings.postgres_dsn,
        schema=settings.postgres_schema,
    )


def open_result_storage(settings: Settings) -> ResultStorage | None:
    """The (unopened) result store ``settings`` name, or None: results stay in the queue."""
    kind = settings.result_storage_type
    if kind is None:
        return None
    default = "results.db" if kind == "sqlite" else "results"
    return result_storage_at(
        kind,
        path=settings.result_storage_path or Path(settings.base_dir) / default,
        url=settings.result_storage_url,
        dsn=settings.result_storage_dsn or settings.postgres_dsn,
        schema=settings.postgres_schema,
    )


def event_storage_at(
    kind: str,
    *,
    path: str | Path | None = None,
    url: str | None = None,
    dsn: str | None = None,
    schema: str | None = None,
) -> EventStorage:
    """An (unopened) event store of ``kind`` with the given address, defaults elsewhere;
    ``schema`` is the PostgreSQL schema of a ``postgres`` one."""
    from omniq_mp import eventstore

    if kind == "memory":
        return eventstore.MemoryEventStorage()
    if kind == "sqlite":
        return eventstore.SQLiteEventStorage(_sqlite_file(path, "events.db"))
    if kind == "file":
        return eventstore.FileEventStorage(Path(path or "./omniq_data/events"))
    if kind in ("postgres", "postgresql"):
        from omniq_mp.eventstore.postgres import PostgreSQLEventStorage
        from omniq_mp.pg import DEFAULT_DSN

        return PostgreSQLEventStorage(dsn or DEFAULT_DSN, schema=schema)
    if kind == "redis":
        from omniq_mp.eventstore.redis import RedisEventStorage

        return RedisEventStorage(url=url or DEFAULT_REDIS_URL)
    if kind == "nats":
        from omniq_mp.eventstore.nats import NATSEventStorage

        return NATSEventStorage(servers=_servers(url))
    raise ConfigError(
        "event_storage_type must be sqlite, file, memory, postgres, redis, nats or none; "
        f"got {kind!r}"
    )


def result_storage_at(
    kind: str,
    *,
    path: str | Path | None = None,
    url: str | None = None,
    dsn: str | None = None,
    schema: str | None = None,
) -> ResultStorage:
    """An (unopened) result store of ``kind`` with the given address, defaults elsewhere;
    ``schema`` is the PostgreSQL schema of a ``postgres`` one."""
    from omniq_mp import results

    if kind == "memory":
        return results.MemoryResultStorage()
    if kind == "sqlite":
        return results.SQLiteResultStorage(_sqlite_file(path, "results.db"))
    if kind == "file":
        return results.FileResultStorage(str(path or "./omniq_data/results"))
    if kind in ("postgres", "postgresql"):
        from omniq_mp.pg import DEFAULT_DSN

        return results.PostgreSQLResultStorage(dsn or DEFAULT_DSN, schema=schema)
    if kind == "redis":
        return results.RedisResultStorage(url=url or DEFAULT_REDIS_URL)
    if kind == "nats":
        return results.NATSResultStorage(servers=_servers(url))
    raise ConfigError(
        f"result_storage_type must be sqlite, file, memory, postgres, redis or nats; got {kind!r}"
    )


def _sqlite_file(path: str | Path | None, name: str) -> Path:
    # A folder that exists gets the database inside it under its usual name: the
    # ``*_base_dir`` spellings of these settings invite a folder, and SQLite itself would
    # only say "unable to open database file".
    if path is None:
        return Path("./omniq_data") / name
    path = Path(path)
    return path / name if path.is_dir() else path


def _servers(url: str | None) -> list[str]:
    # NATS clients take a list of servers: "nats://a:4222,nats://b:4222" names several.
    return [part.strip() for part in (url or DEFAULT_NATS_URL).split(",") if part.strip()]
