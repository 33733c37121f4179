"""The worker process: receive a call, run it, send back the outcome, repeat.

    supervisor --RUN(task_id, payload)--> child
    supervisor <--STARTED(pid)----------- child   (timeout clock starts here)
    supervisor <--DONE(ok | error, body)- child

With short tasks the supervisor sends the next RUN before the current task is DONE; the
child starts it right after, unless a SKIP for it arrived first (then: SKIPPED).

The child never touches storage and never decides retries: it only runs code and reports
what happened as plain data. Anything a task does wrong (raises, returns something that
cannot be pickled, calls sys.exit) becomes a DONE frame with an error and the child lives
on; only a real death (segfault, os._exit, a kill) ends it, and the supervisor sees that
through the process handle, not through a frame.

With signing on, the supervisor passes the keys as a start argument (see signing.py): the
child checks each payload's signature for its task id before anything in it is parsed or
unpickled, and signs each result for the same task id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import faulthandler
import fcntl
import inspect
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from omniq_mp import ipc
from omniq_mp.errors import ResultTooLarge, SignatureError
from omniq_mp.models import ErrorKind, TaskError
from omniq_mp.sched_class import use_batch_class
from omniq_mp.serialization import VersionSkewError, dumps_result, loads_call, resolve
from omniq_mp.signing import PAYLOAD, RESULT, Signer, open_blob
from omniq_mp.units import format_bytes

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def main(
    sock: socket.socket,
    max_tasks: int | None,
    signer: Signer | None = None,
    worker_init: str | None = None,
    max_result_size: int | None = None,
) -> None:
    """Entry point of a worker process (the target given to multiprocessing).

    :param signer: the keys payloads must be signed with, and results are signed with
        (None: signing off).
    :param worker_init: dotted path of a function to call once before taking tasks.
    :param max_result_size: pickled results larger than this fail instead of being sent.
    """
    _die_with_parent()
    # Own process group: a kill of the group also reaches grandchildren the task started.
    os.setpgid(0, 0)
    use_batch_class()  # woken by a RUN frame, never preempt the supervisor's loop
    _watch_supervisor()
    # The pool stops its workers itself; as non-daemons they may start processes of their
    # own (multiprocessing forbids children of daemonic processes).
    multiprocessing.current_process().daemon = False
    # The supervisor owns signals: Ctrl-C in a terminal must not kill tasks mid-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()
    send = _sender(sock)
    _forward_logs(send)
    if worker_init is not None:
        try:
            resolve(worker_init)()
        except BaseException as exc:  # reported, never raised: the supervisor decides
            error = TaskError.from_exception(exc, kind=ErrorKind.EXCEPTION)
            send(ipc.INIT_FAILED, {"error": error.to_dict()}, b"")
            sock.close()
            return
    pid = os.getpid()
    send(ipc.READY, {"pid": pid}, b"")
    served = 0
    frames = _Frames(sock, send)
    frames.answer_skips_while_busy()
    while (frame := frames.next_run()) is not None:
        task_id = frame.meta["task_id"]
        send(ipc.STARTED, {"task_id": task_id, "pid": pid}, b"")
        with logger.contextualize(task_id=task_id, correlation_id=task_id):
            meta, body = _execute(
                task_id, frame.body, frame.meta.get("attempt", 1), signer, max_result_size
            )
        served += 1
        meta["retire"] = max_tasks is not None and served >= max_tasks
        send(ipc.DONE, meta, body)
        if meta["retire"]:
            break
    sock.close()


Send = Callable[[str, dict[str, Any], bytes], None]


class _Frames:
    """The supervisor's frames, with a look ahead before each task starts.

    The supervisor may send a worker its next tasks while the current one runs (so the
    worker never waits a round trip for them), and may then take one back with SKIP. A
    task is started only after every frame that has already arrived was read: a SKIP
    sent before that moment always wins, and one sent after finds the task started (the
    supervisor then learns so from STARTED and treats it as a running task).

    While a task runs, a helper thread answers SKIPs every ``SKIP_POLL`` seconds, so a
    task taken back from behind a long one is free at once (the supervisor gives it to
    another worker) instead of when the long one ends. Both threads touch the socket and
    the look-ahead only under ``_lock``; the main thread's one read without it, the
    blocking wait for the next frame, happens while no task runs, when the helper reads
    nothing.
    """

    SKIP_POLL = 0.05  # seconds; the helper sleeps while the worker is idle

    def __init__(self, sock: socket.socket, send: Send) -> None:
        self._reader = ipc.FrameReader(sock)
        self._send = send
        self._lock = threading.Lock()
        self._ahead: collections.deque[ipc.Frame | None] = collections.deque()  # None: end
        self._skips: set[int] = set()  # numbers of RUN frames taken back
        self._started = 0  # number of the last RUN started (SKIPs at or below it are late)
        self._running = False  # a task runs (the helper may read frames)
        self._helper_awake = threading.Event()  # cleared while the worker is idle

    def next_run(self) -> ipc.Frame | None:
        """The next RUN frame not taken back, now counted as started; None at STOP or end
        of stream. Taken-back frames met on the way are answered with SKIPPED."""
        arrived: list[ipc.Frame | None] = []
        while True:
            with self._lock:
                self._running = False
                self._take(arrived)
                self._read_pending()
                while self._ahead:
                    frame = self._ahead.popleft()
                    if frame is None or frame.kind == ipc.STOP:
                        return None
                    if not self._skipped(frame):
                        self._start(frame)
                        return frame
            # Nothing waiting: block until the supervisor writes (the helper reads nothing
            # while no task runs).
            arrived = self._reader.wait()

    def answer_skips_while_busy(self) -> None:
        """Start the helper thread (a daemon: it never holds up the worker's exit)."""
        threading.Thread(target=self._helper, name="omniq-skips", daemon=True).start()

    def _helper(self) -> None:
        while True:
            self._helper_awake.wait()
            time.sleep(self.SKIP_POLL)
            with self._lock:
                if not self._running:  # idle since the last poll: sleep until a task starts
                    self._helper_awake.clear()
                    continue
                self._read_pending()
                if self._skips:  # answer them now; the frames taken back are dropped
                    self._drop_skipped()

    def _start(self, frame: ipc.Frame) -> None:
        self._started = max(self._started, int(frame.meta.get("n", 0)))
        self._running = True
        if not self._helper_awake.is_set():  # under the lock: the helper cannot miss it
            self._helper_awake.set()

    def _drop_skipped(self) -> None:
        # Each frame taken back is answered (SKIPPED, inside _skipped) and left out; the
        # rest keep their order. None is the end-of-stream mark: always kept.
        kept: collections.deque[ipc.Frame | None] = collections.deque()
        for frame in self._ahead:
            if frame is None or not self._skipped(frame):
                kept.append(frame)
        self._ahead = kept

    def _skipped(self, run: ipc.Frame) -> bool:
        """Whether ``run`` was taken back; if so, the supervisor is told (SKIPPED)."""
        number = int(run.meta.get("n", 0))
        if number not in self._skips:
            return False
        self._skips.discard(number)
        self._send(ipc.SKIPPED, {"task_id": run.meta["task_id"], "n": number}, b"")
        return True

    def _read_pending(self) -> None:
        # Every frame that has arrived, without waiting for more.
        self._take(self._reader.arrived())

    def _take(self, frames: list[ipc.Frame | None]) -> None:
        # SKIPs are noted, the rest queued in order. Every frame goes through here, the
        # ones a blocking wait brings included: a SKIP that arrives late, while the worker
        # waits idle, is noted as one, never started as if it were a task.
        for frame in frames:
            if frame is not None and frame.kind == ipc.SKIP:
                number = int(frame.meta.get("n", 0))
                if number > self._started:  # a SKIP of a task already started changes nothing
                    self._skips.add(number)
            else:
                self._ahead.append(frame)


def _sender(sock: socket.socket) -> Send:
    # A task's threads may log while the main thread sends DONE: frames must not interleave.
    lock = threading.Lock()

    def send(kind: str, meta: dict[str, Any], body: bytes) -> None:
        with lock:
            ipc.send_frame(sock, kind, meta, body)

    return send


def _forward_logs(send: Send) -> None:
    """Send the task's loguru records to the supervisor, which writes them to its own
    sinks with the task id as correlation id (the child has no sinks of its own)."""
    logger.remove()

    def sink(message: Any) -> None:
        record = message.record
        extra = {k: v if isinstance(v, str | int | float | bool) else repr(v)
                 for k, v in record["extra"].items()}  # fmt: skip
        meta = {"level": record["level"].name, "message": record["message"], "extra": extra,
                "name": record["name"] or "__main__"}  # fmt: skip
        send(ipc.LOG, meta, b"")

    logger.add(sink, level=0, format="{message}", catch=True)


def _die_with_parent() -> None:
    # Linux only: the kernel sends SIGKILL when our parent exits, so a supervisor killed
    # with SIGKILL leaves no orphan running tasks while its leases expire.
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _watch_supervisor() -> None:
    # Under forkserver our parent is the fork server, so PDEATHSIG never fires when the
    # supervisor dies. The parent sentinel does: it is readable once the supervisor is
    # gone, and then this worker and its task's grandchildren (its group) go down.
    supervisor = multiprocessing.parent_process()
    if supervisor is None:
        return
    _kill_group_at_eof(supervisor.sentinel)

    def watch() -> None:
        supervisor.join()
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="omniq-supervisor-watch", daemon=True).start()


_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)  # Linux's value; the module lacks it before 3.12


def _kill_group_at_eof(sentinel: int) -> None:
    # The watch thread needs the GIL, and a task stuck in C code (a regex, a C extension)
    # never releases it: such a worker outlived a SIGKILLed supervisor and ran on, holding
    # the fork server alive, while another supervisor ran the task again. So also have
    # the kernel itself SIGKILL our process group when the sentinel pipe reaches EOF
    # (O_ASYNC: the pipe's "readable" signal, redirected by F_SETSIG to SIGKILL).
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(sentinel, fcntl.F_SETOWN, -os.getpgid(0))
        fcntl.fcntl(sentinel, _F_SETSIG, signal.SIGKILL)
        fcntl.fcntl(sentinel, fcntl.F_SETFL, fcntl.fcntl(sentinel, fcntl.F_GETFL) | os.O_ASYNC)


def _execute(
    task_id: str, payload: bytes, attempt: int, signer: Signer | None, max_result: int | None
) -> tuple[dict[str, Any], bytes]:
    """Run one call; return DONE meta and the pickled (and signed) result, empty on failure."""
    call = _load(task_id, payload, attempt, signer)
    if isinstance(call, dict):
        return call, b""
    func, args, kwargs = call
    try:
        value = func(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the child survives
        return _failure(exc, ErrorKind.EXCEPTION, attempt), b""
    try:
        body = dumps_result(value)
    except BaseException as exc:
        return _failure(exc, ErrorKind.SERIALIZATION, attempt, f"the result ({_type(value)})"), b""
    if max_result is not None and len(body) > max_result:
        # Measured here and never sent: a runaway result must not reach the supervisor.
        too_large = ResultTooLarge(
            f"the result ({_type(value)}) pickles to {format_bytes(len(body))}, over "
            f"max_result_size ({format_bytes(max_result)}); write it to a file and return "
            "its path instead"
        )
        return _failure(too_large, ErrorKind.SERIALIZATION, attempt), b""
    return {"ok": True}, body if signer is None else signer.seal(task_id, RESULT, body)


Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _load(
    task_id: str, payload: bytes, attempt: int, signer: Signer | None
) -> Call | dict[str, Any]:
    """The call, or the DONE meta of a payload that cannot run. The signature is checked
    first: a forged payload must fail before the unpickler (or the header parser) sees it."""
    try:
        return loads_call(open_blob(signer, task_id, PAYLOAD, payload))
    except ImportError as exc:
        return _failure(exc, ErrorKind.IMPORT, attempt)
    except (VersionSkewError, SignatureError) as exc:  # their messages say it all
        return _failure(exc, ErrorKind.SERIALIZATION, attempt)
    except Exception as exc:
        return _failure(exc, ErrorKind.SERIALIZATION, attempt, "the task payload")


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _failure(
    exc: BaseException, kind: ErrorKind, attempt: int, what: str | None = None
) -> dict[str, Any]:
    error = TaskError.from_exception(exc, kind=kind, retry_count=max(0, attempt - 1))
    if what is not None:
        message = f"{what} cannot be pickled or unpickled: {error.error_type}: {error.message}"
        error = TaskError(
            "SerializationError",
            message,
            error.traceback,
            False,
            error.retry_count,
            kind=kind.value,
        )
    return {"ok": False, "error": error.to_dict()}


def _type(value: Any) -> str:
    return f"a {type(value).__module__}.{type(value).__qualname__}"
