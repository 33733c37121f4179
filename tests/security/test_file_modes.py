"""Stores omniq_mp creates are private to their user (folders 0700, files 0600), and a
supervisor warns at start when signing is off and others can reach its store."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from omniq_mp import AsyncOmniQ, Settings, Task, TaskStatus
from omniq_mp.eventstore import Event, EventType, FileEventStorage, SQLiteEventStorage
from omniq_mp.models import Outcome, OutcomeKind
from omniq_mp.queue import AsyncTaskQueue
from omniq_mp.results import FileResultStorage, SQLiteResultStorage, TaskResult
from omniq_mp.serialization import dumps_call
from omniq_mp.storage.file import FileStorage
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.process.conftest import no_stray_processes  # noqa: F401 (autouse: no leaked workers)

KEY = "file-modes-signing-key-" + "k" * 32


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes_under(root: Path) -> dict[str, int]:
    """The mode of ``root`` and of every folder and file below it (links excluded)."""
    found = {".": mode(root)}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            if not path.is_symlink():
                found[str(path.relative_to(root))] = mode(path)
    return found


def assert_private(root: Path) -> None:
    for name, bits in modes_under(root).items():
        wanted = 0o700 if (root / name).is_dir() else 0o600
        assert bits == wanted, f"{name}: mode {bits:04o}, expected {wanted:04o}"


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    """A folder of the user's, group-readable: omniq_mp must create inside it, not chmod it."""
    folder = tmp_path / "mine"
    folder.mkdir()
    folder.chmod(0o750)
    return folder


def _task() -> Task:
    return Task(func_name="pow", payload=dumps_call(pow, (2, 3), {}), key="nightly")


async def _use_queue(storage: SQLiteStorage | FileStorage) -> None:
    """Enqueue, claim and settle one task, then enqueue another that stays pending: every
    kind of file the store writes (entries, key files, id links, temp files)."""
    queue = AsyncTaskQueue(storage)
    [task_id] = await storage.enqueue([_task()])
    [claimed] = await queue.claim(["default"], 1, "w", 30)
    await storage.settle([queue.settlement(claimed, Outcome(OutcomeKind.SUCCEEDED, b"8"))])
    done = await storage.get(task_id)
    assert done is not None and done.status is TaskStatus.COMPLETED
    await storage.enqueue([_task()])


async def test_sqlite_queue_database_wal_shm_and_lock_are_private(existing: Path) -> None:
    db = existing / "a" / "b" / "omniq.db"
    storage = SQLiteStorage(db)
    await storage.open()
    try:
        await _use_queue(storage)
        for suffix in ("-wal", "-shm"):  # SQLite gives them the database file's mode
            assert mode(Path(f"{db}{suffix}")) == 0o600, suffix
        assert_private(existing / "a")
        assert {p.name for p in db.parent.iterdir()} >= {"omniq.db", "omniq.db-init.lock"}
    finally:
        await storage.close()
    assert mode(existing) == 0o750, "a folder omniq_mp did not create was changed"


async def test_file_queue_folders_and_files_are_private(existing: Path) -> None:
    storage = FileStorage(existing / "store")
    await storage.open()
    try:
        await _use_queue(storage)
    finally:
        await storage.close()
    assert_private(existing / "store")
    assert mode(existing) == 0o750


async def test_event_stores_are_private(existing: Path) -> None:
    events = [Event(EventType.ENQUEUED, task_id="t1")]
    sqlite_store = SQLiteEventStorage(existing / "ev" / "events.db")
    await sqlite_store.open()
    try:
        await sqlite_store.append(events)
        assert mode(existing / "ev" / "events.db-wal") == 0o600
        assert_private(existing / "ev")
    finally:
        await sqlite_store.close()
    file_store = FileEventStorage(existing / "log" / "events")
    await file_store.open()
    await file_store.append(events)
    await file_store.close()
    assert_private(existing / "log")


async def test_result_stores_are_private(existing: Path) -> None:
    results = [TaskResult("t1", TaskStatus.COMPLETED, b"8", finished_at=time.time())]
    sqlite_store = SQLiteResultStorage(existing / "res" / "results.db")
    await sqlite_store.open()
    try:
        await sqlite_store.store(results)
        assert mode(existing / "res" / "results.db-wal") == 0o600
        assert_private(existing / "res")
    finally:
        await sqlite_store.close()
    file_store = FileResultStorage(existing / "files" / "results")
    await file_store.open()
    await file_store.store(results)
    await file_store.close()
    assert_private(existing / "files")
    assert mode(existing) == 0o750


# -- the start-up warning ----------------------------------------------------------------------


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """Messages of ``insecure_store`` warnings logged during the test."""
    found: list[str] = []

    def sink(message: object) -> None:
        record = message.record  # type: ignore[attr-defined]
        if record["extra"].get("action") == "insecure_store":
            found.append(f"{record['level'].name}: {record['message']}")

    logger.enable("omniq_mp")
    handle = logger.add(sink, level="WARNING")
    try:
        yield found
    finally:
        logger.remove(handle)
        logger.disable("omniq_mp")


@pytest.mark.process
@pytest.mark.parametrize(
    ("folder_mode", "signing", "warned"),
    [(0o777, False, True), (0o777, True, False), (0o700, False, False)],
    ids=["0777-signing-off", "0777-signing-on", "0700-signing-off"],
)
async def test_a_store_others_can_write_is_reported_at_start_while_signing_is_off(
    tmp_path: Path, warnings_logged: list[str], folder_mode: int, signing: bool, warned: bool
) -> None:
    base = tmp_path / "shared"
    base.mkdir()
    base.chmod(folder_mode)
    settings = Settings(base_dir=base, procs=1, signing_key=KEY if signing else None)
    async with AsyncOmniQ(settings):
        pass
    if not warned:
        assert warnings_logged == []
        return
    [text] = warnings_logged
    assert text.startswith("WARNING")
    assert f"{base} (mode 0777)" in text
    assert "run code" in text and "signing_key" in text
