"""The storage backends every contract test runs against."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omniq_mp.storage.base import Storage
from omniq_mp.storage.file import FileStorage
from omniq_mp.storage.memory import MemoryStorage
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.services import require


def _postgres(folder: Path) -> Storage:
    """A PostgreSQL store on a schema of its own for the test owning ``folder``: the schema
    name is kept in the folder, so reopening (or a child process) finds the same schema."""
    from omniq_mp.storage.postgres import PostgresStorage

    dsn = require("postgres").url
    marker = folder / "postgres_schema"
    if marker.exists():
        schema = marker.read_text()
    else:
        schema = f"omniq_test_{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(schema)
    CREATED_SCHEMAS.add((dsn, schema))
    return PostgresStorage(dsn, schema=schema)


BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "memory": lambda _: MemoryStorage(),
    "sqlite": lambda d: SQLiteStorage(d / "omniq.db"),
    "file": lambda d: FileStorage(d / "store"),
    "postgres": _postgres,
}
PERSISTENT = ["sqlite", "file", "postgres"]
NEEDS_SERVER = {"postgres"}  # also the name of the marker (``-m "not postgres"``)


def backend_params(names: list[str]) -> list[Any]:
    """``names`` as pytest params, those needing a server marked with its name."""
    return [
        pytest.param(name, marks=getattr(pytest.mark, name)) if name in NEEDS_SERVER else name
        for name in names
    ]


CREATED_SCHEMAS: set[tuple[str, str]] = set()  # (dsn, schema) made in this process


def drop_created_schemas() -> None:
    """Drop every schema the postgres factory handed out in this process.

    Runs on a thread with its own event loop, so it works from any fixture teardown
    whatever loop the test used.
    """
    from omniq_mp.storage.postgres import PostgresStorage

    chosen = sorted(CREATED_SCHEMAS)
    CREATED_SCHEMAS.clear()

    async def drop() -> None:
        for dsn, schema in chosen:
            await PostgresStorage(dsn, schema=schema).drop()

    if chosen:
        failures: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(drop())
            except BaseException as exc:  # re-raised on the calling thread
                failures.append(exc)

        thread = threading.Thread(target=main)
        thread.start()
        thread.join()
        if failures:
            raise failures[0]
