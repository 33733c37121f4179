"""File-backend specifics the shared contract cannot see: damaged entries, crash leftovers,
odd names and folders that are in the way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.models import Task, TaskStatus, create_task
from omniq_mp.storage.base import WorkerInfo
from omniq_mp.storage.file import FileStorage

NOW = 1_700_000_000.0


def make(**options: object) -> Task:
    options.setdefault("eta", NOW - 1)
    return create_task("math.sqrt", **options)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStorage]:
    storage = FileStorage(tmp_path / "store")
    await storage.open()
    yield storage
    await storage.close()


def pending_files(store: FileStorage, queue: str = "default") -> list[Path]:
    return sorted((store.base_dir / "pending" / queue).glob("*.json"))


def quarantined(store: FileStorage) -> list[Path]:
    return sorted(p for p in (store.base_dir / "quarantine").iterdir() if p.suffix != ".reason")


async def test_damaged_pending_entries_are_quarantined_and_the_claim_goes_on(
    store: FileStorage,
) -> None:
    tasks = [make() for _ in range(4)]
    await store.enqueue(tasks)
    first, second, third, _ = pending_files(store)
    first.write_bytes(b"")
    second.write_bytes(b"{not json")
    third.write_text(json.dumps({"format": 1, "seq": 3, "task": {"id": "x"}}))
    claimed = await store.claim(["default"], 10, NOW, NOW + 30, "w1")
    assert [t.id for t in claimed] == [tasks[3].id]
    bad = quarantined(store)
    assert len(bad) == 3
    for path in bad:
        reason = path.with_name(path.name + ".reason").read_text()
        assert "not a task entry" in reason
    assert await store.stats(None, NOW) == await store.stats(["default"], NOW)


async def test_wrongly_typed_fields_are_quarantined(store: FileStorage) -> None:
    task = make()
    await store.enqueue([task])
    [path] = pending_files(store)
    doc = json.loads(path.read_text())
    doc["task"]["eta"] = "soon"
    path.write_text(json.dumps(doc))
    assert await store.claim(["default"], 10, NOW, NOW + 30, "w1") == []
    assert await store.get(task.id) is None
    assert len(quarantined(store)) == 1


async def test_damaged_running_and_worker_entries_do_not_break_listing(
    store: FileStorage,
) -> None:
    await store.enqueue([make(), make()])
    a, b = await store.claim(["default"], 10, NOW, NOW + 30, "w1")
    (store.base_dir / "running" / f"{a.id}.json").write_bytes(b"\x00garbage")
    info = WorkerInfo("w1", "host", 1, 2, ("default",), NOW, NOW)
    await store.heartbeat(info)
    (store.base_dir / "workers" / "broken.json").write_text("[]")
    assert [t.id for t in await store.expired(NOW + 31, 10)] == [b.id]
    assert await store.workers(0) == [info]
    assert len(quarantined(store)) == 2


async def test_open_removes_stale_temp_files_but_not_foreign_ones(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "store")
    await store.open()
    await store.enqueue([make()])
    await store.close()
    stale = [
        store.base_dir / "pending" / "default" / "x.json.tmp",
        store.base_dir / "running" / "y.json.tmp",
        store.base_dir / "seq.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half written")
    foreign = store.base_dir / "notes.tmp"
    foreign.write_text("mine")
    await store.open()
    assert not any(p.exists() for p in stale)
    assert foreign.read_text() == "mine"
    assert len(await store.claim(["default"], 10, NOW, NOW + 30, "w1")) == 1
    await store.close()


async def test_open_finishes_a_claim_a_crash_interrupted(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "store")
    await store.open()
    task = make()
    await store.enqueue([task])
    await store.close()
    # The entry was renamed into running/ but never rewritten: it still says PENDING.
    [path] = pending_files(store)
    path.rename(store.base_dir / "running" / f"{task.id}.json")
    await store.open()
    assert await store.get(task.id) == task
    assert len(pending_files(store)) == 1
    [claimed] = await store.claim(["default"], 10, NOW, NOW + 30, "w1")
    assert claimed.id == task.id and claimed.attempts == 1
    await store.close()


async def test_a_running_entry_left_in_pending_moves_on_to_running(store: FileStorage) -> None:
    task = make()
    await store.enqueue([task])
    [path] = pending_files(store)
    doc = json.loads(path.read_text())
    doc["task"].update(status="RUNNING", lease_token="t", lease_until=NOW - 5, attempts=1)
    path.write_text(json.dumps(doc))
    assert await store.claim(["default"], 10, NOW, NOW + 30, "w1") == []
    [lost] = await store.expired(NOW, 10)
    assert lost.id == task.id and lost.lease_token == "t"


@pytest.mark.parametrize("queue", ["", ".", "..", "../escape", "a/b", "ü-q.json", "x" * 100])
async def test_any_queue_name_stays_inside_the_store(store: FileStorage, queue: str) -> None:
    task = make(queue=queue)
    await store.enqueue([task])
    assert await store.get(task.id) == task
    [claimed] = await store.claim([queue], 10, NOW, NOW + 30, "w1")
    assert claimed.id == task.id
    outside = [p for p in store.base_dir.parent.iterdir() if p != store.base_dir]
    assert outside == []


async def test_enqueue_is_all_or_nothing(store: FileStorage) -> None:
    old, new = make(), make()
    await store.enqueue([old])
    with pytest.raises(ValueError, match=old.id):
        await store.enqueue([new, old])
    assert await store.get(new.id) is None
    with pytest.raises(ValueError):
        await store.enqueue([new, new])
    assert await store.get(new.id) is None
    assert (await store.stats(None, NOW)).pending == 1


async def test_a_damaged_sequence_counter_keeps_fifo(store: FileStorage) -> None:
    first = make()
    await store.enqueue([first])
    (store.base_dir / "seq").write_text("")
    second = make()
    await store.enqueue([second])
    claimed = await store.claim(["default"], 10, NOW, NOW + 30, "w1")
    assert [t.id for t in claimed] == [first.id, second.id]


async def test_two_instances_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    one, two = FileStorage(tmp_path / "s"), FileStorage(tmp_path / "s")
    await one.open()
    await two.open()
    await one.enqueue([make() for _ in range(40)])
    batches = await asyncio.gather(
        *(s.claim(["default"], 3, NOW, NOW + 30, "w") for s in [one, two] * 10)
    )
    ids = [t.id for b in batches for t in b]
    assert len(ids) == 40 and len(set(ids)) == 40
    await one.close()
    await two.close()


async def test_cancelled_and_settled_tasks_are_found_by_id(store: FileStorage) -> None:
    task = make(eta=NOW + 100)
    await store.enqueue([task])
    cancelled = await store.cancel(task.id, NOW)
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
    assert await store.get(task.id) == cancelled
    assert not (store.base_dir / "ids" / task.id).exists()


@pytest.mark.parametrize("blocker", ["store", "store/pending"])
async def test_a_file_in_the_way_is_refused_and_kept(tmp_path: Path, blocker: str) -> None:
    if blocker != "store":
        (tmp_path / "store").mkdir()
    (tmp_path / blocker).write_text("keep me")
    with pytest.raises(StorageError, match="not a directory"):
        await FileStorage(tmp_path / "store").open()
    assert (tmp_path / blocker).read_text() == "keep me"


async def test_a_parent_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        await FileStorage(tmp_path / "data" / "deeper" / "store").open()


async def test_use_before_open_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not open"):
        await FileStorage(tmp_path).get("x")
