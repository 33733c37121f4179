"""Our own process pool: a private channel per worker, deadlines as timers, kill the tree.

    ProcessPool ──_idle (asyncio.Queue of ready workers)──> acquire()
      │
      ├── WorkerProcess: Process + socketpair + pidfd
      │     _Channel:     frames from the child ──> inbox
      │     pidfd reader: the process exited    ──> inbox (None)
      │
      run(worker, task): RUN ──> await STARTED ──> deadline timer ──> await DONE | death
                         timer fires: SIGTERM the group, grace, SIGKILL the tree
      after a death or a kill: only that worker is replaced, in the background

Why not the stdlib pools: they share one result queue and its lock between workers, so a
killed worker can wedge or "break" the whole pool; and they cannot kill one task. Here a
worker's death is an ordinary per-task event.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing import spawn
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, cast

import psutil
from loguru import logger

from omniq_mp import child, ipc
from omniq_mp.crashpoints import crash_point
from omniq_mp.errors import WorkerStartError
from omniq_mp.inbox import Inbox
from omniq_mp.models import ErrorKind, Outcome, OutcomeKind, Task, TaskError
from omniq_mp.proctree import descendants, describe_exit, signal_tree
from omniq_mp.signing import Signer

__all__ = ["ProcessPool", "WorkerProcess", "WorkerStartError"]

_NAME_PREFIX = "omniq-worker"
_EXIT_WAIT = 5.0  # seconds to wait for a SIGKILLed process to be reaped
_SPAWN_AFTER = 0.001  # seconds a replacement waits for the work queued before it


class WorkerProcess:
    """One worker process and its private channel.

    ``inbox`` receives every frame the child sends, then ``None`` once the channel closes
    or the process exits; it is the only thing ``run`` waits on, so a timeout or a death
    can never leave a half-read frame behind.

    A worker holds the task it runs and, with short tasks, the next few (sent ahead,
    queued in the child). Their ``run`` calls read the inbox in turn.
    """

    def __init__(self, slot: int, process: BaseProcess, sock: socket.socket) -> None:
        self.slot = slot
        self.process = process
        self.pid: int = process.pid or 0
        self.sock = sock
        self.inbox: Inbox[ipc.Frame | None] = Inbox()
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.abort_error: TaskError | None = None  # what run() reports after an abort
        self.abort_kind = OutcomeKind.ABORTED
        self.retiring = False
        self.tasks_run = 0
        self.held: list[str] = []  # ids of the tasks sent to this worker, in order
        self.current: str | None = None  # the task that is running (STARTED, not DONE)
        self.started_at = 0.0  # monotonic time the current task started
        self._sent = 0  # RUN frames sent: each is numbered, so a SKIP names exactly one
        self._numbers: dict[str, int] = {}  # task id -> its RUN frame's number
        # Task id -> how run() ends for a task taken back: (error, kill grace, kind).
        self._withdrawn: dict[str, tuple[TaskError | None, float, OutcomeKind]] = {}
        # The tasks held read their frames in turn, in the order sent. Those waiting for
        # their turn are keyed by RUN number, so the child's SKIPPED (sent while another
        # task runs) can release one out of turn.
        self._turn_taken = False
        self._waiting: dict[int, asyncio.Future[bool]] = {}
        self._ended = False  # the inbox gave its final None
        self._channel: _Channel | None = None
        self._exit_fd = -1
        self._end_job: asyncio.Task[None] | None = None

    async def connect(self, ready_timeout: float) -> None:
        """Attach the channel and the exit watcher, then wait for the child's READY."""
        channel = _Channel(self.inbox)
        await asyncio.get_running_loop().create_unix_connection(lambda: channel, sock=self.sock)
        self._channel = channel
        self._watch_exit()
        try:
            frame = await asyncio.wait_for(self.inbox.get(), ready_timeout)
        except TimeoutError:
            timed_out, frame = True, None
        else:
            timed_out = False
        if frame is not None and frame.kind == ipc.READY:
            return
        await self.kill(0.1)
        if timed_out:
            why = (
                f"worker {self.pid} did not report ready within {ready_timeout:g}s "
                "(worker_init_timeout): its start-up or worker_init is still running"
            )
        elif frame is not None and frame.kind == ipc.INIT_FAILED:
            error = TaskError.from_dict(frame.meta["error"])
            why = f"worker_init failed in worker {self.pid}: {error.error_type}: {error.message}"
        else:
            why = f"worker {self.pid} did not start: {await self.exit_text()}"
        raise WorkerStartError(why)

    def _watch_exit(self) -> None:
        # A pidfd becomes readable when the process exits, whoever else holds its pipes
        # (a grandchild may inherit the socket and keep it open). Fallback: the sentinel.
        loop = asyncio.get_running_loop()
        try:
            self._exit_fd = os.pidfd_open(self.pid)
            fd = self._exit_fd
        except (AttributeError, OSError):
            fd = self.process.sentinel
        loop.add_reader(fd, self._on_exit, fd)

    def _on_exit(self, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        if not self.exited.done():
            self.exited.set_result(None)
        self._end_job = asyncio.create_task(self._end_inbox())

    async def _end_inbox(self) -> None:
        # The exit can be seen in the same loop turn as the child's last frame (a retiring
        # worker sends DONE, then exits): let the channel deliver that frame first. The
        # timeout covers a grandchild that inherited the socket and keeps it open.
        if self._channel is not None:
            await asyncio.wait({self._channel.closed}, timeout=0.1)
        self.inbox.put_nowait(None)

    @property
    def alive(self) -> bool:
        """False once the process has exited."""
        return not self.exited.done()

    # -- running a task ----------------------------------------------------------------------

    async def run(
        self, task: Task, kill_grace: float, on_started: Callable[[], None] | None = None
    ) -> Outcome:
        """Run one task to an outcome. Never raises for anything the task does.

        The pool has put the task in ``held`` (:meth:`ProcessPool.reserve`). Called while
        another task runs here, the task is sent at once and waits in the child: its
        outcome is then NOT_STARTED if the worker ends first, or, if it was taken back
        (:meth:`withdraw`) before it started, the withdrawal's outcome.
        """
        begin = time.monotonic()
        behind = self.held[0] != task.id
        self._sent += 1
        number = self._numbers[task.id] = self._sent
        try:
            if task.id in self._withdrawn:  # taken back before it was even sent
                return self._not_started(task, begin)
            meta = {"task_id": task.id, "attempt": task.attempts, "n": number}
            sent = self._send(ipc.encode(ipc.RUN, meta, task.payload))
            if sent:
                crash_point("after_send_to_child")
            if not await self._wait_turn(number):  # the child skipped it meanwhile
                return self._not_started(task, begin)
            try:
                return await self._take_turn(
                    task, number, kill_grace, on_started, begin, behind, sent
                )
            finally:
                self._pass_turn()
        finally:
            self.held.remove(task.id)
            self._numbers.pop(task.id, None)
            self._withdrawn.pop(task.id, None)
            if self.current == task.id:
                self.current = None

    async def _wait_turn(self, number: int) -> bool:
        """Wait until the tasks sent before this one have read their frames: True, its
        turn to read; False, the child skipped it (SKIPPED) while it waited."""
        if not self._turn_taken:  # the usual case: no future, no wait
            self._turn_taken = True
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[number] = waiter
        try:
            return await waiter
        except asyncio.CancelledError:
            if self._waiting.get(number) is waiter:
                del self._waiting[number]
            elif waiter.done() and not waiter.cancelled() and waiter.result():
                self._pass_turn()  # handed the turn as it was cancelled: hand it on
            raise

    def _pass_turn(self) -> None:
        for number, waiter in list(self._waiting.items()):  # in the order sent
            del self._waiting[number]
            if not waiter.done():
                waiter.set_result(True)
                return
        self._turn_taken = False

    async def _take_turn(
        self,
        task: Task,
        number: int,
        kill_grace: float,
        on_started: Callable[[], None] | None,
        begin: float,
        behind: bool,
        sent: bool,
    ) -> Outcome:
        frame = await self._next_frame(number) if sent else None  # unsent: as if it ended
        # A task sent ahead may find frames of the one before it that outran its timeout.
        while behind and frame is not None and frame.kind == ipc.DONE:
            frame = await self._next_frame(number)
        if frame is not None and frame.kind == ipc.SKIPPED:
            return self._not_started(task, begin)
        if frame is None or frame.kind != ipc.STARTED:
            return self._not_started(task, begin) if behind else await self._died(begin)
        self.current = task.id
        self.started_at = begin = time.monotonic()  # durations count from the start
        crash_point("after_started")
        if on_started is not None:
            on_started()
        late = self._withdrawn.pop(task.id, None)
        if late is not None and late[0] is not None:
            # Taken back too late: it had started, so it is stopped. (One only asked back
            # to run elsewhere, which has no error, simply runs here.)
            self.abort(late[0], late[1], late[2])
        # The timeout clock starts at the child's acknowledgement, on the monotonic clock.
        if not task.timeout:  # no clock to run: spared a timeout context per task
            frame = await self._next_frame(number)
        else:
            try:
                async with asyncio.timeout_at(asyncio.get_running_loop().time() + task.timeout):
                    frame = await self._next_frame(number)
            except TimeoutError:
                self.retiring = True  # nothing more is sent ahead to it during the kill's grace
                if len(self.held) > 1:  # tasks sent ahead die with this one: not their fault
                    self.abort_error = TaskError(
                        "Aborted",
                        f"its worker {self.pid} was killed when task {task.id} timed out",
                        kind=ErrorKind.LOST.value,
                    )
                signal_used = await self.kill(kill_grace)
                return self._timed_out(task, begin, signal_used)
        if frame is None or frame.kind != ipc.DONE:
            return await self._died(begin)
        return self._done(frame, begin)

    def withdraw(
        self, task_id: str, error: TaskError | None, grace: float, kind: OutcomeKind
    ) -> None:
        """Take back a task sent ahead that has not started: the child skips it and its
        ``run`` returns ``kind`` with ``error``. If it started meanwhile, it is stopped as
        :meth:`abort` would; without an ``error`` (only asked back), it runs on here."""
        self._withdrawn[task_id] = (error, grace, kind)
        if (number := self._numbers.get(task_id)) is not None:  # else: not even sent yet
            self._send(ipc.encode(ipc.SKIP, {"task_id": task_id, "n": number}))

    def take_back(self, task_id: str) -> None:
        """Ask for a task sent ahead back, to run elsewhere: its ``run`` returns
        NOT_STARTED as soon as the child confirms it skipped it. One that started
        meanwhile runs on here."""
        if task_id not in self._withdrawn and task_id != self.current:
            self.withdraw(task_id, None, 0.0, OutcomeKind.NOT_STARTED)

    def stalled(self, since: float) -> bool:
        """Whether its running task started at monotonic time ``since`` or before."""
        return self.current is not None and self.started_at <= since

    def _not_started(self, task: Task, begin: float) -> Outcome:
        duration = time.monotonic() - begin
        withdrawn = self._withdrawn.pop(task.id, None)
        if withdrawn is not None:
            error, _, kind = withdrawn
            return Outcome(kind, None, error, duration, self.pid)
        return Outcome(OutcomeKind.NOT_STARTED, None, None, duration, self.pid)

    def _send(self, parts: list[bytes]) -> bool:
        """Queue a frame for the child (the transport writes it as the socket takes it,
        and holds the rest meanwhile); False when the channel is already gone."""
        return self._channel is not None and self._channel.send(parts)

    async def _next_frame(self, number: int) -> ipc.Frame | None:
        """The next frame for the task sent as RUN ``number``, whose turn it is; None, for
        good, at the end. Log records are relayed, and a SKIPPED of a task still waiting
        for its turn releases that task."""
        if self._ended:
            return None
        while (frame := await self.inbox.get()) is not None:
            if frame.kind == ipc.LOG:
                relay_log(frame.meta, self.pid)
            elif frame.kind == ipc.SKIPPED and (skipped := int(frame.meta.get("n", 0))) != number:
                if (waiter := self._waiting.pop(skipped, None)) is not None:
                    waiter.set_result(False)
            else:
                break
        self._ended = frame is None
        return frame

    def _done(self, frame: ipc.Frame, begin: float) -> Outcome:
        self.tasks_run += 1
        self.retiring = bool(frame.meta.get("retire"))
        duration = time.monotonic() - begin
        if frame.meta.get("ok"):
            return Outcome(OutcomeKind.SUCCEEDED, frame.body, None, duration, self.pid)
        error = TaskError.from_dict(frame.meta["error"])
        return Outcome(OutcomeKind.FAILED, None, error, duration, self.pid)

    def _timed_out(self, task: Task, begin: float, signal_used: signal.Signals) -> Outcome:
        error = TaskError(
            "TimeoutError",
            f"task exceeded its {task.timeout:g}s timeout; worker process {self.pid} "
            f"was killed ({signal_used.name})",
            kind=ErrorKind.TIMEOUT.value,
            retry_count=task.retries,
            max_retries=task.max_retries,
        )
        return Outcome(OutcomeKind.TIMED_OUT, None, error, time.monotonic() - begin, self.pid)

    async def _died(self, begin: float) -> Outcome:
        if self.abort_error is None:
            await self._await_exit(_EXIT_WAIT)
        else:  # the abort's kill is under way; it owns the escalation
            await asyncio.shield(self.exited)
        duration = time.monotonic() - begin
        if self.abort_error is not None:
            return Outcome(self.abort_kind, None, self.abort_error, duration, self.pid)
        text = await self.exit_text()
        error = TaskError(
            "WorkerCrashed",
            f"worker process {self.pid} died while running the task: {text}",
            kind=ErrorKind.CRASH.value,
        )
        return Outcome(OutcomeKind.CRASHED, None, error, duration, self.pid)

    # -- stopping ----------------------------------------------------------------------------

    def abort(
        self,
        error: TaskError,
        grace: float,
        kind: OutcomeKind = OutcomeKind.ABORTED,
    ) -> None:
        """Stop the running task from outside; ``run`` then returns ``kind`` with ``error``.

        ABORTED (shutdown, lost lease, cancel) is not the task's fault; CRASHED (memory
        limit) counts against its crash budget.
        """
        self.abort_error = error
        self.abort_kind = kind
        asyncio.create_task(self.kill(grace), name=f"abort-{self.pid}")  # noqa: RUF006

    async def kill(self, grace: float) -> signal.Signals:
        """SIGTERM the worker's process group, wait ``grace``, then SIGKILL the whole tree.

        :returns: the signal that ended the worker.
        """
        tree = self._descendants()  # snapshot first: a dying child orphans its children
        signal_tree(self.pid, signal.SIGTERM, tree)
        used = signal.SIGTERM
        if not await self._await_exit(grace):
            used = signal.SIGKILL
            signal_tree(self.pid, signal.SIGKILL, tree + self._descendants())
            await self._await_exit(_EXIT_WAIT)
        # Grandchildren that ignored SIGTERM, or left the group, go down now.
        signal_tree(self.pid, signal.SIGKILL, tree)
        return used

    async def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not."""
        if self.alive:
            self._send(ipc.encode(ipc.STOP))
        if not await self._await_exit(1.0):
            await self.kill(0.5)

    async def _await_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except TimeoutError:
            if self.alive:
                return False
        return True

    def _descendants(self) -> list[psutil.Process]:
        return descendants(self.pid)

    async def exit_text(self) -> str:
        """How the process ended, e.g. 'killed by SIGSEGV (segmentation fault)'."""
        for _ in range(200):  # the exit status is reaped asynchronously (forkserver)
            if self.process.exitcode is not None:
                return describe_exit(self.process.exitcode)
            await asyncio.sleep(0.005)
        return "still running" if self.alive else "exit status unknown"

    def close(self) -> None:
        """Release the channel, the watcher and the process handle (after it exited)."""
        loop = asyncio.get_running_loop()
        for fd in (self._exit_fd, self.process.sentinel):
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
        if self._exit_fd >= 0:
            os.close(self._exit_fd)
            self._exit_fd = -1
        if self._channel is not None:
            self._channel.close()
        with contextlib.suppress(ValueError):
            self.process.close()


class _Channel(asyncio.Protocol):
    """The supervisor's end of one worker's socket: every frame the child sends goes to
    the worker's inbox as soon as its last byte is read, then ``None`` at end of stream.

    A protocol, not a StreamReader: one callback per read parses every frame the read
    completed, where reading frame by frame cost an await per header, meta and body.
    """

    def __init__(self, inbox: Inbox[ipc.Frame | None]) -> None:
        self._inbox = inbox
        self._parser = ipc.FrameParser()
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for frame in self._parser.feed(data):
            self._inbox.put_nowait(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._inbox.put_nowait(None)

    def send(self, parts: list[bytes]) -> bool:
        """Write one frame; False if the channel is closed or closing."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.writelines(parts)
        return True

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._transport is not None:
            self._transport.close()


class ProcessPool:
    """A fixed number of worker processes; a worker that dies or is killed is replaced.

    :param size: number of worker processes.
    :param start_method: ``forkserver`` (fast respawn) or ``spawn``.
    :param kill_grace: seconds between SIGTERM and SIGKILL.
    :param max_tasks_per_child: a worker exits after this many tasks and is replaced.
    :param ready_timeout: seconds a new worker may take to import and report READY.
    :param max_memory_per_child: bytes of resident memory past which a worker is replaced
        after its current task.
    :param signer: signing keys for the workers, which verify payloads and sign results
        with them (None: signing off). The pool only hands them over; it never signs.
    :param worker_init: dotted path of a function each worker calls once before its first
        task; a worker whose call raises or outlasts ``ready_timeout`` does not start.
    :param max_result_size: bytes of pickled result past which a worker fails the task
        instead of sending it.
    :param max_start_failures: replacement starts failing this many times in a row make
        the pool give up (``on_give_up`` is called) instead of retrying for ever.
    """

    def __init__(
        self,
        size: int,
        *,
        start_method: str = "forkserver",
        kill_grace: float = 0.5,
        max_tasks_per_child: int | None = None,
        ready_timeout: float = 60.0,
        max_memory_per_child: int | None = None,
        signer: Signer | None = None,
        worker_init: str | None = None,
        max_start_failures: int = 5,
        max_result_size: int | None = None,
    ) -> None:
        self.size = size
        self.worker_init = worker_init
        self.max_result_size = max_result_size
        self.max_start_failures = max_start_failures
        self.start_failures = 0  # replacement starts failed in a row (0 once one works)
        self.on_give_up: Callable[[WorkerStartError], None] | None = None
        self._signer = signer
        self.max_memory_per_child = max_memory_per_child
        self.kill_grace = kill_grace
        self.max_tasks_per_child = max_tasks_per_child
        self.ready_timeout = ready_timeout
        self._ctx = _context(start_method)
        self._idle: asyncio.Queue[WorkerProcess] = asyncio.Queue()  # ready, not running a task
        self._running: dict[str, WorkerProcess] = {}  # task id -> its worker
        self._workers: set[WorkerProcess] = set()  # every live worker, idle or busy
        self._respawns: set[asyncio.Task[None]] = set()  # strong refs to background respawns
        self._closing = False
        self.on_respawn: Callable[[int, int], None] | None = None  # (old pid, new pid)

    async def start(self) -> None:
        """Start every worker and wait until all are ready.

        :raises WorkerStartError: one did not start (those that did are stopped again).
        """
        started = await asyncio.gather(
            *(self._spawn(slot) for slot in range(self.size)), return_exceptions=True
        )
        failures = [r for r in started if isinstance(r, BaseException)]
        if failures:
            await self.close()
            raise failures[0]
        for worker in started:
            assert isinstance(worker, WorkerProcess)
            self._idle.put_nowait(worker)

    def idle(self) -> int:
        """Workers ready for a task right now."""
        return self._idle.qsize()

    def busy(self) -> int:
        """Workers holding a task (running it, or with one sent ahead)."""
        return len(set(self._running.values()))

    def healthy(self) -> int:
        """Workers up and taking tasks (idle or busy), not those being (re)started."""
        return self.idle() + self.busy()

    def pids(self) -> list[int]:
        """Pids of the live workers."""
        return sorted(w.pid for w in self._workers)

    async def acquire(self) -> WorkerProcess:
        """Wait for an idle worker."""
        return await self._idle.get()

    def try_acquire(self) -> WorkerProcess | None:
        """An idle worker if there is one now, else None."""
        # Asked before every dispatch, mostly while all are busy: no exception for that.
        return None if self._idle.empty() else self._idle.get_nowait()

    def try_acquire_ahead(
        self, ahead: int = 1, stalled_after: float = math.inf
    ) -> WorkerProcess | None:
        """A busy worker that may be sent another task now, to start the moment the ones
        it holds end (no round trip to the supervisor in between); else None.

        Only a worker holding at least one task and fewer than ``1 + ahead``, alive, not
        being stopped, not about to retire (``max_tasks_per_child``), and whose task has
        run less than ``stalled_after`` seconds: a task sent ahead would only come back.
        The least loaded is chosen, then the one whose task started first, which is
        likely the first to be free.
        """
        best: WorkerProcess | None = None
        stalled_since = time.monotonic() - stalled_after
        for worker in self._workers:
            held = len(worker.held)
            if (
                not 1 <= held <= ahead
                or not worker.alive
                or worker.retiring
                or worker.abort_error is not None
                or (
                    self.max_tasks_per_child is not None
                    and worker.tasks_run + held + 1 > self.max_tasks_per_child
                )
                or worker.stalled(stalled_since)
            ):
                continue
            if best is None or (held, worker.started_at) < (len(best.held), best.started_at):
                best = worker
        return best

    def reserve(self, worker: WorkerProcess, task: Task) -> None:
        """Give ``task`` to ``worker`` now, before its :meth:`run` starts (which may be a
        loop turn later): until then the worker must already count as holding it, or it
        could be handed out as idle, or sent a second task ahead, in between."""
        self._running[task.id] = worker
        worker.held.append(task.id)

    async def run(
        self, worker: WorkerProcess, task: Task, on_started: Callable[[], None] | None = None
    ) -> Outcome:
        """Run ``task`` on an acquired worker; the worker returns to the pool or is replaced.
        ``on_started`` is called when the worker acknowledges the task."""
        if self._running.get(task.id) is not worker:
            self.reserve(worker, task)
        try:
            return await worker.run(task, self.kill_grace, on_started)
        finally:
            del self._running[task.id]
            self._release(worker)

    def abort(
        self,
        task_id: str,
        reason: str,
        error_kind: ErrorKind = ErrorKind.LOST,
        kind: OutcomeKind = OutcomeKind.ABORTED,
        error_type: str = "Aborted",
        grace: float | None = None,
    ) -> bool:
        """Kill the process running ``task_id``; its ``run`` returns ``kind`` with an error
        of ``error_type`` saying ``reason``. False if the task is not running here.
        ``grace`` overrides the pool's SIGTERM-to-SIGKILL delay (0: kill at once).
        A task sent ahead that has not started is taken back instead: it never starts
        (or, if it started meanwhile, is killed as soon as that is known)."""
        worker = self._running.get(task_id)
        if worker is None:
            return False
        error = TaskError(error_type, reason, kind=error_kind.value)
        grace = self.kill_grace if grace is None else grace
        if worker.current != task_id:
            worker.withdraw(task_id, error, grace, kind)
            return True
        if worker.abort_error is not None:
            return False
        worker.abort(error, grace, kind)
        return True

    def take_back_stalled(self, after: float) -> bool:
        """Ask back the tasks sent ahead of any worker whose task has run ``after``
        seconds or more (one that hangs would hold them while other workers idle): each
        comes back NOT_STARTED, to run elsewhere, once its child confirms. Returns
        whether tasks sent ahead are still held by workers not stalled yet."""
        stalled_since = time.monotonic() - after
        still_ahead = False
        for worker in self._workers:
            if len(worker.held) < 2:
                continue
            if not worker.stalled(stalled_since):
                still_ahead = True  # not stalled (yet)
                continue
            for task_id in worker.held[1:]:
                worker.take_back(task_id)
        return still_ahead

    def withdraw_waiting(self, reason: str) -> None:
        """Take back every task sent ahead that has not started (a graceful stop)."""
        for task_id, worker in list(self._running.items()):
            if worker.current != task_id:
                self.abort(task_id, reason)

    def abort_all(self, reason: str) -> None:
        """Abort every running task (end of a graceful shutdown)."""
        for task_id in list(self._running):
            self.abort(task_id, reason)

    def running(self) -> dict[str, WorkerProcess]:
        """Task id -> the worker running it (a copy; tasks sent ahead are not running)."""
        return {t: w for t, w in self._running.items() if w.current == t}

    def holds(self) -> dict[str, WorkerProcess]:
        """Task id -> the worker it was given to, running or sent ahead (a copy)."""
        return dict(self._running)

    def is_held(self, task_id: str) -> bool:
        """Whether ``task_id`` was given to a worker here (running or sent ahead)."""
        return task_id in self._running

    async def close(self) -> None:
        """Stop idle workers, kill busy ones, and wait for all to exit."""
        self._closing = True
        for job in list(self._respawns):
            job.cancel()
        await asyncio.gather(*self._respawns, return_exceptions=True)
        workers = list(self._workers)
        busy = set(self._running.values())
        await asyncio.gather(*(w.kill(self.kill_grace) if w in busy else w.stop() for w in workers))
        for worker in workers:
            self._forget(worker)

    # -- replacement -------------------------------------------------------------------------

    def _release(self, worker: WorkerProcess) -> None:
        if self._grown_too_big(worker):
            worker.retiring = True  # replaced now, between tasks (or after those sent ahead)
        if worker.held:  # tasks sent ahead are still on it: the last one's run releases it
            return
        if worker.alive and not worker.retiring and worker.abort_error is None:
            self._idle.put_nowait(worker)
        elif not self._closing:
            job = asyncio.create_task(self._replace(worker), name=f"respawn-{worker.slot}")
            self._respawns.add(job)
            job.add_done_callback(self._respawns.discard)

    def _grown_too_big(self, worker: WorkerProcess) -> bool:
        if self.max_memory_per_child is None or not worker.alive:
            return False
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(worker.pid).memory_info().rss
            if rss > self.max_memory_per_child:
                logger.bind(action="worker_recycled", pid=worker.pid).info(
                    "worker {} uses {} bytes, over max_memory_per_child: replacing it",
                    worker.pid,
                    rss,
                )
                return True
        return False

    async def _replace(self, old: WorkerProcess) -> None:
        if old.alive:
            if old.retiring:  # done with tasks: exits by itself, or when told to
                await old.stop()
            if old.alive:
                await old.kill(self.kill_grace)
        # A worker that crashed on its own may leave grandchildren in its process group.
        signal_tree(old.pid, signal.SIGKILL, [])
        self._forget(old)
        # Starting a process blocks this loop for milliseconds (it waits for the fork
        # server's fork). A timer, not a bare yield, lets every callback already queued
        # run first, however many turns they take: the outcome that freed this slot
        # reaches the store's thread, and its commit runs while we start the process.
        await asyncio.sleep(_SPAWN_AFTER)
        delay = 1.0
        while not self._closing:
            try:
                new = await self._spawn(old.slot)
            except WorkerStartError as exc:
                self.start_failures += 1
                if self.start_failures >= self.max_start_failures:
                    logger.bind(action="worker_start_gave_up").error(
                        "{}; {} worker starts failed in a row: giving up", exc, self.start_failures
                    )
                    if self.on_give_up is not None:
                        self.on_give_up(exc)
                    return
                logger.bind(action="worker_start_failed").error("{}; retrying in {}s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.start_failures = 0
            logger.bind(action="worker_replaced").debug(
                "worker {} replaced by {}", old.pid, new.pid
            )
            if self.on_respawn is not None:
                self.on_respawn(old.pid, new.pid)
            self._idle.put_nowait(new)
            return

    async def _spawn(self, slot: int) -> WorkerProcess:
        parent_end, child_end = socket.socketpair()
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=child.main,
            # The keys travel in the start arguments: through the pipe multiprocessing
            # starts the process with, never its environment or command line.
            args=(
                child_end,
                self.max_tasks_per_child,
                self._signer,
                self.worker_init,
                self.max_result_size,
            ),
            name=f"{_NAME_PREFIX}-{slot}",
            daemon=True,
        )
        process.start()
        child_end.close()  # the child has its own copy; ours would hide its EOF
        worker = WorkerProcess(slot, process, parent_end)
        self._workers.add(worker)
        try:
            await worker.connect(self.ready_timeout)
        except BaseException:
            # Cancelled by close() or failed: never leave the half-started process behind.
            process.kill()
            await asyncio.shield(asyncio.to_thread(process.join, _EXIT_WAIT))
            self._forget(worker)
            raise
        logger.bind(action="worker_online", pid=worker.pid).debug("worker {} ready", worker.pid)
        return worker

    def _forget(self, worker: WorkerProcess) -> None:
        self._workers.discard(worker)
        worker.close()


_relays: dict[str, Callable[..., None]] = {}


def relay_log(meta: dict[str, Any], pid: int) -> None:
    """Write a task's log record to this process's loguru sinks.

    loguru decides whether a record is enabled from the module that calls it. Relaying
    from here would make every task record look like omniq_mp's own, and omniq_mp is
    silent until configured; so the call is made from a tiny function compiled with the
    task module's ``__name__``, and the record is filtered as the user's own.
    """
    name = str(meta.get("name") or "__main__")
    relay = _relays.get(name)
    if relay is None:
        namespace: dict[str, Any] = {"__name__": name, "logger": logger}
        exec(
            "def relay(level, message, extra):\n"
            "    logger.opt(depth=0).bind(**extra).log(level, message)\n",
            namespace,
        )
        relay = _relays[name] = namespace["relay"]
    extra = {**dict(meta.get("extra") or {}), "pid": pid}
    with contextlib.suppress(Exception):  # an unknown level name must not break a task
        relay(str(meta.get("level", "INFO")), str(meta.get("message", "")), extra)


def _context(start_method: str) -> BaseContext:
    _skip_main_reimport()
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # Preloaded in the fork server, so each new worker starts with these imported.
        ctx.set_forkserver_preload(["omniq_mp.child", "cloudpickle"])
    return ctx


def _skip_main_reimport() -> None:
    """Start our workers without re-importing the parent's ``__main__``.

    spawn and forkserver normally re-run the main script in every child, which breaks a
    script that starts a queue at top level without an ``if __name__ == "__main__"`` guard.
    Our workers need nothing from ``__main__``: cloudpickle carries functions defined there
    by value. Only processes we name are affected.
    """
    original: Any = spawn.get_preparation_data
    if getattr(original, "_omniq_patched", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if name.startswith(_NAME_PREFIX):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._omniq_patched = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data
