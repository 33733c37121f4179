"""AsyncWorkerPool: the supervisor loop that feeds a process pool from durable storage.

    claim loop ── claim(idle + prefetch) ──> _ready (claimed, not started)
         │                                       │ one per idle worker
         │                                       v
         │                               _run_one: pool.run ──> _outcomes
         │                                                         │
    lease keeper: renew every held lease            recorder: settle in batches
    recovery:     requeue other supervisors' expired leases      (one transaction)
    heartbeat:    tell producers a worker is alive

``_held`` maps every task this supervisor has claimed and not yet settled to its claim
(it is what the lease keeper renews); a task leaves it only after its settlement commits,
so an outcome is never lost between the child and the database.

A store that cannot take writes (disk full, read-only): outcomes stay in hand (at most
``procs + prefetch``, the claim limit) and are retried with backoff, no new work is
claimed meanwhile, running tasks are stopped before their leases can lapse (as for any
lease that cannot be renewed), and a store still read-only after ``read_only_timeout``
makes the supervisor give up: it stops, and ``process_tasks`` raises
:class:`~omniq_mp.errors.StorageReadOnlyError`; what it held runs again elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from loguru import logger

from omniq_mp.config import Settings, size_setting
from omniq_mp.crashpoints import crash_point
from omniq_mp.errors import OmniqError, StorageReadOnlyError, WorkerStartError
from omniq_mp.events import EventRecorder, EventType, SupervisorEvents
from omniq_mp.file_modes import warn_if_exposed
from omniq_mp.inbox import Inbox
from omniq_mp.looplag import LoopLagProbe
from omniq_mp.models import Outcome, OutcomeKind, Settlement, Task, TaskStatus
from omniq_mp.pool import ProcessPool, WorkerProcess
from omniq_mp.queue import AsyncTaskQueue
from omniq_mp.schedule import next_cron_time
from omniq_mp.signing import Signer
from omniq_mp.storage.base import Lease, Storage, WorkerInfo
from omniq_mp.storage.capabilities import AnnouncesWork, judges_lease_expiry
from omniq_mp.wakeup import CLIENTS, SUPERVISORS, Poker, WakeListener
from omniq_mp.watch import WATCH_INTERVAL, TaskWatch, cpu_seconds, tree_rss

__all__ = ["AsyncWorkerPool"]

HEARTBEAT_INTERVAL = 2.0
SCHEDULE_INTERVAL = 1.0  # cron has minute resolution; a second late is on time
_RECOVERY_BATCH = 100
# Stop a task once its lease has gone this share of lease_ttl without a confirmed renewal:
# renewals run every quarter ttl, so this leaves time to kill it before the lease ends.
_LEASE_SAFETY = 0.7
_PURGE_BATCH = 500

SettledCallback = Callable[[Task, Settlement], None]


class AsyncWorkerPool:
    """A supervisor with its own pool of worker processes.

    :param queue: the task queue (or a bare storage, wrapped in one).
    :param settings: runtime settings (procs, lease, grace, start method ...).
    :param concurrency: worker processes; defaults to ``settings.procs``.
    :param queues: queue names served; defaults to ``settings.queues``.
    :param recorder: where task and worker events go (None: no events).
    :param open_stores: awaited first by :meth:`start`: opens the stores (and starts the
        recorder) when they are not open yet; ``AsyncOmniQ.worker_pool`` passes its own
        ``open``. Without it, open the storage before starting.
    """

    def __init__(
        self,
        queue: AsyncTaskQueue | Storage,
        settings: Settings | None = None,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        recorder: EventRecorder | None = None,
        open_stores: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = (settings or Settings()).with_overrides(
            procs=concurrency, queues=tuple(queues) if queues else None
        )
        self.queue = queue if isinstance(queue, AsyncTaskQueue) else self.settings.task_queue(queue)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.events = SupervisorEvents(recorder, self.worker_id)
        self._open_stores = open_stores
        self.pool = ProcessPool(
            self.settings.procs,
            start_method=self.settings.start_method,
            kill_grace=self.settings.kill_grace,
            max_tasks_per_child=self.settings.max_tasks_per_child,
            max_memory_per_child=size_setting(self.settings.max_memory_per_child),
            signer=Signer.from_settings(self.settings),  # only handed to the workers
            worker_init=self.settings.worker_init,
            max_result_size=size_setting(self.settings.max_result_size),
            ready_timeout=self.settings.worker_init_timeout,
            max_start_failures=self.settings.max_start_failures,
        )
        self.pool.on_give_up = self._workers_failed
        self.on_settled: list[SettledCallback] = []
        self.processed = 0  # attempts settled by this supervisor
        self._held: dict[str, Task] = {}
        self._confirmed: dict[str, float] = {}  # task id -> monotonic time its lease held
        # At most the oldest of those times: claims add times no older than any before,
        # renewals only make times newer, so it stays a lower bound between recomputes.
        self._confirmed_floor = math.inf
        # Other holders' leases as last read, and the monotonic time each was first seen
        # so: the observer's clock that judges them (see _dead_leases).
        self._sightings: dict[str, tuple[tuple[str, float | None], float]] = {}
        self._ready: collections.deque[Task] = collections.deque()
        # Held tasks whose outcome is in hand, waiting for the store: nothing runs for
        # them any more, so a lease that cannot be renewed is no reason to drop them.
        self._in_hand: dict[str, Task] = {}
        self._storing_failed = False  # the last attempt to store outcomes failed
        self._claimed_count = 0  # tasks claimed so far, alone or with outcomes
        self._claim_cap: int | None = None  # process_tasks(limit=): claim no more than this
        self._asked = 0  # tasks asked for by claims under way (one alone, one with outcomes)
        self._pulling = False  # process_tasks is claiming: outcomes may bring claims along
        # The last claim got all it asked for, so more may be queued: only then do
        # outcomes carry a claim (an idle round trip's outcome commits without one).
        self._more_queued = False
        self._carried = asyncio.Event()  # clear while a claim carried by outcomes is out
        self._carried.set()
        self._read_only = ReadOnlyWatch(self.settings.read_only_timeout)
        # Set when we give up (a store read-only too long, workers that cannot start):
        # process_tasks raises it once what we hold is handled.
        self._fatal: OmniqError | None = None
        self._outcomes: Inbox[tuple[Task, Outcome]] = Inbox()
        self._wake = asyncio.Event()  # set when claiming may find or start work
        self._empty_polls = 0  # claims in a row that found nothing (idle backoff)
        self._next_due: float | None = None  # the earliest known ETA still ahead
        self._idle = asyncio.Event()  # set when nothing is held
        self._idle.set()
        self._claimed = asyncio.Event()  # set by a claim that found tasks (see _watch_loop)
        self._stopping = False
        self._started_at = time.time()
        self._jobs: set[asyncio.Task[Any]] = set()  # runs of tasks, strong refs
        self._stall_check: asyncio.TimerHandle | None = None  # see _take_back_stalled
        self._pacer = Pacer(
            self.settings.procs, self.settings.prefetch, self.settings.send_ahead_below
        )
        self.watch = TaskWatch(self.pool, self.queue.storage, lambda: self._held, self._drop)
        self._services: list[asyncio.Task[None]] = []
        # Read and reset by each heartbeat (_beat); sampled every 0.1 s while tasks are
        # held, every second while none are.
        self.loop_lag = LoopLagProbe(busy=lambda: bool(self._held))
        wake_dir = self.settings.wake_dir
        # Producers in other processes poke us when they enqueue; we poke their clients
        # when we store outcomes (see wakeup.py): millisecond reactions without polling.
        self._listener = (
            None
            if wake_dir is None
            else WakeListener(wake_dir, SUPERVISORS, self.wake, on_due=self.note_due)
        )
        self._clients = None if wake_dir is None else Poker(wake_dir, CLIENTS)

    async def __aenter__(self) -> AsyncWorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker processes and the background services."""
        if self._open_stores is not None:  # else claims would fail until someone opened
            await self._open_stores()
        warn_if_exposed(self.queue.storage, signing=self.settings.signing_key is not None)
        await self.pool.start()
        for name, loop in (
            ("recorder", self._record_loop),
            ("leases", self._lease_loop),
            ("notifications", self._notification_loop),
            ("recovery", self._recovery_loop),
            ("heartbeat", self._heartbeat_loop),
            ("watch", self._watch_loop),
            ("purge", self._purge_loop),
            ("schedules", self._schedule_loop),
            ("loop-lag", self.loop_lag.run),
        ):
            self._services.append(asyncio.create_task(loop(), name=f"omniq-{name}"))
        if self._listener is not None:
            self._listener.start()
        self.events.worker(EventType.WORKER_ONLINE, **self._counters())
        logger.bind(action="worker_online", worker=self.worker_id).info(
            "supervisor {} online: {} processes, queues {}",
            self.worker_id,
            self.settings.procs,
            ",".join(self.settings.queues),
        )

    def wake(self, due: float | None = None) -> None:
        """Look for work now instead of at the next poll (an in-process enqueue calls this);
        ``due``: the earliest time, on the queue's clock, that a task among the new ones
        falls due, when that is later (an ETA), so that we look again then."""
        if due is not None:
            self.note_due(due)
        self._wake.set()

    def note_due(self, due: float) -> None:
        """A task falls due at ``due`` (the queue's clock): claim then, not at the next
        idle poll, which may be ``_IDLE_BACKOFF`` poll intervals away."""
        if not math.isfinite(due):  # NaN compares false: kept, no real time would replace it
            return
        if self._next_due is None or due < self._next_due:
            self._next_due = due

    def request_stop(self) -> None:
        """Stop claiming; ``process_tasks`` returns once what it holds is settled."""
        self._stopping = True
        self._wake.set()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: no new claims, running tasks get ``grace`` seconds, then are killed
        and returned to the queue uncharged; claimed tasks that never started go back too."""
        self.request_stop()
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None
        grace = self.settings.shutdown_grace if grace is None else grace
        self.pool.withdraw_waiting("the supervisor is stopping")  # they return uncharged
        await self._release_ready()
        if self._jobs:
            _, pending = await asyncio.wait(self._jobs, timeout=grace)
            if pending:
                self.pool.abort_all(f"supervisor shut down after a {grace:g}s grace")
                await asyncio.wait(self._jobs)
        await self._drained()
        for service in self._services:
            service.cancel()
        await asyncio.gather(*self._services, return_exceptions=True)
        await self.pool.close()
        if self._listener is not None:
            self._listener.stop()
        if self._clients is not None:
            self._clients.close()
        with contextlib.suppress(Exception):
            await self.queue.storage.remove_worker(self.worker_id)
        self.events.worker(EventType.WORKER_OFFLINE, **self._counters())
        logger.bind(action="worker_offline", worker=self.worker_id).info(
            "supervisor {} offline after {} attempts", self.worker_id, self.processed
        )

    # -- the claim loop ----------------------------------------------------------------------

    async def process_tasks(
        self, limit: int | None = None, duration: float | None = None, burst: bool = False
    ) -> int:
        """Claim and run tasks until ``limit`` are settled, ``duration`` seconds pass, the
        queue is drained (``burst``), or :meth:`request_stop`; returns the settled count."""
        loop = asyncio.get_running_loop()
        deadline = None if duration is None else loop.time() + duration
        first = self.processed
        self._claim_cap = None if limit is None else self._claimed_count + limit
        self._pulling = True
        try:
            await self._pull(limit, deadline, burst, first)
        finally:
            self._pulling = False
        await self._carried.wait()  # its tasks are released with the rest
        await self._release_ready()
        if self._fatal is not None:
            # The caller's stop() (or the CLI's) then ends the stopped tasks; we say why.
            raise self._fatal
        if not self._stopping:  # on a stop request, stop() owns the grace period
            await self._drained()
        return self.processed - first

    async def _pull(
        self, limit: int | None, deadline: float | None, burst: bool, first: int
    ) -> None:
        """process_tasks' loop: claim and dispatch until it should stop."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if limit is not None and self.processed - first >= limit:
                break
            if deadline is not None and loop.time() >= deadline:
                break
            self._dispatch()
            try:
                got = await self._claim()
                self._empty_polls = 0 if got or self._held else self._empty_polls + 1
                drained = burst and not self._held and await self._drained_store()
            except Exception as exc:  # a locked or failing store: keep running tasks, retry
                logger.bind(action="claim_failed").warning("cannot claim tasks: {}", exc)
                await asyncio.sleep(min(1.0, self.settings.poll_interval * 10))
                continue
            self._dispatch()
            if drained:
                break
            await self._sleep(deadline)

    async def _claim(self) -> int:
        want = self._claim_size()
        if want <= 0:
            return 0
        began = time.monotonic()
        self._asked += want
        try:
            tasks = await self.queue.claim(
                self.settings.queues, want, self.worker_id, self.settings.lease_ttl,
                *self._claim_bounds(want),
            )  # fmt: skip
        except Exception as exc:
            self._store_failed(exc)
            raise
        finally:
            self._asked -= want
        self._store_ok()
        self._take_claimed(tasks, began, want)
        if not tasks and not self._held:
            await self._learn_next_due()
        return len(tasks)

    def _claim_bounds(self, want: int) -> tuple[int, int]:
        """A claim's ``max_bytes`` and ``min_tasks``. The Pacer sizes claims by the
        payloads seen so far; the store's byte bound holds when those change at once
        (small tasks, then a burst of large ones). Idle workers take their tasks at once,
        whatever the size: the bound is on the rest."""
        idle = max(1, self.pool.idle() - len(self._ready))
        return max(0, self._pacer.BUFFER_BYTES - self._waiting_bytes()), min(idle, want)

    def _take_claimed(self, tasks: list[Task], began: float, asked: int) -> None:
        """Hold the tasks of a claim for ``asked`` tasks requested at monotonic time
        ``began``."""
        self._pacer.claimed(time.monotonic() - began)
        self._claimed_count += len(tasks)
        self._more_queued = len(tasks) >= asked
        if not tasks:
            return
        crash_point("after_claim_commit")
        self._pacer.sized(sum(len(t.payload) for t in tasks) / len(tasks))
        for task in tasks:
            self._held[task.id] = task
            self._confirmed[task.id] = began
            self._ready.append(task)
        self._idle.clear()
        self._claimed.set()
        self.loop_lag.hurry()
        # A recompute during this claim's await may have passed ``began``.
        self._confirmed_floor = min(self._confirmed_floor, began)

    async def _learn_next_due(self) -> None:
        # Idle. Tasks due later that no wake-up announced (stored before we started, the
        # later ETAs of a batch, a producer on another host) would otherwise wait for the
        # backed-off poll: ask the store when the first of them falls due, and sleep
        # until then at most. One index seek per queue and priority, once per idle poll.
        try:
            due = await self.queue.next_due(self.settings.queues)
        except Exception as exc:  # the next idle poll asks again
            logger.bind(action="next_due_failed").debug("cannot read the next due time: {}", exc)
            return
        if due is not None:
            self.note_due(due)

    def _waiting_bytes(self) -> int:
        """Payload bytes of the tasks held here that no worker runs: claimed and waiting,
        sent ahead, or finished and not settled yet."""
        running = self.pool.running()
        return sum(len(t.payload) for task_id, t in self._held.items() if task_id not in running)

    def _claim_size(self, settling: int = 0) -> int:
        """How many tasks to claim now (0: none). ``settling``: for a claim carried in
        the transaction that stores the outcomes of that many held tasks, which then no
        longer count."""
        # Refill in batches: claim only once the buffer is down to one task per worker,
        # then up to procs + prefetch in flight. One claim (one commit) then feeds many
        # tasks, and a freed worker takes its next task from the buffer without waiting
        # for the database. A claim carried by outcomes costs no commit of its own, so it
        # comes as soon as half the target is free, whatever the buffer holds.
        procs = self.settings.procs
        if self._storing_failed:
            # Outcomes are waiting for a store that refuses writes (full, read-only): new
            # work would only pile up more of them. The settle retries are the probe.
            return 0
        if not settling and len(self._ready) >= procs and self.pool.idle() == 0:
            return 0
        if self.pool.healthy() == 0:
            # Every worker is being (re)started, perhaps failing to: tasks claimed now
            # would only sit under our lease, or churn through lease expiry.
            return 0
        # Every held task counts, outcomes still being stored included: otherwise a slow
        # store lets the supervisor run far ahead of what it has recorded, and a crash
        # would re-run all of it.
        target = procs + self._pacer.prefetch()
        want = target - (len(self._held) + self._asked - settling)
        if self._claim_cap is not None:
            want = min(want, self._claim_cap - self._claimed_count - self._asked)
        if want < (target + 1) // 2 and (settling or self.pool.idle() == 0):
            # Refill by halves while every worker has work: each claim costs the
            # supervisor a commit and several wake-ups (about as much CPU as a 1 ms task
            # on a small VM), which tasks of a few milliseconds should not pay one each.
            # (An idle worker gets its task from a claim of its own, not from outcomes.)
            return 0
        return max(want, 0)

    def _dispatch(self) -> None:
        # Hand claimed tasks to idle workers, never waiting for one; never one whose lease
        # we can no longer vouch for (a claim that waited long, a stall): it goes back.
        self._abandon_unconfirmed()
        while not self._stopping and self._ready:
            task = self._next_ready()
            if task is None:
                return
            # Short tasks also go to a busy worker, to start the moment its task ends.
            ahead = self._pacer.ahead()
            worker = self.pool.try_acquire()
            if worker is None and ahead:
                worker = self.pool.try_acquire_ahead(ahead, self._pacer.stalled_after())
                if worker is not None and self._stall_check is None:
                    self._watch_stalls()
            if worker is None:
                return
            self._ready.remove(task)
            self.pool.reserve(worker, task)  # counts as busy from now, not when the job runs
            job = asyncio.create_task(self._run_one(worker, task), name=f"run-{task.id}")
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    def _watch_stalls(self) -> None:
        self._stall_check = asyncio.get_running_loop().call_later(
            self._pacer.stalled_after() / 2, self._take_back_stalled
        )

    def _take_back_stalled(self) -> None:
        # A task sent ahead waits behind its worker's task. When that one runs far longer
        # than tasks usually do (it hangs, or waits on something), those behind it are
        # asked back, to run on other workers instead of waiting for it; this check
        # repeats while tasks are sent ahead.
        self._stall_check = None
        if not self._stopping and self.pool.take_back_stalled(self._pacer.stalled_after()):
            self._watch_stalls()

    def _next_ready(self) -> Task | None:
        """The first claimed task that may start: never an attempt while an older one of
        the same task is still dying here (its lease lapsed while we stalled, and we
        claimed the task again); that one waits."""
        head = self._ready[0]  # nearly always the one: no search
        if not self.pool.is_held(head.id):
            return head
        return next((t for t in self._ready if not self.pool.is_held(t.id)), None)

    async def _run_one(self, worker: WorkerProcess, task: Task) -> None:
        def started() -> None:
            # Context as keyword arguments, not bind(): a debug line costs no new logger
            # per task when nobody logs at that level.
            logger.debug(
                "task {} ({}) attempt {} started", task.id, task.func_name, task.attempts,
                task_id=task.id, action="task_started", pid=worker.pid,
            )  # fmt: skip
            self.events.started(task, worker.pid)

        outcome = await self.pool.run(worker, task, started)
        if outcome.kind is OutcomeKind.NOT_STARTED:
            # Sent ahead to a worker that ended first: it never ran. Still ours (claimed,
            # leased): another worker takes it, or, when stopping, it goes back uncharged.
            if self._stopping:
                outcome = Outcome(OutcomeKind.ABORTED)
            else:
                self._ready.appendleft(task)
                self._dispatch()
                return
        crash_point("after_result_received")
        self._pacer.ran(outcome.duration)
        self._in_hand[task.id] = task
        self._outcomes.put_nowait((task, outcome))
        self._dispatch()  # the freed worker takes the next claimed task at once
        self._wake.set()

    async def _sleep(self, deadline: float | None) -> None:
        # Idle, the poll only catches what no wake-up announces (an ETA or a retry falling
        # due, a producer without the wake folder): it backs off from poll_interval to
        # _IDLE_BACKOFF times that, which took an idle supervisor from 2% of a core to
        # under 1%; producers on this host still wake it at once.
        backoff = min(2 ** max(self._empty_polls - 1, 0), _IDLE_BACKOFF)
        timeout = self.settings.poll_interval * backoff
        if self._ready or self._jobs:
            timeout = max(timeout, 0.5)  # busy: completions wake us, no need to poll hard
        if self._next_due is not None:
            until_due = self._next_due - self.queue.clock()
            if until_due <= 0:  # fell due since the last claim began: claim once more
                self._next_due = None
            # A millisecond late: a task is claimable once its ETA is not after the claim's
            # time, and the loop's timers may fire up to a millisecond early.
            timeout = min(timeout, max(until_due, 0.0) + _DUE_SLACK)
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - asyncio.get_running_loop().time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _drained_store(self) -> bool:
        stats = await self.queue.stats(self.settings.queues)
        return stats.due == 0 and stats.retrying == 0 and stats.running == 0

    async def _drained(self) -> None:
        await self._idle.wait()

    async def _release_ready(self) -> None:
        tasks = list(self._ready)
        self._ready.clear()
        if tasks:
            await self._settle([(t, self.queue.release_settlement(t)) for t in tasks])

    # -- recording outcomes ------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while True:
            batch = [await self._outcomes.get()]
            while not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            pairs = [(task, self.queue.settlement(task, outcome)) for task, outcome in batch]
            durations = {task.id: outcome.duration for task, outcome in batch}
            if any(s.status is TaskStatus.PENDING and not s.uncharge for _, s in pairs):
                crash_point("in_retry_scheduling")
            # Shielded: cancelling the recorder must not drop outcomes half-written.
            await asyncio.shield(self._settle(pairs, durations))
            for task, outcome in batch:
                _log_outcome(task, outcome)

    async def _settle(
        self, pairs: list[tuple[Task, Settlement]], durations: dict[str, float] | None = None
    ) -> None:
        applied = await self._store_outcomes(pairs)
        if applied is None:  # given up on a read-only store
            self._drop_outcomes(pairs)
            return
        crash_point("after_settle_commit")
        if self._clients is not None:  # first: a client waiting on a result reads it now
            self._clients.poke()
        for (task, settlement), ok in zip(pairs, applied, strict=True):
            self._let_go(task)
            if not ok:
                logger.bind(task_id=task.id, action="settle_fenced").warning(
                    "task {}: lease lost before its outcome was stored; outcome dropped", task.id
                )
            else:
                self.processed += not settlement.uncharge
                self.events.settled(task, settlement, (durations or {}).get(task.id))
                self._note_follow_up(settlement)
            for callback in self.on_settled:
                callback(task, settlement)
        if not self._held:
            self._idle.set()
        self._wake.set()  # a limit may be reached, or more may be claimed

    async def _store_outcomes(self, pairs: list[tuple[Task, Settlement]]) -> list[bool] | None:
        """Settle ``pairs``, retrying with backoff while the store fails (locked, full,
        read-only); which were applied, or None once we gave up on a read-only store."""
        delay = 0.1
        # Never slower than the renewals: a store back from an outage (space freed) then
        # gets these outcomes within a renewal period, while our leases still hold them.
        longest = min(5.0, self.settings.lease_ttl / 4)
        while True:
            try:
                applied = await self._settle_and_claim(pairs)
            except Exception as exc:  # storage trouble: keep the outcomes and retry
                self._storing_failed = True
                self._store_failed(exc)
                if self._fatal is not None:  # given up on the store: this was the last try
                    return None
                logger.bind(action="settle_retry").warning("cannot record outcomes: {}", exc)
                if delay == 0.1:  # report once per batch, not once per retry
                    for task, _ in pairs:
                        self.events.storing_failed(task, str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
                continue
            if self._storing_failed:
                self._storing_failed = False
                logger.bind(action="settle_recovered").warning(
                    "the store takes writes again: {} waiting outcome(s) stored", len(pairs)
                )
            self._store_ok()
            return applied

    async def _settle_and_claim(self, pairs: list[tuple[Task, Settlement]]) -> list[bool]:
        """Store the outcomes of ``pairs``; which were applied. Where the store can
        (``settle_and_claim``: SQLite, PostgreSQL), the claim that storing them would make
        room for goes in the same transaction. SQLite's one thread runs one transaction at
        a time, and in a drain of short tasks each claim waited behind a settle while the
        workers ran out of tasks (20,000-task no-op drains against separate transactions:
        24 alternating pairs, 18 faster, 4-6% more tasks/s)."""
        settlements = [s for _, s in pairs]
        carry = (
            self.queue.carries_claims and self._pulling and self._more_queued and not self._stopping
        )
        want = self._claim_size(settling=len(pairs)) if carry else 0
        if want <= 0:
            return await self.queue.storage.settle(settlements)
        began = time.monotonic()
        self._asked += want
        self._carried.clear()
        try:
            applied, tasks = await self.queue.settle_and_claim(
                settlements, self.settings.queues, want, self.worker_id,
                self.settings.lease_ttl, *self._claim_bounds(want),
            )  # fmt: skip
        finally:
            self._asked -= want
            self._carried.set()
        self._take_claimed(tasks, began, want)
        self._dispatch()  # idle workers start now, not after the outcomes' bookkeeping
        return applied

    def _note_follow_up(self, settlement: Settlement) -> None:
        # A retry after its backoff, or an interval task's next run: due at a known time.
        if settlement.status is TaskStatus.PENDING and settlement.eta is not None:
            self.note_due(settlement.eta)
        if settlement.follow_up is not None:
            self.note_due(settlement.follow_up.eta)

    def _let_go(self, task: Task) -> None:
        # Forget this attempt once settled, but only this one: the same task may have been
        # claimed again since (after a lapsed lease), and that newer claim stays held.
        if self._held.get(task.id) is task:
            del self._held[task.id]
            self._confirmed.pop(task.id, None)
        if self._in_hand.get(task.id) is task:
            del self._in_hand[task.id]

    def _drop_outcomes(self, pairs: list[tuple[Task, Settlement]]) -> None:
        # We gave up on a read-only store. Nothing is lost: these tasks are still RUNNING
        # under our leases in the store, so once those lapse the next supervisor runs
        # them again (as it would after a crash of this one).
        logger.bind(action="outcomes_dropped").error(
            "{} outcome(s) not stored (the store is read-only); those tasks will run again",
            len(pairs),
        )
        for task, _ in pairs:
            self._let_go(task)
        if not self._held:
            self._idle.set()

    def _workers_failed(self, exc: WorkerStartError) -> None:
        """The pool gave up starting workers: stop, and make process_tasks raise."""
        if self._fatal is None:
            self._fatal = exc
            self.request_stop()

    def _store_ok(self) -> None:
        # A write went through: whatever read-only spell there was is over.
        self._read_only.cleared()

    def _store_failed(self, exc: BaseException) -> None:
        """Count a failed write towards ``read_only_timeout``; past it, give up: stop the
        running tasks before their leases lapse and make ``process_tasks`` raise."""
        if self._fatal is not None:
            return
        if not isinstance(exc, StorageReadOnlyError):
            self._read_only.cleared()  # another trouble (full, locked): not read-only time
            return
        lasted = self._read_only.failed(time.monotonic())
        if lasted is None:
            return
        self._fatal = StorageReadOnlyError(
            f"the store has been read-only for {lasted:.1f}s (read_only_timeout "
            f"{self.settings.read_only_timeout:g}s); stopped its tasks, which will run "
            f"again: {exc}"
        )
        logger.bind(action="store_read_only").error("{}", self._fatal)
        # Children first: their leases cannot be renewed, and the next supervisor may start
        # these tasks once they lapse. Claimed, unstarted ones simply lapse too.
        self.pool.abort_all("the store is read-only")
        for task in self._ready:  # claimed, never started: their leases just lapse
            self._let_go(task)
        self._ready.clear()
        if not self._held:
            self._idle.set()
        self.request_stop()

    # -- leases, recovery, heartbeats --------------------------------------------------------

    async def _lease_loop(self) -> None:
        period = self.settings.lease_ttl / 4
        while True:
            await asyncio.sleep(period)
            # First our own clock: after a freeze (SIGSTOP, a VM stall) a lease may have
            # lapsed and been taken over; a renewal now could still succeed in the moment
            # before the new holder's write, so stop those tasks rather than renew them.
            self._abandon_unconfirmed()
            renewal = asyncio.create_task(self._renew_leases(), name="omniq-renewal")
            try:
                # A renewal may wait long behind another process's lock while our leases
                # keep ageing: keep judging them meanwhile, so tasks stop before expiry.
                while not renewal.done():
                    await asyncio.wait({renewal}, timeout=period / 5)
                    self._abandon_unconfirmed()
            finally:
                if not renewal.done():  # we are being cancelled: so is the renewal
                    renewal.cancel()
                    await asyncio.wait({renewal})
            if (exc := renewal.exception()) is not None:
                logger.bind(action="service_error").warning("lease renewal failed: {}", exc)
                self._store_failed(exc)
                self._abandon_unconfirmed()

    async def _renew_leases(self) -> None:
        leases = {tid: t.lease_token or "" for tid, t in self._held.items()}
        if not leases:
            return
        began = time.monotonic()
        until = self.queue.clock() + self.settings.lease_ttl
        lost = await self.queue.storage.extend_leases(leases, until)
        self._store_ok()
        for task_id in leases:
            if task_id in self._confirmed:
                self._confirmed[task_id] = began
        for task_id in lost & set(self._held):
            if self._held[task_id].lease_token != leases[task_id]:
                continue  # claimed again meanwhile: that newer lease was not renewed here
            # Another supervisor took it over: stop working on it (its write would be fenced),
            # at once: it may already run there, and a grace period only prolongs the overlap.
            logger.bind(task_id=task_id, action="lease_lost").warning("lease lost: {}", task_id)
            if not self.pool.abort(task_id, "lease lost to another supervisor", grace=0):
                self._ready = collections.deque(t for t in self._ready if t.id != task_id)
                self._held.pop(task_id, None)
                self._confirmed.pop(task_id, None)
        if not self._held:
            self._idle.set()

    async def _notification_loop(self) -> None:
        # Stores that can push (PostgreSQL LISTEN/NOTIFY) wake the claim loop the moment
        # work arrives from any host; the others are polled every poll_interval.
        store = self.queue.storage
        if not isinstance(store, AnnouncesWork):
            return
        while True:
            try:
                if await store.wait_for_work(5.0):
                    self.wake(store.notified_due())
            except Exception as exc:  # never spin on a failing store
                logger.bind(action="service_error").warning("work notifications: {}", exc)
                await asyncio.sleep(1.0)

    def _abandon_unconfirmed(self) -> None:
        # While the store is unreachable our leases run out, and then another supervisor
        # may start the same tasks: stop them here first, so no task ever runs twice at
        # once. (Their settlements will be fenced or will requeue them, uncharged.)
        margin = self.settings.lease_ttl * _LEASE_SAFETY
        now = time.monotonic()
        # This runs before every dispatch, over up to procs + prefetch tasks: the floor
        # says at once that none needs looking at; only when it is old is the real oldest
        # confirmation computed (it is newer once old tasks are settled), about once per
        # margin, or at every dispatch while some lease really is unconfirmed.
        if self._confirmed and now - self._confirmed_floor >= margin:
            self._confirmed_floor = min(self._confirmed.values())
            if now - self._confirmed_floor >= margin:
                self._abandon_older_than(now, margin)
                self._confirmed_floor = min(self._confirmed.values(), default=math.inf)
        if not self._held:
            self._idle.set()

    def _abandon_older_than(self, now: float, margin: float) -> None:
        for task_id, confirmed in list(self._confirmed.items()):
            if now - confirmed < margin:
                continue
            logger.bind(task_id=task_id, action="lease_expiring").warning(
                "task {}: lease not renewed for {:.1f}s (store unreachable or this process "
                "stalled); stopping it",
                task_id,
                now - confirmed,
            )
            # Past the whole lease (we were frozen), another supervisor may run it already:
            # kill at once. Before that, there is time for the usual SIGTERM and grace.
            grace = 0.0 if now - confirmed >= self.settings.lease_ttl else None
            if not self.pool.abort(task_id, "its lease could not be renewed", grace=grace):
                if any(t.id == task_id for t in self._ready):
                    # Never started: give it back now (fenced by its token, uncharged)
                    # instead of leaving it to lease expiry and a crash charge.
                    self._drop(task_id)
                elif task_id not in self._in_hand:
                    self._held.pop(task_id, None)
                # else: finished, its outcome waits for the store (disk full, read-only).
                # Nothing runs, so nothing can overlap; it stays held so that the lease
                # keeper goes on renewing it and our own recovery scan never re-queues it.
                # Had it been taken over, the renewal says so and the write is fenced.
            self._confirmed.pop(task_id, None)

    async def _recovery_loop(self) -> None:
        period = min(self.settings.lease_ttl / 4, 5.0)
        while True:
            await _guard("lease recovery", self.recover_expired)
            await asyncio.sleep(self._next_scan(period))

    def _next_scan(self, period: float) -> float:
        # Scan again when the next unchanged lease comes of age if that is sooner than the
        # period: a dead holder's tasks then wait lease_ttl after we saw its last renewal,
        # not lease_ttl plus up to a period. Leases already of age were judged by the last
        # scan (a failed recovery is retried at the period, never in a hot loop).
        now, ttl = time.monotonic(), self.settings.lease_ttl
        coming = [since + ttl - now for _, since in self._sightings.values() if since + ttl > now]
        return min([period, *(delay + 0.001 for delay in coming)])

    async def recover_expired(self) -> int:
        """Return tasks whose holder stopped renewing to the queue (or fail them when their
        retry budget is spent). Returns how many were recovered.

        Who judges a lease dead: a store with one clock for everyone (PostgreSQL's
        ``now()``) says so through ``expired``; for the others (SQLite, file, memory) this
        supervisor does, by observation on its own monotonic clock (:meth:`_dead_leases`).
        """
        storage = self.queue.storage
        if judges_lease_expiry(storage):
            expired = await storage.expired(self.queue.clock(), _RECOVERY_BATCH)
        else:
            expired = await self._dead_leases()
        mine = [t for t in expired if t.id not in self._held]
        if not mine:
            return 0
        settlements = [self.queue.lost_settlement(t) for t in mine]
        applied = await self.queue.storage.settle(settlements)
        for task, settlement, ok in zip(mine, settlements, applied, strict=True):
            if ok:
                self.events.settled(task, settlement)
        for task in mine:
            logger.bind(task_id=task.id, action="task_recovered").warning(
                "task {} recovered from {} (lease expired)", task.id, task.worker_id
            )
        return sum(applied)

    async def _dead_leases(self) -> list[Task]:
        """RUNNING tasks of other holders whose lease (token and lease end) has not changed
        for ``lease_ttl`` of this process's monotonic clock, called once per recovery scan.

        The stored lease end is the holder's wall-clock time and is never compared with
        ours. That comparison was the old rule, and no use of it is safe as a fast path:
        whatever margin is chosen, a wall-clock jump larger than it (forward here, or
        backward at the holder) makes a live lease look expired, and the takeover runs the
        task twice at once. What it would save is one ``lease_ttl`` after a restart
        following a long outage; the holder's children need that long to be gone anyway.
        Every renewal changes the lease end (the stores make it strictly increase), so an
        unchanged lease means no renewal reached the store for that long; the holder itself
        stops its tasks at ``_LEASE_SAFETY`` of the ttl by its own clock (_lease_loop).
        All supervisors of a store are assumed to use the same ``lease_ttl``.
        """
        before = time.monotonic()
        leases: list[Lease] = await self.queue.storage.running_leases()
        after = time.monotonic()
        sightings: dict[str, tuple[tuple[str, float | None], float]] = {}
        dead: dict[str, Lease] = {}
        for lease in leases:
            if lease.task_id in self._held:
                continue
            state = (lease.token, lease.until)
            previous = self._sightings.get(lease.task_id)
            # First seen, or changed: its clock starts now (after the read, the late end).
            since = previous[1] if previous is not None and previous[0] == state else after
            sightings[lease.task_id] = (state, since)
            # Judged with the time before the read (the early end): never too soon.
            if before - since >= self.settings.lease_ttl:
                dead[lease.task_id] = lease
        self._sightings = sightings  # forgets tasks that are no longer RUNNING
        if not dead:
            return []
        tasks = await self.queue.storage.get_many(list(dead)[:_RECOVERY_BATCH])
        # Read again: a renewal or a settlement since the scan means the holder is alive.
        return [
            t
            for t in tasks
            if t.status is TaskStatus.RUNNING
            and (t.lease_token or "", t.lease_until) == (dead[t.id].token, dead[t.id].until)
        ]

    def _drop(self, task_id: str) -> None:
        # A claimed task cancelled before it started: out of the buffer, and settled (the
        # store turns the release into CANCELLED because the cancel flag is set).
        task = next((t for t in self._ready if t.id == task_id), None)
        if task is not None:
            self._ready.remove(task)
            self._in_hand[task.id] = task
            self._outcomes.put_nowait((task, Outcome(OutcomeKind.ABORTED)))

    async def _watch_loop(self) -> None:
        while True:
            if not self._held:  # nothing to watch: sleep until a claim, not 10 times a second
                self._claimed.clear()
                await self._claimed.wait()
            await asyncio.sleep(WATCH_INTERVAL)
            await _guard("task watch", self.watch.step)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval)
            await _guard("purge", self.purge_expired)

    async def purge_expired(self) -> int:
        """Delete finished tasks past their retention, in small batches (each a short
        transaction, so producers and claims are never blocked for long)."""
        total = 0
        while True:
            removed = await self.queue.storage.purge_expired(self.queue.clock(), _PURGE_BATCH)
            total += removed
            if removed < _PURGE_BATCH:
                break
            await asyncio.sleep(0)
        if total:
            logger.bind(action="purged").info("purged {} expired task records", total)
        recorder, ttl = self.events.recorder, self.settings.event_ttl
        if recorder is not None and ttl is not None:
            await recorder.storage.purge(self.queue.clock() - ttl)
        return total

    async def _schedule_loop(self) -> None:
        while True:
            await _guard("cron schedules", self.fire_schedules)
            await asyncio.sleep(SCHEDULE_INTERVAL)

    async def fire_schedules(self) -> list[str]:
        """Create the tasks of cron schedules that are due; returns their ids."""
        fired = await self.queue.storage.fire_schedules(
            self.queue.clock(), lambda s, now: next_cron_time(s.cron, s.tz, now)
        )
        if fired:
            self.events.enqueued_by_schedule(fired)
            logger.bind(action="schedules_fired").info("cron: created tasks {}", fired)
            self.wake()
        return fired

    async def _heartbeat_loop(self) -> None:
        # The heartbeat is also the supervisor's one write that happens when it is idle:
        # it keeps the read-only clock going with nothing held, and its commits let
        # SQLite's automatic checkpoint run once a long reader has gone, which cuts the
        # WAL back to journal_size_limit (row 21); no checkpoint of our own is needed.
        while True:
            try:
                await self._beat()
            except Exception as exc:
                logger.bind(action="service_error").warning("heartbeat failed: {}", exc)
                self._store_failed(exc)
            else:
                self._store_ok()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _counters(self) -> dict[str, Any]:
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": list(self.settings.queues),
            "procs": self.settings.procs,
            "active": self.pool.busy(),
            # "degraded": fewer workers up than procs (some are being started again).
            "health": "ok" if self.pool.healthy() >= self.settings.procs else "degraded",
            "start_failures": self.pool.start_failures,
            "processed": self.processed,
            "uptime": round(time.time() - self._started_at, 3),
        }

    async def _beat(self) -> None:
        # The loop lag is read (and reset) here only, not in _counters, which the online
        # and offline events also call: the worst lag since the previous heartbeat, so a
        # stall between two beats shows in the next one instead of being averaged away.
        lag = round(self.loop_lag.take(), 3)
        details = {**self._counters(), "loop_lag": lag, "children": self._children()}
        self.events.worker(EventType.WORKER_HEARTBEAT, **details)
        await self.queue.storage.heartbeat(
            WorkerInfo(
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                self.settings.procs,
                self.settings.queues,
                self._started_at,
                time.time(),
                details,
            )
        )

    def _children(self) -> list[dict[str, Any]]:
        # What each busy worker process is doing, for stats, `top` and heartbeat events.
        children = []
        for task_id, worker in self.pool.running().items():
            task = self._held.get(task_id)
            children.append(
                {
                    "pid": worker.pid,
                    "task_id": task_id,
                    "started_at": task.started_at if task is not None else None,
                    "rss": tree_rss(worker.pid),
                    "cpu_seconds": cpu_seconds(worker.pid),
                }
            )
        return children


_IDLE_BACKOFF = 8  # the idle poll slows to at most this many poll_intervals
_DUE_SLACK = 0.001  # seconds after a known ETA that the supervisor claims


class ReadOnlyWatch:
    """How long the store has refused writes for being read-only, without a write going
    through in between; :meth:`failed` says when that passes ``timeout`` seconds.

    :param timeout: the ``read_only_timeout`` setting.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.since: float | None = None  # monotonic time of the spell's first failure

    def failed(self, now: float) -> float | None:
        """A write failed as read-only at ``now``; the spell's length once it reaches the
        timeout, else None."""
        if self.since is None:
            self.since = now
        lasted = now - self.since
        return lasted if lasted >= self.timeout else None

    def cleared(self) -> None:
        """A write went through: the spell is over."""
        self.since = None


class Pacer:
    """Decides how many tasks to claim beyond the workers (the prefetch).

    Enough that the workers never wait for a claim: a claim takes ``c`` seconds (waiting
    behind an outcome's fsync in the store's thread included) and a task ``t``, so
    ``procs * c / t`` tasks are consumed meanwhile (doubled for margin); and at least
    ``BUFFER_SECONDS`` of work, because one slow commit in the store's thread holds up the
    next claim. Tasks sent ahead come on top: they wait in the workers themselves, not in
    the buffer. Long tasks get one per worker, which keeps claimed-but-waiting tasks few
    and lets other supervisors share the work; no-op tasks get up to ``limit``.
    Both durations are exponential moving averages. It also says how many tasks to send
    each worker ahead of the one it runs (:meth:`ahead`). Large arguments bound both: a
    claimed task's payload stays in the supervisor's memory until a worker takes it, so
    beyond one task per worker they hold at most ``BUFFER_BYTES`` of payloads.
    """

    BUFFER_SECONDS = 0.02
    # Tasks sent ahead keep a worker busy while the supervisor is busy elsewhere. One is
    # enough when a task outlasts the supervisor's turnaround; tasks far shorter than a
    # millisecond get up to MAX_AHEAD, so that each wake-up of a worker runs several
    # (20,000-task no-op drains on 2 processes, four alternating pairs: 1 ahead 9.1-9.8k
    # results/s, 3 ahead 10.3-11.0k; 7 ahead gained nothing more).
    AHEAD_SECONDS = 0.001
    MAX_AHEAD = 3
    # A task that runs this much longer than the average is taken to be stuck: the tasks
    # sent ahead of it go elsewhere (stalled_after). Ordinary spread in task times stays
    # under it, so short tasks are not shuffled between workers for nothing.
    STALL_FACTOR = 10.0
    STALL_MIN = 0.1
    # Without it, 20 MiB arguments of quick tasks were claimed and sent ahead by the
    # dozen: a supervisor draining thirty of them peaked at 500 MiB, 1 GiB at 100 MiB.
    BUFFER_BYTES = 64 * 2**20

    def __init__(self, procs: int, limit: int, ahead_below: float = 0.0) -> None:
        self.procs = procs
        self.limit = limit
        self.ahead_below = ahead_below
        self._claim_s: float | None = None
        self._task_s: float | None = None
        self._payload_b: float | None = None

    def claimed(self, seconds: float) -> None:
        """Record how long a claim took."""
        self._claim_s = _ewma(self._claim_s, seconds)

    def ran(self, seconds: float) -> None:
        """Record how long a task took."""
        self._task_s = _ewma(self._task_s, seconds)

    def sized(self, payload_bytes: float) -> None:
        """Record the mean payload size of a claim's tasks."""
        self._payload_b = _ewma(self._payload_b, payload_bytes)

    def room(self) -> int:
        """Tasks that ``BUFFER_BYTES`` of payloads hold, at the mean size measured."""
        if not self._payload_b:
            return self.limit + self.procs * self.MAX_AHEAD  # nothing measured: no bound
        return int(self.BUFFER_BYTES // self._payload_b)

    def send_ahead(self) -> bool:
        """Whether tasks are short enough that each worker should be sent its next task
        while it runs one: the round trip it saves matters, and the wait a task sent
        ahead may have behind a slower one stays small."""
        return self._task_s is not None and self._task_s < self.ahead_below

    def ahead(self) -> int:
        """Tasks to send each busy worker beyond the one it runs: none unless tasks are
        short (:meth:`send_ahead`), then enough for ``AHEAD_SECONDS`` of work, from 1 to
        ``MAX_AHEAD``. A task sent ahead waits at most that many short tasks."""
        if not self.send_ahead():
            return 0
        task_s = max(self._task_s or 0.0, 1e-6)
        wanted = max(1, min(self.MAX_AHEAD, math.ceil(self.AHEAD_SECONDS / task_s)))
        return min(wanted, self.room() // self.procs)

    def stalled_after(self) -> float:
        """Seconds a task may run before the tasks sent ahead of its worker are asked
        back to run elsewhere: ``STALL_FACTOR`` times the average task, at least
        ``STALL_MIN``."""
        return max(self.STALL_MIN, self.STALL_FACTOR * (self._task_s or 0.0))

    def prefetch(self) -> int:
        """Tasks to hold beyond one per worker."""
        if self._claim_s is None or self._task_s is None:
            return min(self.limit, self.procs, self.room())  # nothing measured: be modest
        task_s = max(self._task_s, 1e-6)
        needed = max(2 * self._claim_s, self.BUFFER_SECONDS) * self.procs / task_s
        ahead = self.procs * self.ahead()
        return min(self.limit, self.room(), max(self.procs, math.ceil(needed)) + ahead)


def _ewma(previous: float | None, sample: float, weight: float = 0.2) -> float:
    return sample if previous is None else previous + weight * (sample - previous)


async def _guard(what: str, step: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    # A background service must survive a failing step (a locked or full database).
    try:
        await step()
    except Exception as exc:
        logger.bind(action="service_error").warning("{} failed: {}", what, exc)


def _log_outcome(task: Task, outcome: Outcome) -> None:
    context = {"task_id": task.id, "action": f"task_{outcome.kind.value}", "pid": outcome.pid}
    if outcome.kind is OutcomeKind.SUCCEEDED:  # as in started(): no bind() per task
        logger.debug("task {} completed in {:.3f}s", task.id, outcome.duration, **context)
    else:
        logger.info("task {} {}: {}", task.id, outcome.kind.value, outcome.error, **context)
