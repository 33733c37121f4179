"""One suite every storage backend must pass: memory, SQLite and file.

A backend is done when this suite is green for it. Tests speak only the Storage protocol.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.models import ErrorKind, Settlement, Task, TaskError, TaskStatus, create_task
from omniq_mp.storage.base import Storage, WorkerInfo
from omniq_mp.storage.file import FileStorage
from omniq_mp.storage.side_files import SIDE_FILE_MIN
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.contract.backends import BACKENDS, PERSISTENT, backend_params

NOW = 1_700_000_000.0


def make(**options: object) -> Task:
    options.setdefault("eta", NOW - 1)
    return create_task("math.sqrt", **options)  # type: ignore[arg-type]


async def claim(store: Storage, limit: int = 10, now: float = NOW, queues=("default",)):  # type: ignore[no-untyped-def]
    return await store.claim(list(queues), limit, now, now + 30, "w1")


async def test_enqueue_then_get_round_trips_every_field(store: Storage) -> None:
    task = make(queue="q", priority=3, timeout=2.5, max_retries=5, interval=60.0)
    await store.enqueue([task])
    got = await store.get(task.id)
    assert got == task


async def test_a_task_that_has_run_round_trips_every_field_beside_new_ones(store: Storage) -> None:
    # Stores may write a never-run task in a shorter form; one carrying a past (attempts,
    # errors, crashes) must keep all of it, in a batch with new tasks or alone.
    error = TaskError("ValueError", "bad input", "Traceback ...", retry_count=1, max_retries=4)
    ran = make(attempts=2, crashes=1, error=error, history=(error, error), max_retries=4, key="k")
    fresh = make(max_memory=2**30, result_ttl=60.0)
    await store.enqueue([fresh, ran])
    assert await store.get(ran.id) == ran
    assert await store.get(fresh.id) == fresh


async def test_a_batch_mixing_set_and_unset_options_round_trips_each_task(store: Storage) -> None:
    # Stores may write an option unset throughout a batch as a constant: the others of
    # each task must still land on it.
    for size in (1, 4, 5):
        batch = [
            make(),
            make(timeout=1.5, key=f"one of {size}"),
            make(interval=30.0, max_memory=2**20),
            make(result_ttl=5.0, timeout=2.0),
            make(status=TaskStatus.CANCELLED, finished_at=NOW),  # not pending: the full row
        ][:size]
        assert await store.enqueue(batch) == [t.id for t in batch]
        for task in batch:
            assert await store.get(task.id) == task


async def test_a_batch_of_thousands_is_stored_whole_and_claimed_in_order(store: Storage) -> None:
    tasks = [make(eta=NOW - 1) for _ in range(1_234)]
    assert await store.enqueue(tasks) == [t.id for t in tasks]
    claimed = await claim(store, limit=2_000)
    assert [t.id for t in claimed] == [t.id for t in tasks]


async def test_duplicate_id_is_refused_and_the_batch_is_not_stored(store: Storage) -> None:
    first = make()
    await store.enqueue([first])
    fresh = make()
    with pytest.raises(ValueError, match="already exists"):
        await store.enqueue([fresh, first])
    assert await store.get(fresh.id) is None
    assert (await store.stats(None, NOW)).pending == 1


async def test_get_unknown_id_is_none(store: Storage) -> None:
    assert await store.get("no-such-id") is None


async def test_claim_marks_running_charges_an_attempt_and_leases(store: Storage) -> None:
    task = make()
    await store.enqueue([task])
    [claimed] = await claim(store)
    assert claimed.id == task.id
    assert claimed.status is TaskStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.lease_token and claimed.lease_until == NOW + 30
    assert claimed.worker_id == "w1"
    assert (await store.get(task.id)).status is TaskStatus.RUNNING  # type: ignore[union-attr]


async def test_claim_order_is_priority_then_eta_then_fifo(store: Storage) -> None:
    a = make(eta=NOW - 5)
    b = make(eta=NOW - 5)
    c = make(eta=NOW - 9)
    urgent = make(eta=NOW - 1, priority=10)
    await store.enqueue([a, b])
    await store.enqueue([c, urgent])
    claimed = await claim(store, limit=4)
    assert [t.id for t in claimed] == [urgent.id, c.id, a.id, b.id]


async def test_claim_respects_limit_eta_and_queue(store: Storage) -> None:
    due = [make() for _ in range(3)]
    future = make(eta=NOW + 100)
    other = make(queue="other")
    await store.enqueue([*due, future, other])
    first = await claim(store, limit=2)
    second = await claim(store, limit=10)
    assert len(first) == 2 and len(second) == 1
    assert {t.id for t in first + second} == {t.id for t in due}
    assert await claim(store) == []
    assert [t.id for t in await claim(store, now=NOW + 101)] == [future.id]
    assert [t.id for t in await claim(store, queues=("other",))] == [other.id]


async def test_next_due_is_the_earliest_later_eta_of_the_queues_whatever_the_priority(
    store: Storage,
) -> None:
    assert await store.next_due(["default"], NOW) is None  # an empty store
    await store.enqueue(
        [
            make(eta=NOW - 5),  # due already: not "later"
            make(eta=NOW + 40, priority=9),
            make(eta=NOW + 30, priority=-4),  # lowest priority, earliest eta
            make(eta=NOW + 60, priority=2),
            make(eta=NOW + 10, queue="other"),
        ]
    )
    assert await store.next_due(["default"], NOW) == pytest.approx(NOW + 30, abs=1e-5)
    assert await store.next_due(["default", "other"], NOW) == pytest.approx(NOW + 10, abs=1e-5)
    assert await store.next_due(["missing"], NOW) is None
    # Claimed tasks are no longer pending: the next one is what is left.
    assert len(await claim(store, now=NOW + 35)) == 2
    assert await store.next_due(["default"], NOW + 35) == pytest.approx(NOW + 40, abs=1e-5)


async def test_settle_completed_stores_result_and_clears_lease(store: Storage) -> None:
    await store.enqueue([make()])
    [t] = await claim(store)
    ok = await store.settle(
        [Settlement(t.id, t.lease_token or "", TaskStatus.COMPLETED, result=b"r", finished_at=NOW)]
    )
    assert ok == [True]
    got = await store.get(t.id)
    assert got is not None and got.status is TaskStatus.COMPLETED
    assert got.result == b"r" and got.finished_at == NOW
    assert got.lease_token is None and got.lease_until is None


async def test_settle_is_fenced_by_the_lease_token(store: Storage) -> None:
    await store.enqueue([make()])
    [t] = await claim(store)
    stale = Settlement(t.id, "not-the-token", TaskStatus.COMPLETED, result=b"late")
    assert await store.settle([stale]) == [False]
    assert (await store.get(t.id)).status is TaskStatus.RUNNING  # type: ignore[union-attr]
    good = Settlement(t.id, t.lease_token or "", TaskStatus.FAILED, finished_at=NOW)
    assert await store.settle([good, good]) == [True, False]  # second write: lease is gone


async def test_retry_settlement_requeues_with_eta_and_error(store: Storage) -> None:
    await store.enqueue([make()])
    [t] = await claim(store)
    err = TaskError("ValueError", "boom", kind=ErrorKind.EXCEPTION.value)
    retry = Settlement(t.id, t.lease_token or "", TaskStatus.PENDING, error=err, eta=NOW + 5)
    assert await store.settle([retry]) == [True]
    got = await store.get(t.id)
    assert got is not None and got.status is TaskStatus.PENDING
    assert got.eta == NOW + 5 and got.error == err and got.attempts == 1
    assert await claim(store) == []
    [again] = await claim(store, now=NOW + 5)
    assert again.attempts == 2


async def test_uncharged_release_gives_the_attempt_back(store: Storage) -> None:
    await store.enqueue([make()])
    [t] = await claim(store)
    release = Settlement(t.id, t.lease_token or "", TaskStatus.PENDING, uncharge=True)
    assert await store.settle([release]) == [True]
    got = await store.get(t.id)
    assert got is not None and got.status is TaskStatus.PENDING and got.attempts == 0


async def test_follow_up_task_is_inserted_with_the_settlement(store: Storage) -> None:
    await store.enqueue([make(interval=10.0)])
    [t] = await claim(store)
    nxt = make(interval=10.0, eta=NOW + 10)
    done = Settlement(
        t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW, follow_up=nxt
    )
    assert await store.settle([done]) == [True]
    assert (await store.get(nxt.id)) == nxt


async def test_a_running_interval_task_cancelled_schedules_no_next_run(store: Storage) -> None:
    """The cancel request wins over a completion that raced it, next run included: an
    interval task stopped while it ran must not come back."""
    await store.enqueue([make(interval=10.0, key="series")])
    [t] = await claim(store)
    await store.cancel(t.id, NOW)
    nxt = t.rerun(NOW + 10, NOW)
    done = Settlement(
        t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW, follow_up=nxt
    )
    assert await store.settle([done]) == [True]
    assert (await store.get(t.id)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    assert await store.get(nxt.id) is None
    assert await store.key_holder("series") is None


async def test_key_holder_is_the_unfinished_task_holding_the_key(store: Storage) -> None:
    first = make(key="nightly")
    await store.enqueue([first, make(key="other")])
    assert await store.key_holder("nightly") == first.id
    assert await store.key_holder("unknown") is None
    [t, _] = await claim(store)
    assert t.id == first.id and await store.key_holder("nightly") == first.id  # RUNNING
    done = Settlement(t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW)
    await store.settle([done])
    assert await store.key_holder("nightly") is None


async def test_extend_leases_reports_lost_ones(store: Storage) -> None:
    await store.enqueue([make(), make()])
    a, b = await claim(store)
    lost = await store.extend_leases({a.id: a.lease_token or "", b.id: "stolen"}, NOW + 99)
    assert lost == {b.id}
    assert (await store.get(a.id)).lease_until == NOW + 99  # type: ignore[union-attr]


async def test_expired_lists_running_tasks_past_their_lease(store: Storage) -> None:
    await store.enqueue([make(), make()])
    a, b = await claim(store)
    await store.extend_leases({b.id: b.lease_token or ""}, NOW + 500)
    assert await store.expired(NOW + 10, 100) == []
    expired = await store.expired(NOW + 31, 100)
    assert [t.id for t in expired] == [a.id]
    assert expired[0].lease_token == a.lease_token


async def test_cancel_pending_only(store: Storage) -> None:
    pending, running = make(), make()
    await store.enqueue([running])
    await claim(store)
    await store.enqueue([pending])
    got = await store.cancel(pending.id, NOW)
    assert got is not None and got.status is TaskStatus.CANCELLED
    assert await claim(store) == []
    still = await store.cancel(running.id, NOW)
    assert still is not None and still.status is TaskStatus.RUNNING
    assert await store.cancel("nope", NOW) is None


async def test_stats_counts_by_status(store: Storage) -> None:
    await store.enqueue([make(), make(), make(eta=NOW + 50), make(queue="b")])
    [t] = await claim(store, limit=1)
    retry = Settlement(t.id, t.lease_token or "", TaskStatus.PENDING, eta=NOW + 5)
    await store.settle([retry])
    s = await store.stats(["default"], NOW)
    assert (s.pending, s.due, s.retrying, s.running) == (3, 1, 1, 0)
    everything = await store.stats(None, NOW)
    assert everything.pending == 4 and everything.unfinished == 4


async def test_worker_heartbeats(store: Storage) -> None:
    info = WorkerInfo("w1", "host", 42, 2, ("default", "b"), NOW, NOW)
    await store.heartbeat(info)
    assert await store.workers(NOW - 1) == [info]
    assert await store.workers(NOW + 1) == []
    await store.remove_worker("w1")
    assert await store.workers(0) == []


async def test_large_payload_and_result_round_trip(store: Storage) -> None:
    blob = bytes(range(256)) * 40_000  # 10 MiB, every byte value
    task = make(payload=blob)
    await store.enqueue([task])
    [t] = await claim(store)
    await store.settle([Settlement(t.id, t.lease_token or "", TaskStatus.COMPLETED, result=blob)])
    got = await store.get(t.id)
    assert got is not None and got.payload == blob and got.result == blob


async def test_concurrent_claims_in_one_loop_never_share_a_task(store: Storage) -> None:
    await store.enqueue([make() for _ in range(50)])
    batches = await asyncio.gather(*(claim(store, limit=7) for _ in range(10)))
    ids = [t.id for batch in batches for t in batch]
    assert len(ids) == 50 and len(set(ids)) == 50


# -- persistence and cross-process behaviour -------------------------------------------------


@pytest.mark.parametrize("backend", backend_params(PERSISTENT))
async def test_tasks_survive_reopen(backend: str, tmp_path: Path) -> None:
    first = BACKENDS[backend](tmp_path)
    await first.open()
    task = make()
    await first.enqueue([task])
    await first.close()
    second = BACKENDS[backend](tmp_path)
    await second.open()
    assert await second.get(task.id) == task
    await second.close()


def _claim_in_child(backend: str, folder: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> list[str]:
        store = BACKENDS[backend](Path(folder))
        await store.open()
        got: list[str] = []
        while batch := await store.claim(["default"], 3, time.time(), time.time() + 30, "c"):
            got += [t.id for t in batch]
        await store.close()
        return got

    out.put(asyncio.run(run()))


@pytest.mark.parametrize("backend", backend_params(PERSISTENT))
async def test_two_processes_claiming_never_get_the_same_task(backend: str, tmp_path: Path) -> None:
    store = BACKENDS[backend](tmp_path)
    await store.open()
    tasks = [make(eta=0.0) for _ in range(300)]
    await store.enqueue(tasks)
    await store.close()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_child, args=(backend, str(tmp_path), out)) for _ in "ab"]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    ids = results[0] + results[1]
    assert sorted(ids) == sorted(t.id for t in tasks)  # each exactly once


@pytest.mark.parametrize("content", [b"this is not a database at all" * 10, b""])
async def test_sqlite_refuses_a_file_that_is_not_a_database(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "omniq.db"
    path.write_bytes(content)
    with pytest.raises(StorageError, match=r"omniq\.db"):
        await SQLiteStorage(path).open()
    assert path.read_bytes() == content  # never overwritten


async def test_sqlite_refuses_a_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        await SQLiteStorage(tmp_path / "data" / "omniq.db").open()


async def test_file_store_refuses_a_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        await FileStorage(tmp_path / "store").open()


# -- task control: keys, cancellation, crash budget, retention ---------------------------------


async def test_claim_serves_queues_in_the_order_given(store: Storage) -> None:
    low = make(queue="default", priority=100)
    high = [make(queue="high", priority=p) for p in (0, 5)]
    await store.enqueue([low, *high])
    claimed = await store.claim(["high", "default"], 10, NOW, NOW + 30, "w1")
    assert [t.id for t in claimed] == [high[1].id, high[0].id, low.id]


async def test_a_claim_bounded_in_bytes_stops_at_the_first_payload_that_does_not_fit(
    store: Storage,
) -> None:
    # In claim order (by eta): 3, 5, 2, 1 and 1 KiB. The first task comes whatever its
    # size; the bound is on those after it, and never skips ahead to a smaller payload
    # that would fit: that would run tasks out of order.
    sizes = [3, 5, 2, 1, 1]
    tasks = [make(payload=bytes(kib * 1024), eta=NOW - 10 + i) for i, kib in enumerate(sizes)]
    await store.enqueue(tasks)
    bounded = await store.claim(["default"], 10, NOW, NOW + 30, "w1", max_bytes=6 * 1024)
    assert [t.id for t in bounded] == [tasks[0].id, tasks[1].id]  # 5 fits in 6, 5 + 2 not
    assert [len(t.payload) for t in bounded] == [3 * 1024, 5 * 1024]
    tight = await store.claim(["default"], 10, NOW, NOW + 30, "w1", max_bytes=0)
    assert [t.id for t in tight] == [tasks[2].id]
    exact = await store.claim(["default"], 10, NOW, NOW + 30, "w1", max_bytes=1024)
    assert [t.id for t in exact] == [tasks[3].id, tasks[4].id]  # up to the byte


async def test_a_claim_bounded_in_bytes_counts_large_payloads_without_taking_them(
    store: Storage,
) -> None:
    # A payload large enough for a side file (SQLite, file) is sized unread, and the
    # running total crosses queues in the order they are served.
    big = make(payload=bytes(SIDE_FILE_MIN + 10), eta=NOW - 5)
    small = [make(payload=bytes(1024), eta=NOW - 9), make(payload=bytes(1024), eta=NOW - 1)]
    urgent = make(payload=bytes(1024), queue="high")
    await store.enqueue([big, *small, urgent])
    queues = ["high", "default"]
    first = await store.claim(queues, 10, NOW, NOW + 30, "w1", max_bytes=4096)
    assert [t.id for t in first] == [urgent.id, small[0].id]  # then the big one: no room
    second = await store.claim(queues, 10, NOW, NOW + 30, "w1", max_bytes=0)
    assert [t.id for t in second] == [big.id]  # first of its claim: taken whole
    assert len(second[0].payload) == SIDE_FILE_MIN + 10
    again = [make(payload=bytes(SIDE_FILE_MIN + 10), eta=NOW - 8 + i) for i in range(3)]
    await store.enqueue(again)
    room = SIDE_FILE_MIN + 10 + 1023  # the 1 KiB task after them does not fit
    both = await store.claim(queues, 10, NOW, NOW + 30, "w1", max_bytes=room, min_tasks=2)
    # Two come whatever their size (say, for two idle workers), the third fits the bound.
    assert [t.id for t in both] == [again[0].id, again[1].id, again[2].id]
    assert [t.id for t in await claim(store)] == [small[1].id]


async def test_a_key_held_by_an_unfinished_task_returns_that_task(store: Storage) -> None:
    first = make(key="nightly-2026-11-22")
    again = make(key="nightly-2026-11-22")
    other = make(key="other")
    assert await store.enqueue([first]) == [first.id]
    assert await store.enqueue([again, other]) == [first.id, other.id]
    assert await store.get(again.id) is None
    [t, _] = await claim(store)
    assert await store.enqueue([again]) == [first.id]  # still unfinished while RUNNING
    done = Settlement(t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW)
    await store.settle([done])
    assert await store.enqueue([again]) == [again.id]  # finished: the key is free again


async def test_cancel_of_a_running_task_is_a_request_that_wins_over_its_outcome(
    store: Storage,
) -> None:
    await store.enqueue([make(), make()])
    a, b = await claim(store)
    flagged = await store.cancel(a.id, NOW)
    assert flagged is not None and flagged.status is TaskStatus.RUNNING and flagged.cancel_requested
    assert await store.cancel_requests([a.id, b.id]) == {a.id}
    late = Settlement(a.id, a.lease_token or "", TaskStatus.COMPLETED, result=b"late")
    retry = Settlement(b.id, b.lease_token or "", TaskStatus.PENDING, eta=NOW)
    assert await store.settle([late, retry]) == [True, True]
    got = await store.get(a.id)
    assert got is not None and got.status is TaskStatus.CANCELLED and got.result is None
    assert (await store.get(b.id)).status is TaskStatus.PENDING  # type: ignore[union-attr]


async def test_a_cancelled_retry_is_not_requeued(store: Storage) -> None:
    await store.enqueue([make()])
    [t] = await claim(store)
    await store.cancel(t.id, NOW)
    retry = Settlement(t.id, t.lease_token or "", TaskStatus.PENDING, eta=NOW)
    assert await store.settle([retry]) == [True]
    assert (await store.get(t.id)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


async def test_crashes_and_history_accumulate(store: Storage) -> None:
    await store.enqueue([make()])
    errors = [TaskError("WorkerCrashed", f"crash {i}", kind="crash") for i in range(2)]
    for err in errors:
        [t] = await claim(store, now=NOW + 100)
        crash = Settlement(t.id, t.lease_token or "", TaskStatus.PENDING, error=err, crashed=True)
        await store.settle([crash])
    [t] = await claim(store, now=NOW + 100)
    dead = Settlement(t.id, t.lease_token or "", TaskStatus.DEAD, finished_at=NOW)
    await store.settle([dead])
    got = await store.get(t.id)
    assert got is not None and got.status is TaskStatus.DEAD
    assert got.crashes == 2 and got.history == tuple(errors) and got.attempts == 3
    assert [x.id for x in await store.list_tasks(TaskStatus.DEAD, None, 10)] == [t.id]


async def test_revive_requeues_dead_tasks_with_fresh_budgets(store: Storage) -> None:
    await store.enqueue([make(), make()])
    a, b = await claim(store)
    await store.settle(
        [
            Settlement(a.id, a.lease_token or "", TaskStatus.DEAD, finished_at=NOW, crashed=True),
            Settlement(b.id, b.lease_token or "", TaskStatus.FAILED, finished_at=NOW),
        ]
    )
    assert await store.revive(None, NOW + 1) == [a.id]  # all DEAD, not FAILED
    got = await store.get(a.id)
    assert got is not None and got.status is TaskStatus.PENDING
    assert (got.attempts, got.crashes, got.eta, got.finished_at) == (0, 0, NOW + 1, None)
    assert await store.revive([b.id, "unknown"], NOW + 1) == [b.id]
    assert await store.revive([a.id], NOW + 1) == []  # pending now: nothing to revive


async def test_revive_keeps_one_unfinished_task_per_key(store: Storage) -> None:
    """A task whose key an unfinished task holds stays as it is (a failed run of a live
    interval series, whose runs share a key); of several sharing a free key, the first
    enqueued is revived."""

    async def finish(status: TaskStatus, *tasks: Task) -> None:
        await store.enqueue(list(tasks))
        held = await claim(store)
        await store.settle([Settlement(t.id, t.lease_token or "", status) for t in held])

    first, second, other = make(key="K"), make(key="K"), make(key="L")
    await finish(TaskStatus.FAILED, first)
    await finish(TaskStatus.DEAD, second, other)
    holder = make(key="K", eta=NOW + 60)
    await store.enqueue([holder])
    assert await store.revive([first.id, second.id], NOW) == []
    assert (await store.get(first.id)).status is TaskStatus.FAILED  # type: ignore[union-attr]
    assert await store.revive(None, NOW) == [other.id]
    await store.cancel(holder.id, NOW)  # the key is free again
    assert await store.revive([second.id, first.id], NOW) == [first.id]
    assert await store.key_holder("K") == first.id
    assert (await store.get(second.id)).status is TaskStatus.DEAD  # type: ignore[union-attr]


async def test_finished_tasks_expire_after_their_result_ttl(store: Storage) -> None:
    keep, short = make(result_ttl=None), make(result_ttl=10.0)
    await store.enqueue([keep, short])
    claimed = await claim(store)
    await store.settle(
        [
            Settlement(t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW)
            for t in claimed
        ]
    )
    assert (await store.get(short.id)).expires_at == NOW + 10  # type: ignore[union-attr]
    assert await store.purge_expired(NOW + 9, 100) == 0
    assert await store.purge_expired(NOW + 10, 100) == 1
    assert await store.get(short.id) is None and await store.get(keep.id) is not None


async def test_purge_finished_by_age_and_status(store: Storage) -> None:
    await store.enqueue([make(), make(), make()])
    a, b, c = await claim(store)
    await store.settle(
        [
            Settlement(a.id, a.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW - 100),
            Settlement(b.id, b.lease_token or "", TaskStatus.FAILED, finished_at=NOW - 100),
            Settlement(c.id, c.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW),
        ]
    )
    assert await store.purge_finished(NOW - 50, [TaskStatus.COMPLETED], 100) == 1
    assert await store.get(a.id) is None
    assert await store.get(b.id) is not None and await store.get(c.id) is not None


# -- statistics ----------------------------------------------------------------------------


async def test_queue_names_and_completed_since(store: Storage) -> None:
    await store.enqueue([make(queue="b"), make(queue="a"), make(queue="a")])
    assert await store.queue_names() == ["a", "b"]
    claimed = await claim(store, queues=("a",))
    done = [
        Settlement(t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=when)
        for t, when in zip(claimed, (NOW, NOW - 120), strict=True)
    ]
    await store.settle(done)
    assert await store.completed_since(["a"], NOW - 60) == 1
    assert await store.completed_since(None, NOW - 600) == 2
    assert await store.completed_since(["b"], 0) == 0


async def test_worker_details_round_trip(store: Storage) -> None:
    details = {"active": 1, "children": [{"pid": 7, "task_id": "t", "rss": 1024}]}
    info = WorkerInfo("w2", "host", 42, 2, ("default",), NOW, NOW, details)
    await store.heartbeat(info)
    assert await store.workers(NOW - 1) == [info]
