"""Storage backends behind the :class:`~omniq_mp.storage.base.Storage` protocol."""

from __future__ import annotations

from omniq_mp.config import Settings
from omniq_mp.storage.base import QueueStats, Storage, WorkerInfo
from omniq_mp.storage.memory import MemoryStorage

__all__ = ["MemoryStorage", "QueueStats", "Storage", "WorkerInfo", "open_storage"]


def open_storage(settings: Settings) -> Storage:
    """The backend named by ``settings.backend``, not yet opened."""
    if settings.backend == "memory":
        return MemoryStorage()
    if settings.backend == "postgres":
        from omniq_mp.storage.postgres import PostgresStorage

        return PostgresStorage(settings.postgres_dsn, schema=settings.postgres_schema)
    if settings.backend == "file":
        from omniq_mp.storage.file import FileStorage

        return FileStorage(settings.base_dir)
    from omniq_mp.storage.sqlite import SQLiteStorage

    return SQLiteStorage(settings.sqlite_path, synchronous=settings.sqlite_synchronous)
