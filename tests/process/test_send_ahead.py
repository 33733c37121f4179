"""Tasks sent ahead to a busy worker (short tasks, up to three for the shortest): each
starts right after the one before it with its own timeout clock, can be taken back until
it starts, and is never run, nor charged, when its worker ends first. Real worker
processes throughout."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from omniq_mp import AsyncOmniQ, Settings, TaskStatus
from omniq_mp.models import ErrorKind, Outcome, OutcomeKind, Task
from omniq_mp.pool import ProcessPool, WorkerProcess
from tests.process import tasks
from tests.process.conftest import MakePool
from tests.process.support import acquire, assert_replaced, make_task, value, wait_until

pytestmark = pytest.mark.process


async def first_running(
    pool: ProcessPool, task: Task
) -> tuple[WorkerProcess, asyncio.Task[Outcome]]:
    """Start ``task`` on the pool's one worker and wait until it runs there."""
    worker = await acquire(pool)
    job = asyncio.create_task(pool.run(worker, task))
    await wait_until(lambda: worker.current == task.id, 10, "the first task started")
    return worker, job


async def send_ahead(
    pool: ProcessPool, worker: WorkerProcess, task: Task, ahead: int = 1
) -> asyncio.Task[Outcome]:
    """Send ``task`` to the busy ``worker``, as the supervisor does with short tasks."""
    assert pool.try_acquire_ahead(ahead) is worker
    job = asyncio.create_task(pool.run(worker, task))
    await wait_until(lambda: task.id in worker.held, 5, "the task sent")
    assert worker.current != task.id  # queued in the child behind the running one
    return job


async def test_a_task_sent_ahead_starts_after_the_first_with_its_own_timeout_clock(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    worker, first = await first_running(pool, make_task(tasks.sleep_for, 0.6))
    # It waits ~0.6 s behind the first: a clock started when it was sent would expire.
    second = await send_ahead(pool, worker, make_task(tasks.sleep_for, 0.2, timeout=0.5))
    assert pool.try_acquire_ahead() is None  # one task ahead per worker, no more
    assert value(await second) == 0.2
    assert value(await first) == 0.6
    assert (await first).pid == (await second).pid == worker.pid and worker.alive
    assert pool.idle() == 1  # released once both are done


async def test_three_tasks_sent_ahead_run_in_order_each_with_its_own_timeout_clock(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(1)
    worker, first = await first_running(pool, make_task(tasks.sleep_for, 0.4))
    log = tmp_path / "order"
    # Each waits behind the ones before it (0.4 s and more): a clock started when it was
    # sent would expire; each gets 0.3 s from its own start.
    behind = [make_task(tasks.append_line, str(log), str(n), timeout=0.3) for n in range(3)]
    jobs = [await send_ahead(pool, worker, task, ahead=3) for task in behind]
    assert pool.try_acquire_ahead(3) is None  # the running task and three ahead: full
    assert [value(await job) for job in jobs] == [None, None, None]
    assert value(await first) == 0.4
    assert log.read_text().split() == ["0", "1", "2"]  # in the order sent
    assert {(await job).pid for job in jobs} == {worker.pid} and worker.alive
    assert pool.idle() == 1


async def test_the_least_loaded_busy_worker_is_sent_the_next_task_ahead(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(2)
    a, first_a = await first_running(pool, make_task(tasks.sleep_for, 0.5))
    b, first_b = await first_running(pool, make_task(tasks.sleep_for, 0.5))
    ahead_a = await send_ahead(pool, a, make_task(tasks.add, 1, 2), ahead=3)  # a started first
    ahead_b = await send_ahead(pool, b, make_task(tasks.add, 3, 4), ahead=3)  # a holds more
    assert pool.try_acquire_ahead(1) is None  # with one ahead allowed, both are full
    assert [value(await job) for job in (ahead_a, ahead_b, first_a, first_b)] == [3, 7, 0.5, 0.5]


async def test_a_task_taken_back_before_it_starts_never_runs_and_its_worker_lives_on(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(1)
    worker, first = await first_running(pool, make_task(tasks.sleep_for, 0.5))
    marker = tmp_path / "ran"
    ahead = make_task(tasks.mark_ran, str(marker))
    second = await send_ahead(pool, worker, ahead)
    assert pool.abort(ahead.id, "cancelled", ErrorKind.CANCELLED, OutcomeKind.ABORTED, "Cancelled")
    taken_back = await second
    assert taken_back.kind is OutcomeKind.ABORTED
    assert taken_back.error is not None and taken_back.error.error_type == "Cancelled"
    assert value(await first) == 0.5  # the running task was not disturbed
    assert not marker.exists()
    # Same process, still serving: taking a task back costs no kill.
    again = await pool.run(await acquire(pool), make_task(tasks.add, 2, 3))
    assert value(again) == 5 and again.pid == worker.pid


@pytest.mark.parametrize("ending", ["crash", "timeout"])
async def test_tasks_sent_ahead_of_one_that_dies_come_back_unstarted(
    make_pool: MakePool, tmp_path: Path, ending: str
) -> None:
    pool = await make_pool(1)
    doomed = (
        make_task(tasks.sleep_then_exit, 0.3, 7)
        if ending == "crash"
        else make_task(tasks.sleep_for, 30, timeout=0.3)
    )
    worker, first = await first_running(pool, doomed)
    markers = [tmp_path / f"ran-{n}" for n in range(3)]
    behind = [
        await send_ahead(pool, worker, make_task(tasks.mark_ran, str(marker)), ahead=3)
        for marker in markers
    ]
    outcome = await first
    assert outcome.kind is (OutcomeKind.CRASHED if ending == "crash" else OutcomeKind.TIMED_OUT)
    for job in behind:
        unstarted = await job
        assert unstarted.kind is OutcomeKind.NOT_STARTED and unstarted.error is None
    assert not any(marker.exists() for marker in markers)
    await assert_replaced(pool, worker.pid)


async def test_a_stop_gives_back_tasks_sent_ahead_uncharged_and_loses_nothing(
    tmp_path: Path,
) -> None:
    q = AsyncOmniQ(Settings(base_dir=tmp_path / "store", procs=2, event_storage_type="none"))
    await q.open()
    try:
        ids = await q.enqueue_tasks([q.build(tasks.sleep_for, 0.005) for _ in range(400)])
        workers = q.worker_pool(concurrency=2)
        await workers.start()
        sent_ahead = 0
        try_ahead = workers.pool.try_acquire_ahead

        def counting(ahead: int = 1, stalled_after: float = math.inf) -> WorkerProcess | None:
            nonlocal sent_ahead
            worker = try_ahead(ahead, stalled_after)
            sent_ahead += worker is not None
            return worker

        workers.pool.try_acquire_ahead = counting  # type: ignore[method-assign]
        run = asyncio.create_task(workers.process_tasks())
        await wait_until(lambda: sent_ahead >= 20, 30, "tasks sent ahead")
        await workers.stop(grace=0.0)
        await run
        stored = [await q.get_task(i) for i in ids]
        assert all(t is not None for t in stored)
        done = [t for t in stored if t is not None and t.status is TaskStatus.COMPLETED]
        back = [t for t in stored if t is not None and t.status is TaskStatus.PENDING]
        assert len(done) + len(back) == len(ids)  # nothing RUNNING, lost or failed
        assert all(t.attempts == 1 for t in done)
        assert all(t.attempts == 0 and t.error is None for t in back)  # uncharged
        assert back  # the stop came mid-way
    finally:
        await q.close()


async def test_a_graceful_stop_takes_back_tasks_sent_ahead_before_they_start(
    tmp_path: Path,
) -> None:
    settings = Settings(
        base_dir=tmp_path / "store", procs=2, event_storage_type="none", send_ahead_below=60.0
    )
    q = AsyncOmniQ(settings)
    await q.open()
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    try:
        async with q.worker_pool(concurrency=2) as workers:
            await q.enqueue(tasks.add, 1, 2)  # one measured task: the pacer knows they are short
            assert await workers.process_tasks(limit=1) == 1
            ids = [
                await q.enqueue(tasks.mark_then_wait_for, str(marks / str(n)), str(gate))
                for n in range(4)
            ]
            run = asyncio.create_task(workers.process_tasks())
            # Two running (each holding its worker until the gate opens), two sent ahead.
            await wait_until(lambda: len(workers.pool.holds()) == 4, 30, "4 tasks on 2 workers")
            await wait_until(lambda: len(list(marks.iterdir())) == 2, 30, "2 tasks running")
            stopping = asyncio.create_task(workers.stop(grace=30.0))
            await asyncio.sleep(0.2)  # the stop is under way; the running tasks hold on
            gate.touch()
            await stopping
            await run
        stored = {i: await q.get_task(i) for i in ids}
        ran = {t.id for t in stored.values() if t and t.status is TaskStatus.COMPLETED}
        back = {t.id for t in stored.values() if t and t.status is TaskStatus.PENDING}
        assert len(ran) == 2 and len(back) == 2, stored
        assert len(list(marks.iterdir())) == 2  # the two sent ahead never started
        assert all(stored[i].attempts == 0 for i in back)  # type: ignore[union-attr]
    finally:
        await q.close()


async def test_a_worker_is_not_handed_out_while_a_task_reserved_for_it_waits(
    make_pool: MakePool,
) -> None:
    # The supervisor reserves a worker when it dispatches, and the task's run starts a
    # loop turn later: in between, the worker's previous task may end.
    pool = await make_pool(1)
    worker = await acquire(pool)
    first, second = make_task(tasks.add, 1, 2), make_task(tasks.add, 3, 4)
    pool.reserve(worker, first)
    pool.reserve(worker, second)
    assert value(await pool.run(worker, first)) == 3
    assert pool.idle() == 0 and pool.try_acquire_ahead() is worker  # still holds `second`
    assert value(await pool.run(worker, second)) == 7
    assert pool.idle() == 1


async def test_tasks_sent_ahead_of_a_stuck_task_come_back_while_it_still_runs(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(1)
    gate = tmp_path / "gate"
    stuck = make_task(tasks.mark_then_wait_for, str(tmp_path / "stuck"), str(gate), timeout=0)
    worker, first = await first_running(pool, stuck)
    markers = [tmp_path / f"ran-{n}" for n in range(3)]
    behind = [
        await send_ahead(pool, worker, make_task(tasks.mark_ran, str(marker)), ahead=3)
        for marker in markers
    ]
    assert pool.try_acquire_ahead(3, stalled_after=0.0) is None  # not behind a stuck one
    await asyncio.sleep(0.05)
    assert not pool.take_back_stalled(after=0.05)  # asked back; nothing else sent ahead
    # The child answers while its task still runs: they are free long before the gate.
    done, _ = await asyncio.wait(behind, timeout=5)
    assert done == set(behind) and not first.done()
    for job in behind:
        back = await job
        assert back.kind is OutcomeKind.NOT_STARTED and back.error is None
    assert worker.held == [stuck.id] and worker.alive
    gate.touch()
    assert value(await first) is None  # the stuck task was left alone and finished
    assert not any(marker.exists() for marker in markers)  # and they never ran there
    # The skipped frames left the worker's stream in step: its next task runs normally.
    again = await pool.run(await acquire(pool), make_task(tasks.add, 2, 3))
    assert value(again) == 5 and again.pid == worker.pid


async def test_only_workers_whose_task_ran_past_the_limit_give_tasks_back(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    worker, first = await first_running(pool, make_task(tasks.sleep_for, 0.5))
    ahead = await send_ahead(pool, worker, make_task(tasks.add, 1, 2))
    assert pool.take_back_stalled(after=60.0)  # not stalled: still ahead, check again later
    assert value(await ahead) == 3  # it ran where it was sent
    assert value(await first) == 0.5


async def test_a_task_cancelled_behind_a_long_one_is_settled_before_that_one_ends(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(1)
    gate = tmp_path / "gate"
    worker, first = await first_running(
        pool, make_task(tasks.mark_then_wait_for, str(tmp_path / "long"), str(gate), timeout=0)
    )
    marker = tmp_path / "ran"
    ahead = make_task(tasks.mark_ran, str(marker))
    second = await send_ahead(pool, worker, ahead)
    assert pool.abort(ahead.id, "cancelled", ErrorKind.CANCELLED, OutcomeKind.ABORTED, "Cancelled")
    cancelled = await asyncio.wait_for(second, 5)  # the gate is still shut
    assert cancelled.kind is OutcomeKind.ABORTED and not first.done()
    gate.touch()
    assert value(await first) is None and worker.alive
    assert not marker.exists()


async def test_a_supervisor_moves_tasks_sent_ahead_of_a_hung_task_to_its_other_worker(
    tmp_path: Path,
) -> None:
    q = AsyncOmniQ(Settings(base_dir=tmp_path / "store", procs=2, event_storage_type="none"))
    await q.open()
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    try:
        async with q.worker_pool(concurrency=2) as workers:
            asked_back: list[str] = []
            take_back = WorkerProcess.take_back

            def counting(self: WorkerProcess, task_id: str) -> None:
                asked_back.append(task_id)
                take_back(self, task_id)

            WorkerProcess.take_back = counting  # type: ignore[method-assign]
            try:
                await q.enqueue(tasks.add, 1, 2)  # measured: the pacer knows tasks are short
                assert await workers.process_tasks(limit=1) == 1
                # No timeout: without the take-back, the tasks sent ahead of the hung one
                # would wait for ever while the other worker idles.
                hung = await q.enqueue(tasks.mark_then_wait_for, str(marks / "hung"), str(gate))
                short = [await q.enqueue(tasks.sleep_for, 0.002) for _ in range(300)]
                run = asyncio.create_task(workers.process_tasks())
                # Settled: the measured task and the 300 short ones (not the hung one).
                await wait_until(lambda: workers.processed == 301, 30, "the short tasks settled")
                assert (marks / "hung").exists()
                stored = [await q.get_task(i) for i in short]
                assert all(t is not None and t.status is TaskStatus.COMPLETED for t in stored)
                assert all(t.attempts == 1 for t in stored if t is not None)  # run once each
                assert asked_back  # some were sent ahead of the hung task, and came back
                hung_task = await q.get_task(hung)
                assert hung_task is not None and hung_task.status is TaskStatus.RUNNING
                gate.touch()
                await wait_until(lambda: not workers.pool.holds(), 30, "the hung task ended")
                workers.request_stop()
                await run
            finally:
                WorkerProcess.take_back = take_back  # type: ignore[method-assign]
        finished = await q.get_task(hung)
        assert finished is not None and finished.status is TaskStatus.COMPLETED
    finally:
        await q.close()
