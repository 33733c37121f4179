"""The storage backends every contract test runs against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omniq_mp.storage.base import Storage
from omniq_mp.storage.file import FileStorage
from omniq_mp.storage.memory import MemoryStorage
from omniq_mp.storage.sqlite import SQLiteStorage

BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "memory": lambda _: MemoryStorage(),
    "sqlite": lambda d: SQLiteStorage(d / "omniq.db"),
    "file": lambda d: FileStorage(d / "store"),
}
PERSISTENT = ["sqlite", "file"]
