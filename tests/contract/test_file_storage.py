"""File-backend specifics the shared contract cannot see: damaged entries, crash leftovers,
odd names, folders that are in the way, the unique-key index, and parity with the memory
backend over random operation sequences."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskError, TaskStatus, create_task
from omniq_mp.schedule import Schedule
from omniq_mp.storage.base import WorkerInfo
from omniq_mp.storage.file import FileStorage
from omniq_mp.storage.memory import MemoryStorage
from omniq_mp.storage.side_files import SIDE_FILE_MIN

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


# -- entry format: new fields, old entries, wrong types ----------------------------------------


def entry(store: FileStorage, task_id: str) -> Path:
    """The one entry file of a task, in whatever folder it is."""
    [path] = [p for p in store.base_dir.rglob("*.json") if task_id in p.name]
    return path


def edit(path: Path, **fields: Any) -> None:
    doc = json.loads(path.read_text())
    doc["task"].update(fields)
    path.write_text(json.dumps(doc))


async def settle_one(store: FileStorage, status: TaskStatus, **options: Any) -> Task:
    [t] = await store.claim(["default"], 1, NOW, NOW + 30, "w1")
    await store.settle([Settlement(t.id, t.lease_token or "", status, **options)])
    got = await store.get(t.id)
    assert got is not None
    return got


async def test_every_new_field_round_trips_through_states_and_reopen(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "store")
    await store.open()
    task = make(key="k/../é", max_memory=2**40, result_ttl=7.5)
    await store.enqueue([task])
    errors = [TaskError("WorkerCrashed", "boom", kind="crash"), TaskError("E", "again")]
    await settle_one(store, TaskStatus.PENDING, error=errors[0], crashed=True, eta=NOW - 1)
    dead = await settle_one(store, TaskStatus.DEAD, error=errors[1], finished_at=NOW)
    assert (dead.crashes, dead.history, dead.error) == (1, tuple(errors), errors[1])
    assert dead.expires_at == NOW + 7.5 and entry(store, task.id).parent.name == "done"
    await store.close()
    again = FileStorage(tmp_path / "store")
    await again.open()
    assert await again.get(task.id) == dead
    assert await again.list_tasks(TaskStatus.DEAD, ["default"], 10) == [dead]
    await again.close()


async def test_an_entry_written_before_the_new_fields_reads_with_their_defaults(
    store: FileStorage,
) -> None:
    task = make()
    await store.enqueue([task])
    path = entry(store, task.id)
    doc = json.loads(path.read_text())
    new = ("key", "max_memory", "result_ttl", "expires_at", "cancel_requested", "crashes")
    for name in (*new, "history"):
        del doc["task"][name]
    doc["task"]["error"] = {"error_type": "E", "message": "m"}  # an error without kind etc.
    doc["task"]["from_a_newer_version"] = [1, 2]  # unknown fields are ignored
    path.write_text(json.dumps(doc))
    got = await store.get(task.id)
    assert got == dataclasses.replace(task, error=TaskError("E", "m"))
    assert quarantined(store) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cancel_requested", 1),
        ("crashes", "1"),
        ("crashes", True),
        ("attempts", 1.0),
        ("key", 7),
        ("max_memory", 1.5),
        ("result_ttl", "60"),
        ("history", {}),
        ("history", ["E: m"]),
        ("history", [{"error_type": "E", "message": 5}]),
        ("error", {"error_type": "E", "message": "m", "is_retryable": "no"}),
        ("status", "LOST"),
        ("id", None),  # a field every entry has always had, missing or not, must be valid
    ],
)
async def test_wrongly_typed_new_fields_are_quarantined(
    store: FileStorage, field: str, value: object
) -> None:
    task = make()
    await store.enqueue([task])
    edit(entry(store, task.id), **{field: value})
    assert await store.claim(["default"], 10, NOW, NOW + 30, "w1") == []
    [bad] = quarantined(store)
    assert field in bad.with_name(bad.name + ".reason").read_text()


async def test_a_missing_core_field_is_damage_not_a_default(store: FileStorage) -> None:
    task = make()
    await store.enqueue([task])
    path = entry(store, task.id)
    doc = json.loads(path.read_text())
    del doc["task"]["status"]  # a default would turn any task back into PENDING
    path.write_text(json.dumps(doc))
    assert await store.claim(["default"], 10, NOW, NOW + 30, "w1") == []
    assert len(quarantined(store)) == 1


# -- unique keys -------------------------------------------------------------------------------


def key_members(store: FileStorage) -> list[str]:
    return sorted(p.name for p in (store.base_dir / "keys").rglob("*") if p.is_file())


async def test_a_key_is_indexed_while_its_task_is_unfinished(store: FileStorage) -> None:
    task = make(key="../a/key")
    await store.enqueue([task])
    assert key_members(store) == [task.id]
    assert [p.name for p in (store.base_dir / "keys").iterdir()] == ["%2E%2E%2Fa%2Fkey"]
    await settle_one(store, TaskStatus.COMPLETED)
    assert list((store.base_dir / "keys").iterdir()) == []  # the last holder takes its folder


async def test_a_stale_key_entry_does_not_hold_the_key(store: FileStorage) -> None:
    first = make(key="k")
    await store.enqueue([first])
    entry(store, first.id).unlink()  # lost by hand: the index still names it
    second = make(key="k")
    assert await store.enqueue([second]) == [second.id]
    assert key_members(store) == [second.id]  # the stale member was tidied away


async def test_a_long_key_is_indexed_by_its_digest(store: FileStorage) -> None:
    key = "https://example.com/" + "é" * 300  # percent-encoded, far past 255 bytes
    first, again = make(key=key), make(key=key)
    assert await store.enqueue([first]) == [first.id]
    assert await store.enqueue([again]) == [first.id]
    [folder] = (store.base_dir / "keys").iterdir()
    assert folder.name.startswith("#") and len(folder.name) == 65


async def test_a_task_is_revived_only_once_its_key_is_free(store: FileStorage) -> None:
    old = make(key="k")
    await store.enqueue([old])
    await settle_one(store, TaskStatus.DEAD, finished_at=NOW)
    newer = make(key="k", eta=NOW + 100)
    assert await store.enqueue([newer]) == [newer.id]
    assert await store.revive(None, NOW) == []  # one unfinished task per key
    assert key_members(store) == [newer.id]
    await store.cancel(newer.id, NOW)
    assert await store.revive(None, NOW) == [old.id]
    assert key_members(store) == [old.id]
    assert await store.enqueue([make(key="k")]) == [old.id]


async def test_a_follow_up_carrying_the_settled_tasks_key_is_inserted(store: FileStorage) -> None:
    await store.enqueue([make(key="nightly", interval=60.0)])
    [t] = await store.claim(["default"], 1, NOW, NOW + 30, "w1")
    nxt = make(key="nightly", interval=60.0, eta=NOW + 60)
    done = Settlement(
        t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW, follow_up=nxt
    )
    assert await store.settle([done]) == [True]
    assert await store.get(nxt.id) == nxt
    assert key_members(store) == [nxt.id]
    assert await store.enqueue([make(key="nightly")]) == [nxt.id]


async def test_a_follow_up_whose_id_is_taken_is_skipped_not_fatal(store: FileStorage) -> None:
    other = make(eta=NOW + 100)
    await store.enqueue([make(), other])
    [t] = await store.claim(["default"], 1, NOW, NOW + 30, "w1")
    done = Settlement(
        t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW, follow_up=other
    )
    assert await store.settle([done]) == [True]
    assert (await store.get(t.id)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


# -- cancellation, revival, deletion -----------------------------------------------------------


async def test_a_cancel_request_is_seen_by_another_process_instance(tmp_path: Path) -> None:
    one, two = FileStorage(tmp_path / "s"), FileStorage(tmp_path / "s")
    await one.open()
    await two.open()
    await one.enqueue([make()])
    [t] = await one.claim(["default"], 1, NOW, NOW + 30, "w1")
    await two.cancel(t.id, NOW)
    assert await one.cancel_requests([t.id, t.id, "unknown"]) == {t.id}
    assert entry(one, t.id).parent.name == "running"
    await one.close()
    await two.close()


async def test_a_revived_task_keeps_its_fifo_place_and_its_id_link(store: FileStorage) -> None:
    first, second = make(), make()
    await store.enqueue([first])
    await settle_one(store, TaskStatus.FAILED, finished_at=NOW)
    await store.enqueue([second])
    assert await store.revive([first.id, first.id], NOW - 1) == [first.id]
    assert (store.base_dir / "ids" / first.id).exists()
    claimed = await store.claim(["default"], 10, NOW, NOW + 30, "w1")
    assert [t.id for t in claimed] == [first.id, second.id]


async def test_purging_removes_entries_and_their_index_entries(store: FileStorage) -> None:
    tasks = [make(key=f"k{i}", result_ttl=1.0) for i in range(3)]
    await store.enqueue(tasks)
    for _ in tasks:
        await settle_one(store, TaskStatus.COMPLETED, finished_at=NOW)
    assert await store.purge_expired(NOW + 1, 2) == 2
    assert [t.id for t in await store.list_tasks(TaskStatus.COMPLETED, None, 10)] == [tasks[2].id]
    assert await store.purge_finished(NOW + 1, [TaskStatus.COMPLETED], 10) == 1
    leftovers = [p for p in store.base_dir.rglob("*") if p.is_file() or p.is_symlink()]
    assert sorted(p.name for p in leftovers) == [".lock", "seq"]


# -- schedules ---------------------------------------------------------------------------------


async def test_schedules_survive_reopen_whole_and_damaged_ones_are_quarantined(
    tmp_path: Path,
) -> None:
    store = FileStorage(tmp_path / "store")
    await store.open()
    template = make(queue="q", priority=2, max_memory=10**9, result_ttl=5.0)
    schedule = Schedule(template, "*/5 * * * *", "Europe/Berlin", next_run=NOW)
    await store.add_schedule(schedule)
    await store.close()
    (store.base_dir / "schedules" / "broken.json").write_text('{"schedule": {"cron": 5}}')
    await store.open()
    assert await store.schedules() == [schedule]
    assert len(quarantined(store)) == 1
    [task_id] = await store.fire_schedules(NOW, lambda s, now: now + 300)
    task = await store.get(task_id)
    assert task is not None and (task.queue, task.priority, task.eta) == ("q", 2, NOW)
    await store.close()


# -- parity with the reference backend ---------------------------------------------------------


class _Parity:
    """Runs one random operation sequence on MemoryStorage and FileStorage side by side.

    Ids and times come from a seeded generator, so a failure replays exactly. One payload
    and one result in ten are large enough for a side file (see file.py). Purges are
    left out: MemoryStorage numbers its FIFO order by its current size, which purging
    shrinks, so after a purge its own claim order drifts from first-enqueued-first.
    """

    def __init__(self, seed: int, file: FileStorage) -> None:
        self.rng = random.Random(seed)
        self.memory, self.file = MemoryStorage(), file
        self.clock, self.ids, self.n = NOW, list[str](), 0
        self.leases: dict[str, tuple[str, str]] = {}  # id -> (file token, memory token)
        self.big = self.rng.randbytes(SIDE_FILE_MIN + 3)

    def value(self, small: bytes) -> bytes:
        return self.big if self.rng.random() < 0.1 else small

    def task(self) -> Task:
        self.n += 1
        rng = self.rng
        return Task(
            "f",
            self.value(b"p"),
            id=f"t{self.n}",
            queue=rng.choice("ab"),
            priority=rng.choice([0, 0, 1]),
            eta=self.clock + rng.choice([-1, 0, 2]),
            created_at=self.clock + rng.random(),
            key=rng.choice([None, None, "k1", "k2"]),
            result_ttl=rng.choice([None, 5.0]),
        )

    async def both(self, op: str, *args: Any) -> Any:
        mine = await getattr(self.file, op)(*args)
        theirs = await getattr(self.memory, op)(*args)
        if op == "claim":  # lease tokens are random: keep both
            for m, t in zip(mine, theirs, strict=True):
                self.leases[m.id] = (m.lease_token or "", t.lease_token or "")
        assert _tokenless(mine) == _tokenless(theirs), (op, args)
        return mine

    async def step(self) -> None:
        self.clock += self.rng.choice([0, 0.5, 1, 3])
        op = self.rng.choice("eeeeccccsssxrlq")
        if op == "e":
            batch = [self.task() for _ in range(self.rng.randint(1, 3))]
            self.ids += [t.id for t in batch]
            await self.both("enqueue", batch)
        elif op == "c":
            queues = self.rng.choice([["a"], ["b", "a"], ["a", "b"]])
            await self.both("claim", queues, self.rng.randint(1, 3), self.clock, self.clock, "w")
        elif op == "s" and self.leases:
            await self.settle()
        elif op == "x" and self.ids:
            await self.both("cancel", self.rng.choice(self.ids), self.clock)
        elif op == "r":
            chosen = self.rng.choice([None, self.rng.sample(self.ids, min(2, len(self.ids)))])
            await self.both("revive", chosen, self.clock)
        elif op == "l":
            await self.both("list_tasks", self.rng.choice(list(TaskStatus)), None, 5)
        elif op == "q":
            await self.both("cancel_requests", self.ids)

    async def settle(self) -> None:
        rng = self.rng
        task_id = rng.choice(sorted(self.leases))
        tokens = self.leases.pop(task_id)
        status = rng.choice(list(TaskStatus)[:1] + list(TaskStatus)[2:])
        source = await self.memory.get(task_id)
        assert source is not None
        follow_up = self.task() if rng.random() < 0.3 else None
        if follow_up is not None:  # as the queue builds one: the settled task's key
            follow_up = dataclasses.replace(follow_up, key=source.key)
            self.ids.append(follow_up.id)
        settlement = Settlement(
            task_id,
            tokens[0],
            status,
            result=self.value(b"r") if status is TaskStatus.COMPLETED else None,
            error=rng.choice([None, TaskError("E", "m")]),
            eta=self.clock + rng.choice([0, 1]),
            uncharge=rng.random() < 0.3,
            finished_at=self.clock,
            follow_up=follow_up,
            crashed=rng.random() < 0.3,
        )
        mine = await self.file.settle([settlement])
        theirs = await self.memory.settle([dataclasses.replace(settlement, lease_token=tokens[1])])
        assert mine == theirs == [True]


def _tokenless(value: Any) -> Any:
    """``value`` with every task's (random) lease token replaced by whether it has one."""
    if isinstance(value, Task):
        return dataclasses.replace(value, lease_token=str(value.lease_token is not None))
    if isinstance(value, list):
        return [_tokenless(v) for v in value]
    return value


@pytest.mark.parametrize("seed", range(8))
async def test_random_operations_match_the_memory_backend(store: FileStorage, seed: int) -> None:
    parity = _Parity(seed, store)
    for _ in range(150):
        await parity.step()
    for task_id in parity.ids:
        mine, theirs = await store.get(task_id), await parity.memory.get(task_id)
        assert _tokenless(mine) == _tokenless(theirs)
    named: list[str] = []  # every side file is named by one entry, and only one
    for folder in ("pending", "running", "done"):
        for path in (store.base_dir / folder).rglob("*.json"):
            named += json.loads(path.read_bytes()).get("files", {}).values()
    assert sorted(named) == sorted(os.listdir(store.base_dir / "large"))


# -- statistics and worker details -----------------------------------------------------------


async def test_worker_details_survive_reopen(tmp_path: Path) -> None:
    details = {"active": 2, "done": 9, "children": [{"pid": 7, "task_id": "t", "rss": 1024}]}
    info = WorkerInfo("w1", "host", 42, 2, ("default",), NOW, NOW, details)
    store = FileStorage(tmp_path / "store")
    await store.open()
    await store.heartbeat(info)
    await store.close()
    again = FileStorage(tmp_path / "store")
    await again.open()
    assert await again.workers(0) == [info]


async def test_a_worker_entry_without_details_reads_as_empty(store: FileStorage) -> None:
    info = WorkerInfo("w1", "host", 42, 2, ("default",), NOW, NOW, {"active": 1})
    await store.heartbeat(info)
    [path] = (store.base_dir / "workers").glob("*.json")
    record = json.loads(path.read_text())
    del record["details"]
    path.write_text(json.dumps(record))
    assert await store.workers(0) == [dataclasses.replace(info, details={})]


async def test_a_worker_entry_with_non_object_details_is_quarantined(store: FileStorage) -> None:
    await store.heartbeat(WorkerInfo("w1", "host", 42, 2, ("default",), NOW, NOW))
    [path] = (store.base_dir / "workers").glob("*.json")
    record = json.loads(path.read_text())
    record["details"] = [1, 2]
    path.write_text(json.dumps(record))
    assert await store.workers(0) == []
    assert len(quarantined(store)) == 1


async def test_queue_names_cover_every_folder_and_odd_names(store: FileStorage) -> None:
    assert await store.queue_names() == []
    await store.enqueue([make(queue="a/../b"), make(), make(queue="")])
    await settle_one(store, TaskStatus.COMPLETED, finished_at=NOW)  # "default": done/ only
    await store.enqueue([make(queue="x")])
    await store.claim(["x"], 1, NOW, NOW + 30, "w1")  # "x" now lives only in running/
    assert await store.queue_names() == ["", "a/../b", "default", "x"]
    await store.purge_finished(NOW + 1, [TaskStatus.COMPLETED], 100)
    assert await store.queue_names() == ["", "a/../b", "x"]


async def test_completed_since_counts_only_completed_tasks(store: FileStorage) -> None:
    await store.enqueue([make() for _ in range(4)])
    await settle_one(store, TaskStatus.COMPLETED, finished_at=NOW)
    await settle_one(store, TaskStatus.COMPLETED, finished_at=NOW - 100)
    await settle_one(store, TaskStatus.DEAD, finished_at=NOW)
    await store.claim(["default"], 1, NOW, NOW + 30, "w1")
    assert await store.completed_since(None, NOW) == 1
    assert await store.completed_since(["default"], NOW - 100) == 2
    assert await store.completed_since(["other"], 0) == 0
    assert await store.completed_since([], 0) == 0
