"""Large payloads and results of the file store live in side files under ``large/``: read
back whole by whoever asks for them, never copied again when their entry changes state,
never read by scans, removed with the last entry naming them, and never left behind by a
refused enqueue or a failed write (the next open sweeps what a failure left)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskStatus, create_task
from omniq_mp.storage import file as file_module
from omniq_mp.storage.file import FileStorage, _Tree
from omniq_mp.storage.file_codec import entry_name
from omniq_mp.storage.side_files import SIDE_FILE_MIN, SideFiles

NOW = 1_700_000_000.0
BIG = SIDE_FILE_MIN + 17  # just over the threshold, and not a round number


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStorage]:
    storage = FileStorage(tmp_path / "store")
    await storage.open()
    yield storage
    await storage.close()


def large(store: FileStorage) -> Path:
    return store.base_dir / "large"


def side_files(store: FileStorage) -> list[str]:
    """The side files present (the sweep mark and temp files are not side files)."""
    return sorted(n for n in os.listdir(large(store)) if n.endswith((".payload", ".result")))


def entry_of(store: FileStorage, task_id: str) -> dict[str, object]:
    [path] = [
        p
        for p in store.base_dir.rglob(f"*{entry_name(task_id)}.json")
        if p.parent.name != "quarantine"
    ]
    doc: dict[str, object] = json.loads(path.read_bytes())
    return doc


def make(payload: bytes = b"", **options: object) -> Task:
    options.setdefault("eta", NOW - 1)
    return create_task("math.sqrt", payload, **options)


async def claim_one(store: FileStorage) -> Task:
    [task] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    return task


def done(task: Task, result: bytes | None, status: TaskStatus = TaskStatus.COMPLETED) -> Settlement:
    return Settlement(task.id, task.lease_token or "", status, result, finished_at=NOW)


async def test_a_large_payload_is_stored_once_in_a_private_file_and_read_back_whole(
    store: FileStorage,
) -> None:
    payload = os.urandom(BIG)
    task = make(payload)
    await store.enqueue([task])
    [name] = side_files(store)
    assert name.endswith(".payload")
    assert entry_of(store, task.id)["files"] == {"payload": name}
    assert stat.S_IMODE(large(store).stat().st_mode) == 0o700
    assert stat.S_IMODE((large(store) / name).stat().st_mode) == 0o600
    written = (large(store) / name).stat()

    claimed = await claim_one(store)
    assert claimed.payload == payload
    got = await store.get(task.id)
    assert got is not None and got.payload == payload and got.status is TaskStatus.RUNNING
    assert await store.settle([done(claimed, b"small")]) == [True]
    [listed] = await store.list_tasks(TaskStatus.COMPLETED, None, 10)
    assert listed.payload == payload and listed.result == b"small"

    # The claim and the settlement rewrote the entry, not the file: same inode, same time.
    after = (large(store) / name).stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert side_files(store) == [name]
    assert not (large(store) / ".sweep").exists()  # every file it wrote is named


async def test_values_under_the_threshold_stay_in_the_entry(store: FileStorage) -> None:
    task = make(os.urandom(SIDE_FILE_MIN - 1))
    await store.enqueue([task])
    running = await claim_one(store)
    assert await store.settle([done(running, os.urandom(SIDE_FILE_MIN - 1))]) == [True]
    assert side_files(store) == []
    assert "files" not in entry_of(store, task.id)


async def test_a_large_result_goes_to_a_file_that_outcome_reads_leave_the_payload_out_of(
    store: FileStorage,
) -> None:
    payload, result = os.urandom(BIG), os.urandom(BIG + 1)
    task = make(payload)
    await store.enqueue([task])
    assert await store.settle([done(await claim_one(store), result)]) == [True]
    assert len(side_files(store)) == 2
    files = entry_of(store, task.id)["files"]
    assert isinstance(files, dict) and files.keys() == {"payload", "result"}
    [outcome] = await store.get_outcomes([task.id, "no-such-task"])
    assert outcome.result == result and outcome.payload == b""
    [whole] = await store.get_many([task.id])
    assert whole.payload == payload and whole.result == result


async def test_scans_never_read_side_files(store: FileStorage) -> None:
    """stats, listing queues and purging judge entries by their own fields: a side file
    that cannot be read (here a folder in its place) does not fail them."""
    task = make(os.urandom(BIG))
    await store.enqueue([task])
    [name] = side_files(store)
    (large(store) / name).unlink()
    (large(store) / name).mkdir()
    assert (await store.stats(None, NOW)).pending == 1
    assert await store.queue_names() == ["default"]
    assert await store.completed_since(None, 0) == 0
    assert await store.purge_finished(NOW + 1, list(TaskStatus), 0) == 0
    [outcome] = await store.get_outcomes([task.id])  # a waiter's read leaves it out too
    assert outcome.status is TaskStatus.PENDING and outcome.payload == b""
    with pytest.raises(StorageError, match="read the payload file"):
        await store.get(task.id)  # a reader that wants it hears why it cannot have it
    assert (await store.stats(None, NOW)).pending == 1  # and nothing was set aside


async def test_purging_a_task_removes_its_side_files(store: FileStorage) -> None:
    kept, purged = make(os.urandom(BIG), priority=1), make(os.urandom(BIG))
    await store.enqueue([kept, purged])
    await claim_one(store)  # kept: the higher priority
    second = await claim_one(store)
    assert await store.settle([done(second, os.urandom(BIG))]) == [True]
    assert len(side_files(store)) == 3
    assert await store.purge_finished(NOW + 1, [TaskStatus.COMPLETED], 10) == 1
    files = entry_of(store, kept.id)["files"]
    assert isinstance(files, dict) and side_files(store) == [files["payload"]]


async def test_a_replaced_result_takes_its_file_with_it(store: FileStorage) -> None:
    """A task that ended with a large result, revived and run again: its new outcome
    replaces the stored result, and the old result's file goes; a cancel that clears
    the result does the same."""
    task = make(b"p")
    await store.enqueue([task])
    assert await store.settle([done(await claim_one(store), os.urandom(BIG), TaskStatus.DEAD)])
    [first] = side_files(store)
    assert await store.revive([task.id], NOW) == [task.id]
    second = await claim_one(store)
    assert second.result is not None and len(second.result) == BIG  # as stored
    assert await store.settle([done(second, os.urandom(BIG), TaskStatus.DEAD)]) == [True]
    [replaced] = side_files(store)
    assert replaced != first
    assert await store.revive([task.id], NOW) == [task.id]
    third = await claim_one(store)
    await store.cancel(task.id, NOW)
    assert await store.settle([done(third, b"late")]) == [True]
    got = await store.get(task.id)
    assert got is not None and got.status is TaskStatus.CANCELLED and got.result is None
    assert side_files(store) == []


async def test_an_interval_task_runs_again_with_its_own_copy_of_the_payload(
    store: FileStorage,
) -> None:
    payload = os.urandom(BIG)
    task = make(payload, interval=60.0)
    await store.enqueue([task])
    running = await claim_one(store)
    follow_up = make(payload, interval=60.0, eta=NOW + 60)
    settled = Settlement(
        running.id,
        running.lease_token or "",
        TaskStatus.COMPLETED,
        finished_at=NOW,
        follow_up=follow_up,
    )
    assert await store.settle([settled]) == [True]
    assert len(side_files(store)) == 2
    assert await store.purge_finished(NOW + 1, [TaskStatus.COMPLETED], 10) == 1
    nxt = await store.get(follow_up.id)
    assert nxt is not None and nxt.payload == payload  # its file outlived the first run's


async def test_a_revived_task_keeps_its_payload_file(store: FileStorage) -> None:
    payload = os.urandom(BIG)
    task = make(payload)
    await store.enqueue([task])
    assert await store.settle([done(await claim_one(store), None, TaskStatus.DEAD)]) == [True]
    [name] = side_files(store)
    assert await store.revive(None, NOW) == [task.id]
    again = await claim_one(store)
    assert again.payload == payload and side_files(store) == [name]


async def test_an_enqueue_that_is_refused_or_merged_leaves_no_file(store: FileStorage) -> None:
    holder = make(b"small", key="k")
    await store.enqueue([holder])
    # Merged into the key's holder: the large task is never stored.
    assert await store.enqueue([make(os.urandom(BIG), key="k")]) == [holder.id]
    # Refused: an id that is taken.
    with pytest.raises(ValueError, match="already exists"):
        await store.enqueue([make(os.urandom(BIG)), holder])
    # Failing halfway: the second task's queue folder cannot be made (a file is in the way).
    (store.base_dir / "pending" / "blocked").write_bytes(b"")
    with pytest.raises(StorageError):
        await store.enqueue([make(os.urandom(BIG)), make(b"", queue="blocked")])
    assert side_files(store) == []
    assert (large(store) / ".sweep").exists()  # a failed write leaves the next open to look
    assert [t.id for t in await store.list_tasks(TaskStatus.PENDING, None, 10)] == [holder.id]


@pytest.mark.parametrize("max_bytes", [None, 0])  # 0: the one task that may come is fine
async def test_a_missing_side_file_sets_its_entry_aside_and_the_claim_goes_on(
    store: FileStorage, max_bytes: int | None
) -> None:
    lost, fine = make(os.urandom(BIG), priority=1), make(b"fine")
    await store.enqueue([lost, fine])
    [name] = side_files(store)
    (large(store) / name).unlink()
    [claimed] = await store.claim(["default"], 10, NOW, NOW + 60, "w1", max_bytes=max_bytes)
    assert claimed.id == fine.id
    assert await store.get(lost.id) is None
    [reason] = (store.base_dir / "quarantine").glob("*.reason")
    assert "does not exist" in reason.read_text()


async def test_a_name_in_an_entry_never_reads_a_file_outside_the_store(
    store: FileStorage, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.payload"
    secret.write_bytes(b"not the store's")
    task = make(os.urandom(BIG))
    await store.enqueue([task])
    [path] = (store.base_dir / "pending" / "default").glob("*.json")
    doc = json.loads(path.read_bytes())
    doc["files"] = {"payload": "../../secret.payload"}
    path.write_text(json.dumps(doc))
    assert await store.claim(["default"], 10, NOW, NOW + 60, "w1") == []
    [reason] = (store.base_dir / "quarantine").glob("*.reason")
    assert "not a side file name" in reason.read_text()
    assert secret.read_bytes() == b"not the store's"


async def test_the_next_open_sweeps_files_that_a_failed_write_left(tmp_path: Path) -> None:
    """A file no entry names (what a crash between the file and its entry leaves) is
    removed by the next open when the sweep mark says a write did not finish, and only
    then: files named by entries stay."""
    store = FileStorage(tmp_path / "store")
    await store.open()
    kept = make(os.urandom(BIG))
    await store.enqueue([kept])
    [named] = side_files(store)
    orphan = large(store) / "0123456789abcdef0123456789abcdef.payload"
    orphan.write_bytes(b"left by a crash")
    await store.close()

    await store.open()  # no mark: nothing to sweep, nothing scanned
    assert orphan.exists()
    await store.close()

    (large(store) / ".sweep").touch()
    await store.open()
    assert side_files(store) == [named]
    assert not (large(store) / ".sweep").exists()
    got = await store.get(kept.id)
    assert got is not None and got.payload == kept.payload
    await store.close()


@pytest.mark.parametrize(
    "files",
    [["x.payload"], {"arguments": "0123456789abcdef0123456789abcdef.payload"}, {"payload": 5}],
    ids=["a list", "an unknown kind", "a name that is not text"],
)
async def test_an_entry_with_a_damaged_files_field_is_set_aside(
    store: FileStorage, files: object
) -> None:
    task = make(b"small")
    await store.enqueue([task])
    [path] = (store.base_dir / "pending" / "default").glob("*.json")
    doc = json.loads(path.read_bytes())
    doc["files"] = files
    path.write_text(json.dumps(doc))
    assert await store.claim(["default"], 10, NOW, NOW + 60, "w1") == []
    [reason] = (store.base_dir / "quarantine").glob("*.reason")
    assert "files" in reason.read_text()


async def test_a_payload_file_that_cannot_be_read_sets_its_task_aside_keeping_it(
    store: FileStorage,
) -> None:
    """No permission, an I/O error: the other tasks are still claimed, and the task keeps
    its payload, so a retry runs it whole once the file reads again."""
    stuck, fine = make(os.urandom(BIG), priority=1), make(b"fine")
    await store.enqueue([stuck, fine])
    [name] = side_files(store)
    path = large(store) / name
    path.rename(path.with_name("aside"))
    path.mkdir()  # reading it fails with EISDIR, as an unreadable file would
    [claimed] = await store.claim(["default"], 10, NOW, NOW + 60, "w1")
    assert claimed.id == fine.id
    [dead] = await store.get_outcomes([stuck.id])
    assert dead.status is TaskStatus.DEAD and dead.error is not None
    assert "cannot read the payload file" in dead.error.message and str(path) in dead.error.message
    assert entry_of(store, stuck.id)["files"] == {"payload": name}
    path.rmdir()
    path.with_name("aside").rename(path)  # the fault is mended: a retry runs it whole
    assert await store.revive([stuck.id], NOW) == [stuck.id]
    again = await claim_one(store)
    assert again.id == stuck.id and again.payload == stuck.payload


async def test_lease_recovery_sets_aside_a_task_whose_payload_cannot_be_read(
    store: FileStorage,
) -> None:
    """A supervisor reads the tasks of abandoned leases with get_many: one unreadable
    file must not stop it from recovering the others."""
    stuck, other = make(os.urandom(BIG), priority=1), make(b"other")
    await store.enqueue([stuck, other])
    await store.claim(["default"], 10, NOW, NOW + 60, "w1")
    [name] = side_files(store)
    (large(store) / name).rename(large(store) / "aside")
    (large(store) / name).mkdir()
    found = await store.get_many([stuck.id, other.id])
    assert [t.id for t in found] == [other.id]
    dead = await store.get_outcomes([stuck.id])
    assert [t.status for t in dead] == [TaskStatus.DEAD]


async def test_a_damaged_entry_goes_to_quarantine_with_the_side_files_it_names(
    store: FileStorage,
) -> None:
    """Its payload file is gone; its result file is moved beside it in quarantine, not
    left for a sweep to delete."""
    task = make(os.urandom(BIG))
    await store.enqueue([task])
    assert await store.settle([done(await claim_one(store), os.urandom(BIG))]) == [True]
    files = entry_of(store, task.id)["files"]
    assert isinstance(files, dict)
    (large(store) / files["payload"]).unlink()
    assert await store.get(task.id) is None
    assert side_files(store) == []
    kept = [p.name for p in (store.base_dir / "quarantine").iterdir()]
    assert any(n.endswith(f"-large-{files['result']}") for n in kept)


async def test_a_purge_interrupted_before_its_unlinks_leaves_them_to_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStorage(tmp_path / "store")
    await store.open()
    task = make(os.urandom(BIG))
    await store.enqueue([task])
    assert await store.settle([done(await claim_one(store), None)]) == [True]

    def fail(self: SideFiles, names: object) -> None:
        raise StorageError("interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(SideFiles, "remove", fail)
        with pytest.raises(StorageError, match="interrupted"):
            await store.purge_finished(NOW + 1, [TaskStatus.COMPLETED], 10)
    assert await store.get(task.id) is None
    assert len(side_files(store)) == 1  # named by no entry now
    await store.close()
    await store.open()
    assert side_files(store) == []
    assert not (large(store) / ".sweep").exists()
    await store.close()


async def test_the_mark_goes_only_once_the_entries_naming_the_files_are_durable(
    store: FileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within one operation, every folder holding a new entry is fsync'ed before the
    mark is unlinked: a power cut must not keep the file and drop both mark and entry."""
    steps: list[str] = []
    real_sync, real_remove = _Tree.sync, _Tree.remove

    def sync(self: _Tree) -> None:
        steps.extend(f"fsync {folder.relative_to(store.base_dir)}" for folder in self.dirty)
        real_sync(self)

    def remove(self: _Tree, path: Path) -> None:
        steps.append(f"unlink {path.relative_to(store.base_dir)}")
        real_remove(self, path)

    monkeypatch.setattr(_Tree, "sync", sync)
    monkeypatch.setattr(_Tree, "remove", remove)
    await store.enqueue([make(os.urandom(BIG))])
    unmarked = steps.index("unlink large/.sweep")
    assert "fsync pending/default" in steps[:unmarked]
    assert "fsync large" in steps[unmarked:]


async def test_an_entry_that_cannot_be_read_postpones_the_sweep_and_the_store_still_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStorage(tmp_path / "store")
    await store.open()
    task = make(os.urandom(BIG))
    await store.enqueue([task])
    await store.close()
    (large(store) / ".sweep").touch()
    real_read = file_module._read_regular

    def unreadable(path: Path) -> bytes:
        if path.name.endswith(f"{entry_name(task.id)}.json"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    with monkeypatch.context() as patch:
        patch.setattr(file_module, "_read_regular", unreadable)
        await store.open()  # the names that entry holds are unknown: nothing is deleted
        await store.close()
    assert (large(store) / ".sweep").exists() and len(side_files(store)) == 1
    await store.open()
    got = await store.get(task.id)
    assert got is not None and got.payload == task.payload
    assert not (large(store) / ".sweep").exists()
    await store.close()
