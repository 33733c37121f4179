"""What the fault-matrix pass and the chaos runner share: the test profile, supervisors as
real ``python -m omniq_mp workers`` processes, the DeathWatch, the fault log, figures,
the producer and a read-only view of the SQLite store.

Everything here drives real processes and observes them from outside (psutil, pidfds, the
ledger, the store's rows); nothing reaches into a supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from omniq_mp import OmniQ, Settings
from omniq_mp.models import Task, TaskStatus
from omniq_mp.storage import open_storage
from tests.reliability.ledger import LEDGER_ENV, LedgerTail, Record

REPO = Path(__file__).resolve().parents[2]

# The test profile of reliability.md 4.1: small numbers, so every row fits a 2-core box.
PROCS = 2
LEASE_TTL = 2.0
RENEWAL = LEASE_TTL / 4  # the supervisor renews every lease_ttl/4 ...
SCAN = LEASE_TTL / 4  # ... and scans for dead leases as often
KILL_GRACE = 0.5
MAX_CRASHES = 3  # 1 + max_crash_retries (2)
RETRY_DELAY = 0.1
T_RECOVER = LEASE_TTL + SCAN + 1.0  # dead holder -> its tasks claimable again
PROFILE = {
    "OMNIQ_PROCS": str(PROCS),
    "OMNIQ_LEASE_TTL": str(LEASE_TTL),
    "OMNIQ_KILL_GRACE": str(KILL_GRACE),
    "OMNIQ_MAX_CRASHES": str(MAX_CRASHES),
    "OMNIQ_RETRY_DELAY": str(RETRY_DELAY),
    "OMNIQ_RETRY_DELAY_MAX": "2",
    "OMNIQ_SHUTDOWN_GRACE": "2",
    "OMNIQ_EVENT_STORAGE_TYPE": "none",  # events are not what is checked; spare the cores
    "OMNIQ_LOG_LEVEL": "WARNING",
}

_PR_SET_CHILD_SUBREAPER = 36


def supervisor_env(base_dir: Path, ledger: Path, **extra: str) -> dict[str, str]:
    """The environment of a supervisor (or producer) process: the profile, the store, the
    ledger; the caller's own OMNIQ_* variables never leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(PROFILE)
    env.update(OMNIQ_BASE_DIR=str(base_dir), **{LEDGER_ENV: str(ledger)})
    env.update(extra)
    return env


def now_ns() -> int:
    """The host-wide monotonic clock, in ns (the ledger's clock)."""
    return time.monotonic_ns()


# -- processes ----------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid`` (empty once it is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Supervisor:
    """One supervisor process: ``python -m omniq_mp workers`` (or another module's main,
    e.g. the clock-skew driver), its stderr kept in a file for the report."""

    def __init__(
        self,
        name: str,
        base_dir: Path,
        ledger: Path,
        args: Sequence[str] = (),
        *,
        module: str = "omniq_mp",
        command: str = "workers",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = ledger.parent / f"{name}.stderr"
        env = supervisor_env(base_dir, ledger, **(env or {}))
        argv = [sys.executable, "-m", module, *([command] if command else []), *args]
        with self.log_path.open("a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        self.pid = self.proc.pid
        self.started_ns = now_ns()

    @property
    def worker_prefix(self) -> str:
        """How this supervisor's ``worker_id`` starts (hostname:pid:...)."""
        return f"{socket.gethostname()}:{self.pid}:"

    def running(self) -> bool:
        """True until the process has exited."""
        return self.proc.poll() is None

    def workers(self) -> list[int]:
        """Its worker processes (not multiprocessing's fork server or resource tracker)."""
        found = []
        try:
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(child.cmdline())
                    helper = "forkserver import main" in cmd or "resource_tracker" in cmd
                    if child.ppid() == self.pid and helper:
                        continue
                    if child.status() != psutil.STATUS_ZOMBIE:
                        found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
        return found

    def wait_workers(self, count: int = PROCS, within: float = 60.0) -> None:
        """Wait until ``count`` worker processes are up; fail if it exited."""
        wait_until(
            lambda: len(self.workers()) >= count or not self.running(),
            within,
            f"{self.name}: {count} worker processes",
        )
        if not self.running():
            raise AssertionError(f"{self.name} exited at start:\n{self.stderr()}")

    def tree(self) -> list[int]:
        """Pids of all its descendants now."""
        return descendants(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the supervisor process only."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, within: float) -> int:
        """Wait for it to exit; its exit status."""
        return self.proc.wait(timeout=within)

    def stop(self, within: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in ``within`` seconds."""
        if self.running():
            self.signal(signal.SIGCONT)  # a frozen supervisor cannot stop
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=within)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def stderr(self) -> str:
        """The end of its log (stderr)."""
        return self.log_path.read_text(errors="replace")[-4000:]


def wait_until(condition: Callable[[], object], within: float, what: str) -> float:
    """Poll ``condition`` every 5 ms; fail naming ``what`` after ``within`` seconds.
    Returns the monotonic time (s) at which it held."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within:g}s: {what}")
        time.sleep(0.005)
    return time.monotonic()


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """While active, orphans of our descendants are re-parented to us (not to init), so a
    process left behind by a dead supervisor stays visible to the I6 check."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        reap()
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap(keep: Sequence[int] = ()) -> None:
    """Reap exited children nobody else waits for (orphans re-parented to us)."""
    for proc in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.pid not in keep and proc.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(proc.pid, os.WNOHANG)


def wait_gone(pids: Sequence[int], within: float) -> tuple[list[int], float]:
    """Wait until none of ``pids`` runs. Returns (those still running after ``within``,
    seconds until the last one was seen gone)."""
    began = time.monotonic()
    left = list(pids)
    while left and time.monotonic() - began < within:
        reap()
        left = [p for p in left if alive(p)]
        if left:
            time.sleep(0.005)
    return left, time.monotonic() - began


@contextlib.contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    """``count`` processes spinning on a core each: full CPU load for the duration."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


# -- when attempts ended: the DeathWatch ----------------------------------------------------


@dataclass
class _Watched:
    record: Record
    fd: int
    alive_until: int


class DeathWatch:
    """Follows the ledger and, for every attempt that has started and not written ``end``,
    watches its process through a pidfd; when the process exits first, appends

        <key> <attempt> <pid> died <last seen alive ns> <seen dead ns>

    to the ledger. The two times bracket the death: "last seen alive" is taken *before* a
    poll that found the process still running, so an overlap checked against it is never
    a false alarm; one inside the bracket is only reported as ambiguous.
    """

    def __init__(self, ledger: Path, poll_ms: int = 2) -> None:
        self.ledger = ledger
        self.poll_ms = poll_ms
        self.iterations = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deathwatch", daemon=True)
        self._tail = LedgerTail(ledger)
        self._poller = select.poll()
        self._watched: dict[int, _Watched] = {}  # pidfd -> attempt
        self._pending: list[Record] = []  # starts to open a pidfd for
        self._ended: set[tuple[str, int]] = set()
        self._fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.error: BaseException | None = None

    def start(self) -> DeathWatch:
        """Start following the ledger."""
        self._thread.start()
        return self

    def sync(self, within: float = 5.0) -> None:
        """Wait until everything in the ledger now has been seen and any process that died
        by now has been recorded (three full polling rounds)."""
        target = self.iterations + 3
        wait_until(lambda: self.iterations >= target or self.error, within, "deathwatch sync")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Stop following and close every descriptor."""
        self._stop.set()
        self._thread.join(timeout=10)
        for fd in list(self._watched):
            os.close(fd)
        self._watched.clear()
        self._tail.close()
        os.close(self._fd)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._ingest()
                self._open_pending()
                before = now_ns()
                events = self._poller.poll(self.poll_ms)
                after = now_ns()
                if events:
                    self._ingest()  # an end line is written before the process exits
                    for fd, _ in events:
                        watched = self._watched.get(fd)
                        if watched is not None:
                            self._died(fd, watched, after)
                for watched in self._watched.values():
                    watched.alive_until = max(watched.alive_until, before)
                self.iterations += 1
        except BaseException as exc:  # reported by sync()
            self.error = exc

    def _ingest(self) -> None:
        for rec in self._tail.read():
            if rec.event == "start":
                self._pending.append(rec)
            elif rec.event == "end":
                self._ended.add((rec.key, rec.attempt))
                for fd, watched in list(self._watched.items()):
                    if (watched.record.key, watched.record.attempt) == (rec.key, rec.attempt):
                        self._forget(fd)

    def _open_pending(self) -> None:
        pending, self._pending = self._pending, []
        for rec in pending:
            if (rec.key, rec.attempt) in self._ended:
                continue
            try:
                fd = os.pidfd_open(rec.pid)
            except ProcessLookupError:
                self._ingest()
                if (rec.key, rec.attempt) not in self._ended:
                    self._write(rec, rec.ns, now_ns())
                continue
            self._watched[fd] = _Watched(rec, fd, rec.ns)
            self._poller.register(fd, select.POLLIN)

    def _died(self, fd: int, watched: _Watched, seen_dead: int) -> None:
        self._forget(fd)
        self._write(watched.record, watched.alive_until, seen_dead)

    def _forget(self, fd: int) -> None:
        self._watched.pop(fd, None)
        self._poller.unregister(fd)
        os.close(fd)

    def _write(self, rec: Record, alive_until: int, dead_by: int) -> None:
        line = f"{rec.key} {rec.attempt} {rec.pid} died {alive_until} {dead_by}\n"
        os.write(self._fd, line.encode())


# -- faults and figures --------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault. ``excuse`` is the I3 exception a fault may carry: an overlap
    of an attempt run by one of ``excuse_pids`` that ends by ``excuse_until`` (row 13)."""

    kind: str
    at: int  # monotonic ns
    target: str = ""
    until: int = 0
    excuse_pids: frozenset[int] = frozenset()
    excuse_until: int = 0


@dataclass
class FaultLog:
    """Every fault injected in a run, in order."""

    faults: list[Fault] = field(default_factory=list)

    def add(self, kind: str, target: str = "", **extra: Any) -> Fault:
        """Record a fault now; ``extra`` sets the Fault's other fields."""
        fault = Fault(kind, now_ns(), target, **extra)
        self.faults.append(fault)
        return fault

    def counts(self) -> dict[str, int]:
        """How many faults of each kind."""
        counts: dict[str, int] = defaultdict(int)
        for fault in self.faults:
            counts[fault.kind] += 1
        return dict(sorted(counts.items()))


def p99(samples: Sequence[float]) -> float:
    """The 99th percentile, nearest-rank (with < 100 samples, the maximum)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else math.nan


@dataclass
class Figures:
    """Latency samples (seconds) and counts, written to a JSON file and summarised."""

    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def sample(self, name: str, seconds: float) -> None:
        """Record one latency sample, in seconds."""
        self.samples[name].append(seconds)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a counter."""
        self.counts[name] += n

    def merge(self, other: Figures) -> None:
        """Add another collection's samples and counts to this one."""
        for name, values in other.samples.items():
            self.samples[name].extend(values)
        for name, n in other.counts.items():
            self.counts[name] += n

    def to_json(self) -> dict[str, Any]:
        """The samples and counts as plain data."""
        return {
            "samples": {k: v for k, v in sorted(self.samples.items())},
            "counts": dict(sorted(self.counts.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figures:
        """The collection :meth:`to_json` wrote."""
        figures = cls()
        for name, values in data.get("samples", {}).items():
            figures.samples[name].extend(values)
        for name, n in data.get("counts", {}).items():
            figures.counts[name] += n
        return figures

    def summary(self) -> list[str]:
        """One line per figure: p99, max, min and sample count; then the counts."""
        lines = []
        for name, values in sorted(self.samples.items()):
            lines.append(
                f"{name}: p99 {p99(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms, "
                f"min {min(values) * 1000:.0f} ms, n={len(values)}"
            )
        lines += [f"{name}: {n}" for name, n in sorted(self.counts.items())]
        return lines


# -- the store, seen from outside -----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """The columns of a task row the checks need."""

    id: str
    status: str
    attempts: int
    crashes: int
    lease_token: str | None
    lease_until: float | None
    worker_id: str | None
    error: str | None
    history: str | None
    result: bytes | None
    cancel_requested: int


class StoreView:
    """Reads the SQLite store with its own connection (autocommit: never a long read
    transaction that would hold the WAL back)."""

    _COLUMNS = (
        "id, status, attempts, crashes, lease_token, lease_until, worker_id, error, history, "
        "result, cancel_requested"
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        return self._conn

    def rows(self, ids: Sequence[str] | None = None) -> dict[str, Row]:
        """Rows by id: all of them, or those of ``ids``."""
        conn = self._connection()
        if ids is None:
            found = conn.execute(f"SELECT {self._COLUMNS} FROM tasks").fetchall()
        else:
            found = []
            ids = list(ids)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                found += conn.execute(
                    f"SELECT {self._COLUMNS} FROM tasks WHERE id IN ({marks})", chunk
                ).fetchall()
        return {r[0]: Row(*r) for r in found}

    def row(self, task_id: str) -> Row | None:
        """One task's row, or None."""
        return self.rows([task_id]).get(task_id)

    def integrity(self) -> str:
        """What ``PRAGMA integrity_check`` says (``ok`` when sound)."""
        return str(self._connection().execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ApiStoreView:
    """The same view of any backend, through the Storage protocol (the file store here);
    ``integrity`` checks what I7 asks of file storage: no temp file left visible."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _call(self, op: Callable[[Any], Any]) -> Any:
        async def run() -> Any:
            storage = open_storage(self.settings)
            await storage.open()
            try:
                return await op(storage)
            finally:
                await storage.close()

        return asyncio.run(run())

    def rows(self, ids: Sequence[str] | None = None) -> dict[str, Row]:
        """Rows by id: all of them, or those of ``ids``."""

        async def read(storage: Any) -> list[Task]:
            if ids is not None:
                return list(await storage.get_many(list(ids)))
            found: list[Task] = []
            for status in TaskStatus:
                found += await storage.list_tasks(status, None, 10**9)
            return found

        return {t.id: _row(t) for t in self._call(read)}

    def row(self, task_id: str) -> Row | None:
        """One task's row, or None."""
        return self.rows([task_id]).get(task_id)

    def integrity(self) -> str:
        """``ok``, or the temp and quarantined files found."""
        base = Path(self.settings.base_dir)
        leftovers = [str(p) for p in base.rglob("*.tmp")]
        quarantined = [p.name for p in (base / "quarantine").glob("*")]
        if leftovers or quarantined:
            return f"temp files {leftovers[:5]}, quarantined {quarantined[:5]}"
        return "ok"

    def close(self) -> None:
        """Nothing held between calls."""
        pass


def _row(task: Task) -> Row:
    return Row(
        task.id,
        task.status.value,
        task.attempts,
        task.crashes,
        task.lease_token,
        task.lease_until,
        task.worker_id,
        None if task.error is None else json.dumps(task.error.to_dict()),
        json.dumps([e.to_dict() for e in task.history]) if task.history else None,
        task.result,
        int(task.cancel_requested),
    )


class WriteLock:
    """Another process's view of a busy store: holds ``BEGIN IMMEDIATE`` (the write lock)
    for ``seconds`` from a thread with its own connection (row 20)."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        self.acquired = threading.Event()
        self.acquired_ns = 0
        self.released_ns = 0
        self._thread = threading.Thread(target=self._hold, name="write-lock", daemon=True)

    def start(self) -> WriteLock:
        """Take the lock (in the thread) and return once it is held."""
        self._thread.start()
        if not self.acquired.wait(30):
            raise AssertionError("could not take the store's write lock within 30 s")
        return self

    def join(self) -> None:
        """Wait until the lock was released."""
        self._thread.join(timeout=self.seconds + 30)

    def _hold(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self.acquired_ns = now_ns()
            self.acquired.set()
            time.sleep(self.seconds)
            conn.execute("ROLLBACK")
            self.released_ns = now_ns()
        finally:
            conn.close()


# -- producing ------------------------------------------------------------------------------


@dataclass
class Producer:
    """Enqueues ledger tasks through the public API (a bare ``OmniQ``: producer only) and
    remembers what was committed (id -> key) and what raised (I2)."""

    base_dir: Path
    committed: dict[str, str] = field(default_factory=dict)
    raised: list[str] = field(default_factory=list)
    expect: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> expectations
    _q: OmniQ | None = None

    settings: Settings | None = None

    def queue(self) -> OmniQ:
        """The producer's ``OmniQ`` (opened on first use)."""
        if self._q is None:
            settings = self.settings or Settings(base_dir=self.base_dir, event_storage_type="none")
            self._q = OmniQ(settings)
        return self._q

    def build(self, func: Callable[..., Any], key: str, *args: Any, **options: Any) -> Task:
        """Build a task calling ``func(key, *args)``; not stored yet."""
        return self.queue().build(func, key, *args, **options)

    def enqueue(self, tasks: Sequence[tuple[str, Task]], **expect: Any) -> list[str]:
        """Enqueue ``(key, task)`` pairs in one transaction; ``expect`` is recorded for
        every key (e.g. ``retries=1`` for a task designed to fail once)."""
        try:
            ids = self.queue().enqueue_tasks([task for _, task in tasks])
        except Exception:
            self.raised += [task.id for _, task in tasks]
            raise
        for (key, _), task_id in zip(tasks, ids, strict=True):
            self.committed[task_id] = key
            self.expect[key] = dict(expect)
        return ids

    def add(self, func: Callable[..., Any], key: str, *args: Any, **options: Any) -> str:
        """Build and enqueue one task; options go to the task except ``expect``."""
        expect = options.pop("expect", {})
        [task_id] = self.enqueue([(key, self.build(func, key, *args, **options))], **expect)
        return task_id

    def cancel(self, task_id: str) -> bool:
        """Cancel a task through the public API."""
        return self.queue().cancel(task_id)

    def close(self) -> None:
        """Close the producer's ``OmniQ``."""
        if self._q is not None:
            self._q.close()
            self._q = None


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


# -- a whole test setup ----------------------------------------------------------------------


class Rig:
    """One store, its ledger and DeathWatch, the supervisors started on it, the producer,
    the fault log and the figures: what a matrix test (or the chaos runner) drives, and
    what :meth:`finish` hands to the invariant checker."""

    def __init__(self, root: Path, backend: str = "sqlite", start_method: str = "") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.base_dir = root / "store"
        self.ledger = root / "ledger"
        self.ledger.touch()
        self.backend = backend
        self.env = {"OMNIQ_BACKEND": backend}
        if start_method:  # row 36: the supervisors' workers under another start method
            self.env["OMNIQ_START_METHOD"] = start_method
        self.watch = DeathWatch(self.ledger).start()
        self.faults = FaultLog()
        self.figures = Figures()
        settings = Settings(base_dir=self.base_dir, backend=backend, event_storage_type="none")
        self.producer = Producer(self.base_dir)
        self.producer.settings = settings
        self.store: StoreView | ApiStoreView = (
            StoreView(self.base_dir / "omniq.db") if backend == "sqlite" else ApiStoreView(settings)
        )
        self.supervisors: list[Supervisor] = []
        self.findings: list[str] = []  # I6, found by the harness
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self._count = 0

    # -- supervisors ------------------------------------------------------------------------

    def supervisor(
        self,
        *args: str,
        name: str | None = None,
        env: dict[str, str] | None = None,
        module: str = "omniq_mp",
        command: str = "workers",
        wait: bool = True,
    ) -> Supervisor:
        """Start a supervisor on this store (``args`` after ``workers``); by default
        wait until its workers are up."""
        self._count += 1
        sup = Supervisor(
            name or f"supervisor{self._count}",
            self.base_dir,
            self.ledger,
            args,
            module=module,
            command=command,
            env={**self.env, **(env or {})},
        )
        self.supervisors.append(sup)
        if wait:
            sup.wait_workers()
        return sup

    def kill(self, sup: Supervisor, kind: str = "supervisor SIGKILL") -> Fault:
        """SIGKILL a supervisor; its whole tree must be gone within 1 s (I6)."""
        tree = sup.tree()
        fault = self.faults.add(kind, sup.name)
        sup.signal(signal.SIGKILL)
        sup.wait(10)
        # The kill lands somewhere between these two times (this thread may be preempted
        # before os.kill): an attempt started in between was hit too.
        fault.until = now_ns()
        self.expect_gone(
            tree,
            f"{sup.name}'s processes after its SIGKILL",
            "worker death after supervisor SIGKILL",
        )
        return fault

    def expect_gone(self, pids: Sequence[int], what: str, figure: str | None = None) -> None:
        """I6: ``pids`` must all be gone within 1 s; a finding otherwise."""
        left, took = wait_gone(pids, 1.0)
        if figure is not None and pids:
            self.figures.sample(figure, took)
        self.figures.count("orphans 1 s after a kill", len(left))
        if left:
            self.findings.append(f"{what}: {len(left)} still running 1 s later: {left}")

    def wait_crash(self, sup: Supervisor, within: float = 60.0) -> int:
        """Wait for a supervisor to die by itself (a crash point), watching its tree so
        that whatever it leaves behind is checked (I6). Returns its exit status."""
        tree: list[int] = []
        deadline = time.monotonic() + within
        while sup.running():
            if time.monotonic() > deadline:
                raise AssertionError(f"{sup.name} did not crash within {within}s:\n{sup.stderr()}")
            tree = sup.tree() or tree
            time.sleep(0.02)
        self.faults.add("crash point", sup.name)
        self.expect_gone(tree, f"{sup.name}'s processes after its crash")
        return sup.proc.returncode

    # -- the store --------------------------------------------------------------------------

    def drain(self, within: float) -> None:
        """Wait until every committed task is terminal."""
        ids = list(self.producer.committed)

        def done() -> bool:
            rows = self.store.rows(ids)
            return all(
                r.status in ("COMPLETED", "FAILED", "DEAD", "CANCELLED") for r in rows.values()
            ) and len(rows) == len(ids)

        try:
            wait_until(done, within, "every committed task terminal")
        except AssertionError:
            rows = self.store.rows(ids)
            stuck = [
                f"{r.id} {self.producer.committed[r.id]} {r.status}"
                for r in rows.values()
                if r.status in ("PENDING", "RUNNING")
            ]
            logs = "\n".join(f"--- {s.name}\n{s.stderr()}" for s in self.supervisors)
            raise AssertionError(
                f"not drained within {within}s; unfinished: {stuck[:10]}\n{logs}"
            ) from None

    def wait_started(
        self,
        count: int,
        keys: Callable[[str], bool] = lambda _: True,
        within: float = 30.0,
        since_ns: int = 0,
    ) -> list[Record]:
        """Wait until ``count`` attempts (of keys matching, started at ``since_ns`` or
        later) have started and not ended."""
        tail = LedgerTail(self.ledger)
        open_: dict[tuple[str, int], Record] = {}

        def enough() -> bool:
            for rec in tail.read():
                ident = (rec.key, rec.attempt)
                if rec.event == "start" and keys(rec.key) and rec.ns >= since_ns:
                    open_[ident] = rec
                elif rec.event in ("end", "died"):
                    open_.pop(ident, None)
            return len(open_) >= count

        try:
            wait_until(enough, within, f"{count} attempts running")
        finally:
            tail.close()
        return list(open_.values())

    # -- the end ----------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every supervisor still running, gracefully; each must exit 0."""
        for sup in self.supervisors:
            if sup.running():
                code = sup.stop()
                if code != 0:
                    self.findings.append(f"{sup.name} exited {code} on SIGTERM:\n{sup.stderr()}")

    def strays(self) -> list[int]:
        """Our live descendants that were not there when the rig was made."""
        reap()
        return [
            p.pid
            for p in psutil.Process().children(recursive=True)
            if p.pid not in self._before and alive(p.pid)
        ]

    def finish(self) -> Any:
        """Stop the supervisors, check no process is left (I6), then I1-I5 and I7."""
        from tests.reliability.invariants import check

        self.stop_all()
        left, _ = wait_gone(self.strays(), 1.0)
        if left:
            self.findings.append(f"processes left after every supervisor stopped: {left}")
        self.watch.sync()
        report = check(
            ledger_path=self.ledger,
            store=self.store,
            producer=self.producer,
            faults=self.faults,
            logs=[s.log_path for s in self.supervisors],
        )
        for finding in self.findings:
            report.process(finding)
        return report

    def close(self) -> None:
        """Kill whatever still runs, stop the DeathWatch, close the producer and the view."""
        for sup in self.supervisors:
            if sup.running():
                sup.signal(signal.SIGCONT)
                sup.signal(signal.SIGKILL)
                sup.wait(10)
        for pid in self.strays():
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        reap()
        self.watch.stop()
        self.producer.close()
        self.store.close()
