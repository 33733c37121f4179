"""Damaged stores: SQLite files that are not databases any more, rows damaged behind the
library's back, and file-store entries that are empty, cut short, garbage, of another
schema, or links out of the store.

What a user relies on: a damaged SQLite file is refused with one line and never
rewritten; a damaged row is reported naming its task and does not stop the other tasks;
a damaged file-store entry is moved to ``quarantine/`` with a reason while the valid
entries beside it run, and the supervisor keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import OmniQ, Settings, TaskStatus
from omniq_mp.errors import StorageError
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.malformed import objects
from tests.malformed.objects import Run, runtime_error
from tests.waiting import wait_for

pytestmark = pytest.mark.process

RESULT_WAIT = 30.0
CLI_WAIT = 20.0  # seconds; a refused store must answer long before this


# -- SQLite: a file that is no longer a database ------------------------------------------------


def seeded_sqlite(base_dir: Path, tasks: int = 300) -> Path:
    """A real store of ``tasks`` pending tasks, closed (WAL checkpointed into the file)."""
    q = OmniQ(Settings(base_dir=base_dir))
    try:
        q.enqueue_tasks([q.build(pow, 2, n) for n in range(tasks)])
    finally:
        q.close()
    return base_dir / "omniq.db"


def overwrite_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:100] = random.Random(22).randbytes(100)
    db.write_bytes(bytes(data))


def truncate_to_half(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def empty_file(db: Path) -> None:
    db.write_bytes(b"")


def directory_in_its_place(db: Path) -> None:
    db.unlink()
    db.mkdir()


def random_bytes(db: Path) -> None:
    db.write_bytes(random.Random(7).randbytes(db.stat().st_size))


SQLITE_DAMAGE = [
    overwrite_header,
    truncate_to_half,
    empty_file,
    directory_in_its_place,
    random_bytes,
]


def snapshot(path: Path) -> bytes | list[str]:
    return sorted(os.listdir(path)) if path.is_dir() else path.read_bytes()


@pytest.mark.parametrize("damage", SQLITE_DAMAGE, ids=[d.__name__ for d in SQLITE_DAMAGE])
def test_damaged_sqlite_file_is_a_storage_error_and_is_never_rewritten(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    db = seeded_sqlite(tmp_path / "store")
    damage(db)
    before = snapshot(db)
    q = OmniQ(Settings(base_dir=tmp_path / "store", procs=1))
    try:
        with pytest.raises(StorageError) as info:
            q.stats()
        assert "omniq.db" in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(StorageError):
            q.enqueue(pow, 2, 3)
    finally:
        q.close()
    assert snapshot(db) == before


@pytest.mark.e2e
@pytest.mark.parametrize("damage", SQLITE_DAMAGE, ids=[d.__name__ for d in SQLITE_DAMAGE])
def test_damaged_sqlite_file_makes_every_command_exit_1_with_one_line(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    base = tmp_path / "store"
    db = seeded_sqlite(base)
    damage(db)
    before = snapshot(db)
    for args in (("workers", "--burst", "--procs", "1"), ("status",), ("enqueue", "math.pow")):
        run = Run(base)
        assert "omniq.db" in runtime_error(run(*args, timeout=CLI_WAIT))
        assert run.took < 10.0, f"{args} took {run.took:.1f}s: no retry storm on a damaged file"
    assert snapshot(db) == before


# -- SQLite: rows damaged behind the library's back ---------------------------------------------


def sqlite_settings(tmp_path: Path, **overrides: Any) -> Settings:
    options: dict[str, Any] = {"base_dir": tmp_path / "store", "procs": 1, "lease_ttl": 1.0}
    options.update(overrides)
    return Settings(**options)


def enqueue_all(settings: Settings, count: int) -> list[str]:
    q = OmniQ(settings)
    try:
        return [q.enqueue(pow, 2, n) for n in range(count)]
    finally:
        q.close()


def damage_row(settings: Settings, task_id: str, column: str, value: Any) -> None:
    with sqlite3.connect(settings.sqlite_path) as db:
        db.execute(f"UPDATE tasks SET {column} = ? WHERE id = ?", (value, task_id))
    db.close()


ROW_DAMAGE = [
    pytest.param("error", "{not json", id="error-not-json"),
    pytest.param("history", '[{"error_type": ', id="history-cut-short"),
    pytest.param("status", "BOGUS", id="status-unknown"),
    pytest.param("payload", "text, not bytes", id="payload-text"),
    pytest.param(
        "error",
        "[1, 2]",
        id="error-json-list",
    ),
    pytest.param(
        "payload",
        2**62,
        id="payload-huge-integer",
    ),
    pytest.param(
        "history",
        "[1]",
        id="history-json-of-numbers",
    ),
]


@pytest.mark.parametrize(("column", "value"), ROW_DAMAGE)
def test_a_damaged_row_reads_as_a_storage_error_naming_its_task(
    tmp_path: Path, column: str, value: Any
) -> None:
    settings = sqlite_settings(tmp_path)
    bad, good = enqueue_all(settings, 2)
    damage_row(settings, bad, column, value)
    q = OmniQ(settings)
    try:
        with pytest.raises(StorageError, match=bad):
            q.get_task(bad)
        task = q.get_task(good)
        assert task is not None and task.status is TaskStatus.PENDING
    finally:
        q.close()


def test_a_row_with_an_unknown_status_is_never_claimed_and_the_rest_run(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    bad, *goods = enqueue_all(settings, 4)
    damage_row(settings, bad, "status", "BOGUS")
    with OmniQ(settings) as q:
        assert [q.get_result(g, timeout=RESULT_WAIT) for g in goods] == [2, 4, 8]
        late = q.enqueue(objects.whoami)
        assert q.get_result(late, timeout=RESULT_WAIT) > 0  # the supervisor is still up
    with sqlite3.connect(settings.sqlite_path) as db:
        assert db.execute("SELECT status FROM tasks WHERE id = ?", (bad,)).fetchone() == ("BOGUS",)
    db.close()


def test_stats_survive_a_row_with_an_unknown_status(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    bad, _ = enqueue_all(settings, 2)
    damage_row(settings, bad, "status", "BOGUS")
    q = OmniQ(settings)
    try:
        assert q.stats().pending == 1
    finally:
        q.close()


@pytest.mark.e2e
def test_workers_burst_exits_beside_a_row_with_an_unknown_status(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    bad, _ = enqueue_all(settings, 2)
    damage_row(settings, bad, "status", "BOGUS")
    done = Run(settings.base_dir)("workers", "--burst", "--procs", "1", timeout=8.0)
    assert done.returncode in (0, 1)
    assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_status_command_beside_a_row_with_an_unknown_status(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    bad, _ = enqueue_all(settings, 2)
    damage_row(settings, bad, "status", "BOGUS")
    done = Run(settings.base_dir)("status", timeout=CLI_WAIT)
    assert "Traceback" not in done.stderr
    assert done.returncode in (0, 1)


def test_claiming_a_row_with_text_in_a_numeric_column_is_a_storage_error(
    tmp_path: Path,
) -> None:
    settings = sqlite_settings(tmp_path)
    bad, good = enqueue_all(settings, 2)
    damage_row(settings, bad, "priority", "high")

    async def claim() -> list[str]:
        store = SQLiteStorage(settings.sqlite_path)
        await store.open()
        try:
            now = time.time()
            return [t.id for t in await store.claim(["default"], 10, now, now + 30, "test")]
        except StorageError as exc:
            assert bad in str(exc)
            return []
        finally:
            await store.close()

    assert asyncio.run(claim()) in ([], [good])


def test_a_damaged_heartbeat_row_does_not_break_worker_listing(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    enqueue_all(settings, 1)  # creates the store
    now = time.time()
    with sqlite3.connect(settings.sqlite_path) as db:
        db.execute(
            "INSERT INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("ghost", "host", 1, 1, "default", now, now, "{not json"),
        )
    db.close()
    q = OmniQ(settings)
    try:
        try:
            live = q.get_worker_stats()
        except StorageError:
            return
        assert [w.worker_id for w in live] in ([], ["ghost"])
    finally:
        q.close()


def test_a_schedule_row_with_damaged_options_is_a_storage_error(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    q = OmniQ(settings)
    try:
        schedule_id = q.enqueue(pow, 2, 3, cron="*/5 * * * *")
    finally:
        q.close()
    with sqlite3.connect(settings.sqlite_path) as db:
        db.execute("UPDATE schedules SET options = '[1]' WHERE id = ?", (schedule_id,))
    db.close()
    q = OmniQ(settings)
    try:
        with pytest.raises(StorageError, match=schedule_id):
            q.periodic()
    finally:
        q.close()


def test_the_supervisor_survives_claiming_a_damaged_row(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    [bad] = enqueue_all(settings, 1)
    damage_row(settings, bad, "error", "{not json")
    with OmniQ(settings) as q:
        late = [q.enqueue(pow, 3, n) for n in range(3)]
        assert [q.get_result(t, timeout=RESULT_WAIT) for t in late] == [1, 3, 9]


def test_valid_tasks_claimed_beside_a_damaged_row_still_run(tmp_path: Path) -> None:
    # Two processes: the first claim takes procs + prefetch = 4 rows, all of them, so the
    # damaged row (first in FIFO order) always shares its batch with the valid ones.
    settings = sqlite_settings(tmp_path, lease_ttl=1.0, procs=2)
    bad, *goods = enqueue_all(settings, 4)
    damage_row(settings, bad, "error", "{not json")
    with OmniQ(settings) as q:
        # Recovery of an abandoned claim takes lease_ttl plus one scan; give it 6x that.
        wait_for(lambda: q.stats().completed == len(goods), 6.0, "every valid task to complete")
        # The damaged row was set aside where `omniq-mp dead` shows it, with the reason.
        [dead] = q.dead()
        assert dead.id == bad and "stored row is damaged: error" in str(dead.error)
        assert [str(e) for e in dead.history] == [str(dead.error)]


# -- file storage: damaged entries ------------------------------------------------------------


def file_settings(tmp_path: Path) -> Settings:
    return Settings(backend="file", base_dir=tmp_path / "store", procs=1)


def planted_name(n: int) -> str:
    """A pending entry name that is due at once and sorts before every real entry."""
    return f"{10**18:019d}-{0:020d}-{n:020d}-planted{n}.json"


class FileStore:
    """A real file store with valid tasks, and one real entry's bytes to damage."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = file_settings(tmp_path)
        self.base = self.settings.base_dir
        q = OmniQ(self.settings)
        try:
            self.goods = [q.enqueue(pow, 2, n) for n in range(3)]
            template_id = q.enqueue(pow, 5, 5)
        finally:
            q.close()
        [entry] = [p for p in self.pending.iterdir() if template_id in p.name]
        self.template = entry.read_bytes()  # a complete, valid entry of another task
        entry.unlink()
        (self.base / "ids" / template_id).unlink()

    @property
    def pending(self) -> Path:
        return self.base / "pending" / "default"

    def quarantined(self) -> list[Path]:
        return sorted(p for p in (self.base / "quarantine").iterdir() if p.suffix != ".reason")

    @contextlib.contextmanager
    def running(self) -> Iterator[OmniQ]:
        """A supervisor on the store, once every valid task has completed."""
        with OmniQ(self.settings) as q:
            assert [q.get_result(t, timeout=RESULT_WAIT) for t in self.goods] == [1, 2, 4]
            yield q


def with_field(entry: bytes, **changes: Any) -> bytes:
    doc = json.loads(entry)
    doc["task"].update(changes)
    return json.dumps(doc).encode()


ENTRY_DAMAGE: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("empty", lambda entry: b""),
    ("truncated", lambda entry: entry[: len(entry) // 2]),
    ("random-bytes", lambda entry: random.Random(23).randbytes(512)),
    ("wrong-schema", lambda entry: json.dumps({"format": 1, "seq": 1, "task": {"id": 1}}).encode()),
    ("other-version", lambda entry: json.dumps({"format": 99, "blob": "zzz"}).encode()),
    ("invalid-utf8", lambda entry: entry.replace(b'"default"', b'"def\xff\xfeult"', 1)),
    ("wrongly-typed-field", lambda entry: with_field(entry, priority="high", attempts=None)),
    ("not-an-object", lambda entry: b"[1, 2, 3]"),
]


@pytest.mark.parametrize(
    "damage", [d for _, d in ENTRY_DAMAGE], ids=[name for name, _ in ENTRY_DAMAGE]
)
def test_a_damaged_pending_entry_is_quarantined_and_its_neighbours_run(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    store = FileStore(tmp_path)
    name = planted_name(1)
    (store.pending / name).write_bytes(damage(store.template))
    with store.running() as q:
        assert q.get_result(q.enqueue(objects.whoami), timeout=RESULT_WAIT) > 0
    [moved] = store.quarantined()
    assert moved.name.endswith(name)
    reason = moved.with_name(moved.name + ".reason").read_text()
    assert name in reason
    assert not (store.pending / name).exists()


def test_foreign_files_and_folders_in_a_queue_folder_are_quarantined(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    (store.pending / "notes.json").write_bytes(store.template)  # not an entry name
    (store.pending / planted_name(2)).mkdir()  # a folder with an entry's name
    with store.running():
        pass  # the valid tasks ran beside it
    names = sorted(p.name for p in store.quarantined())
    assert len(names) == 2
    assert sum(n.endswith(planted_name(2)) for n in names) == 1
    assert sum(n.endswith("-notes.json") for n in names) == 1


def test_damaged_running_done_and_worker_entries_do_not_stop_the_supervisor(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path)
    (store.base / "running" / "crashed.json").write_bytes(b"{cut sh")
    (store.base / "done" / "old.json").write_bytes(b"\x00" * 64)
    (store.base / "workers" / "ghost.json").write_bytes(b"not json at all")
    with store.running() as q:
        assert q.stats().completed == 3  # reading done/ again skips what was quarantined
        wait_for(lambda: q.get_global_stats().supervisors >= 1, 10.0, "its heartbeat to list")
    assert len(store.quarantined()) == 3


def test_temp_files_of_a_dead_writer_are_removed_and_never_run(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    leftover = store.pending / (planted_name(3) + ".tmp")
    leftover.write_bytes(store.template)  # complete, but never renamed into place
    (store.base / "running" / "half.json.tmp").write_bytes(store.template[:10])
    with store.running() as q:
        assert q.stats().total == 3  # the temp file's task never became visible
    assert not leftover.exists()
    assert not (store.base / "running" / "half.json.tmp").exists()
    assert store.quarantined() == []


def test_a_link_out_of_the_store_never_changes_what_it_points_at(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    outside = tmp_path / "outside" / "precious.json"
    outside.parent.mkdir()
    outside.write_bytes(b"someone else's data, not an entry")
    (store.pending / planted_name(4)).symlink_to(outside)
    with store.running():
        pass  # the valid tasks ran beside it
    assert outside.read_bytes() == b"someone else's data, not an entry"
    [moved] = store.quarantined()  # the link itself, not its target
    assert moved.is_symlink()


def test_a_link_to_a_valid_entry_outside_the_store_is_not_run(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    outside = tmp_path / "outside" / "entry.json"
    outside.parent.mkdir()
    outside.write_bytes(store.template)
    (store.pending / planted_name(5)).symlink_to(outside)
    with store.running() as q:
        assert q.stats().total == 3, "the linked task was claimed and run"
    [moved] = store.quarantined()  # the link itself, not its target
    assert moved.is_symlink() and outside.read_bytes() == store.template


def test_a_link_in_place_of_a_queue_folder_is_quarantined_not_followed(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    outside = tmp_path / "outside-queue"
    outside.mkdir()
    (outside / planted_name(6)).write_bytes(store.template)
    (store.base / "pending" / "elsewhere").symlink_to(outside, target_is_directory=True)
    with store.running() as q:
        assert q.stats().total == 3, "an entry behind the linked folder was read"
    [moved] = store.quarantined()
    assert moved.is_symlink() and moved.name.endswith("-elsewhere")
    assert (outside / planted_name(6)).read_bytes() == store.template


WORKER_ENTRY_DAMAGE = [
    pytest.param(
        b"[" * 100_000,
        id="deeply-nested",
    ),
    pytest.param(
        json.dumps(
            {
                "worker_id": "w",
                "hostname": "h",
                "pid": 1,
                "procs": 1,
                "queues": [],
                "started_at": 0,
                "heartbeat_at": "yesterday",
                "details": {},
            }
        ).encode(),
        id="wrongly-typed",
    ),
]


@pytest.mark.parametrize("content", WORKER_ENTRY_DAMAGE)
def test_a_damaged_heartbeat_entry_is_quarantined(tmp_path: Path, content: bytes) -> None:
    store = FileStore(tmp_path)
    (store.base / "workers" / "ghost.json").write_bytes(content)
    q = OmniQ(store.settings)
    try:
        assert q.get_worker_stats() == []
    finally:
        q.close()
    assert len(store.quarantined()) == 1
