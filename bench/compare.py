"""omniq_mp side by side with the stdlib ProcessPoolExecutor, pebble and Huey, in one run.

Every system runs the same workloads on this machine, 2 worker processes each, and every
run is checked by counting correct results. Each workload is repeated (3 times, once
with ``--quick``); the table shows the median (with min-max in the detailed output) and
omniq_mp's ratio to each anchor.

* Huey uses ``SqliteHuey`` (WAL, ``fsync=True``: synchronous=FULL, as omniq_mp's default)
  and a consumer with 2 process workers, started as a subprocess.
* The pools keep everything in memory: they are the ceiling a durable queue is measured
  against, not a like-for-like alternative.
* omniq_mp uses its SQLite default (synchronous=FULL): every acknowledged enqueue and
  every stored result survives power loss.

Workloads: durable no-op (enqueue, drain, end to end), single and batched enqueue,
enqueue from concurrent producers (threads, and coroutines against Huey's threads), idle
enqueue-to-result latency from another process, CPU-bound efficiency (200 x 20 ms),
timeout settling, and memory (supervisor RSS and child USS, idle and with a backlog).

``--plot PATH`` draws omniq_mp's ratios as a bar chart (matplotlib): the README's plot is
``python bench/compare.py --plot bench/compare.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import math
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _common import (
    env_for,
    format_number,
    machine_line,
    markdown_table,
    percentile,
    scratch_dir,
)

HERE = Path(__file__).resolve().parent
PROCS = 2
PRODUCERS = 8  # threads enqueueing at once
COROUTINES = 64  # coroutines enqueueing at once
SYSTEMS = ("omniq_mp", "ProcessPoolExecutor", "pebble", "huey")
ANCHORS = SYSTEMS[1:]


@dataclass
class Row:
    """One workload's samples per system."""

    workload: str
    unit: str
    higher_is_better: bool
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, system: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(system, []).append(value)

    def median(self, system: str) -> float | None:
        values = self.samples.get(system)
        return statistics.median(values) if values else None

    def ratio(self, anchor: str) -> float | None:
        """omniq_mp's advantage over ``anchor``: > 1 means omniq_mp is better."""
        ours, theirs = self.median("omniq_mp"), self.median(anchor)
        if ours is None or theirs is None or ours == 0 or theirs == 0:
            return None
        return ours / theirs if self.higher_is_better else theirs / ours


# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def background(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess stopped with SIGTERM (then SIGKILL) afterwards."""
    process = subprocess.Popen(command, env=env, cwd=HERE, stdout=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def check(got: int, want: int, what: str) -> None:
    if got != want:
        raise RuntimeError(f"{what}: {got} correct results out of {want}")


# -- omniq_mp --------------------------------------------------------------------------------


def omniq_durable(n: int) -> tuple[float, float, float, float]:
    """(batched enqueue/s, single enqueue/s, drain results/s, end-to-end tasks/s)."""
    from anchor_tasks import noop

    from omniq_mp import AsyncOmniQ, Settings
    from omniq_mp.runtime import run

    async def main(base_dir: Path) -> tuple[float, float, float, float]:
        q = AsyncOmniQ(Settings(base_dir=base_dir / "a", procs=PROCS, event_storage_type="sqlite"))
        await q.open()
        try:
            async with q.worker_pool(concurrency=PROCS) as workers:
                began = time.perf_counter()
                for start in range(0, n, 1000):
                    await q.enqueue_tasks([q.build(noop) for _ in range(min(1000, n - start))])
                enqueued = time.perf_counter()
                done = await workers.process_tasks(limit=n)
                finished = time.perf_counter()
            check(done, n, "omniq_mp drain")
            stats = await q.stats()
            check(stats.completed, n, "omniq_mp completed")
        finally:
            await q.close()
        single = AsyncOmniQ(Settings(base_dir=base_dir / "b", event_storage_type="sqlite"))
        await single.open()
        try:
            m = max(n // 5, 50)
            with_timer = time.perf_counter()
            for _ in range(m):
                await single.enqueue(noop)
            single_rate = m / (time.perf_counter() - with_timer)
        finally:
            await single.close()
        return (
            n / (enqueued - began),
            single_rate,
            n / (finished - enqueued),
            n / (finished - began),
        )

    with scratch_dir() as base_dir:
        return run(main(base_dir))


def omniq_enqueue_sync(n: int) -> float:
    """Tasks/s of one ``OmniQ.enqueue`` call and one fully synced commit each: the
    synchronous client of scripts and notebooks, which commits from the caller's thread."""
    from anchor_tasks import noop

    from omniq_mp import OmniQ

    with scratch_dir() as base_dir:
        q = OmniQ(base_dir=base_dir, event_storage_type="sqlite")
        try:
            q.enqueue(noop)  # opens the stores
            began = time.perf_counter()
            for _ in range(n):
                q.enqueue(noop)
            rate = n / (time.perf_counter() - began)
            check(q.stats().pending, n + 1, "omniq_mp sync enqueues")
        finally:
            q.close()
    return rate


def in_threads(threads: int, calls: int, call: Callable[[], object]) -> float:
    """Calls/s of ``call`` made ``calls`` times in all, shared by ``threads`` threads."""
    each = calls // threads
    workers = [
        threading.Thread(target=lambda: [call() for _ in range(each)]) for _ in range(threads)
    ]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return each * threads / (time.perf_counter() - began)


def omniq_enqueue_threads(n: int) -> float:
    """Tasks/s of ``OmniQ.enqueue`` called from :data:`PRODUCERS` threads at once (a
    threaded web app): calls that meet a commit under way share the next one."""
    from anchor_tasks import noop

    from omniq_mp import OmniQ

    with scratch_dir() as base_dir:
        q = OmniQ(base_dir=base_dir, event_storage_type="sqlite")
        try:
            q.enqueue(noop)  # opens the stores
            rate = in_threads(PRODUCERS, n, lambda: q.enqueue(noop))
            check(q.stats().pending, n // PRODUCERS * PRODUCERS + 1, "omniq_mp thread enqueues")
        finally:
            q.close()
    return rate


def omniq_enqueue_gathered(n: int) -> float:
    """Tasks/s of ``AsyncOmniQ.enqueue`` awaited by :data:`COROUTINES` coroutines at once
    (an asyncio web app)."""
    from anchor_tasks import noop

    from omniq_mp import AsyncOmniQ, Settings
    from omniq_mp.runtime import run

    each = n // COROUTINES

    async def main(base_dir: Path) -> float:
        q = AsyncOmniQ(Settings(base_dir=base_dir, event_storage_type="sqlite"))
        await q.open()
        try:

            async def producer() -> None:
                for _ in range(each):
                    await q.enqueue(noop)

            began = time.perf_counter()
            await asyncio.gather(*(producer() for _ in range(COROUTINES)))
            rate = each * COROUTINES / (time.perf_counter() - began)
            check((await q.stats()).pending, each * COROUTINES, "omniq_mp gathered enqueues")
            return rate
        finally:
            await q.close()

    with scratch_dir() as base_dir:
        return run(main(base_dir))


def omniq_enqueue_many(n: int) -> float:
    """Tasks/s stored by ``OmniQ.enqueue_many`` (1,000 per transaction, each batch built
    and then committed in the calling thread), pickling included."""
    from anchor_tasks import noop

    from omniq_mp import OmniQ

    with scratch_dir() as base_dir:
        q = OmniQ(base_dir=base_dir, event_storage_type="none")
        try:
            began = time.perf_counter()
            ids = q.enqueue_many(noop, [()] * n)
            rate = n / (time.perf_counter() - began)
            check(len(set(ids)), n, "omniq_mp enqueue_many")
            return rate
        finally:
            q.close()


def omniq_cpu(count: int, seconds: float) -> float:
    """Wall time of ``count`` CPU-bound tasks on a running supervisor, over the ideal."""
    from anchor_tasks import burn

    from omniq_mp import AsyncOmniQ, Settings
    from omniq_mp.runtime import run

    async def main(base_dir: Path) -> float:
        q = AsyncOmniQ(Settings(base_dir=base_dir, procs=PROCS))
        await q.open()
        try:
            await q.enqueue_tasks([q.build(burn, seconds) for _ in range(count)])
            async with q.worker_pool(concurrency=PROCS) as workers:
                began = time.perf_counter()
                done = await workers.process_tasks(limit=count)
                wall = time.perf_counter() - began
            check(done, count, "omniq_mp cpu-bound")
        finally:
            await q.close()
        return wall / (count * seconds / PROCS)

    with scratch_dir() as base_dir:
        return run(main(base_dir))


def omniq_latency(samples: int, synchronous: str = "FULL") -> list[float]:
    """Enqueue-to-result milliseconds from this process to ``omniq-mp workers`` (idle),
    both sides with the given ``sqlite_synchronous``."""
    from anchor_tasks import noop

    from omniq_mp import OmniQ

    with scratch_dir() as base_dir:
        command = [sys.executable, "-m", "omniq_mp", "workers", "--procs", str(PROCS)]
        with background(command, env_for(base_dir, OMNIQ_SQLITE_SYNCHRONOUS=synchronous)):
            q = OmniQ(base_dir=base_dir, sqlite_synchronous=synchronous)
            try:
                wait_until(lambda: bool(q.get_worker_stats()), 30, "omniq-mp workers to start")
                q.get_result(q.enqueue(noop), timeout=30)  # warm
                times = []
                for _ in range(samples):
                    time.sleep(0.02)  # idle between requests
                    began = time.perf_counter()
                    value = q.get_result(q.enqueue(noop), timeout=30)
                    times.append((time.perf_counter() - began) * 1000)
                    check(value, 1, "omniq_mp latency")
            finally:
                q.close()
    return times


def omniq_memory(backlog: int) -> tuple[float, float, float, float]:
    """(supervisor RSS MiB idle, child USS MiB idle, supervisor RSS MiB and child USS MiB
    with ``backlog`` tasks queued, the children each running one of them)."""
    from anchor_tasks import sleep

    from omniq_mp import OmniQ

    def measure(base_dir: Path) -> tuple[float, float]:
        command = [sys.executable, "-m", "omniq_mp", "workers", "--procs", str(PROCS)]
        env = env_for(base_dir, OMNIQ_SHUTDOWN_GRACE="0")
        with background(command, env) as process:
            supervisor = psutil.Process(process.pid)
            wait_until(lambda: len(omniq_workers(supervisor)) >= PROCS, 30, "workers to start")
            time.sleep(2.0)  # let claims, leases and heartbeats settle
            return supervisor.memory_info().rss / 2**20, max_uss(omniq_workers(supervisor))

    with scratch_dir() as base_dir:
        idle_rss, child_uss = measure(base_dir / "idle")
        q = OmniQ(base_dir=base_dir / "busy", event_storage_type="none")
        try:
            for start in range(0, backlog, 10_000):
                q.enqueue_tasks([q.build(sleep, 30) for _ in range(min(10_000, backlog - start))])
        finally:
            q.close()
        busy_rss, busy_uss = measure(base_dir / "busy")
    return idle_rss, child_uss, busy_rss, busy_uss


def omniq_workers(supervisor: psutil.Process) -> list[psutil.Process]:
    """The worker processes of an ``omniq-mp workers``: its forkserver's children. (Its
    own children are that forkserver and multiprocessing's resource tracker, neither of
    which runs tasks: before the twentieth session this measured the tracker.)"""
    servers = [c for c in supervisor.children() if "forkserver" in " ".join(c.cmdline())]
    return [worker for server in servers for worker in server.children()]


def omniq_idle_cpu(seconds: float) -> float:
    """Percent of one core used by an idle ``omniq-mp workers`` (supervisor and children)
    over ``seconds``, after it has settled."""
    command = [sys.executable, "-m", "omniq_mp", "workers", "--procs", str(PROCS)]
    with scratch_dir() as base_dir, background(command, env_for(base_dir)) as process:
        supervisor = psutil.Process(process.pid)
        wait_until(lambda: len(omniq_workers(supervisor)) >= PROCS, 30, "workers to start")
        time.sleep(3.0)  # past start-up and the first heartbeats

        def used() -> float:
            return sum(cpu_used(p) for p in [supervisor, *supervisor.children(recursive=True)])

        before, began = used(), time.monotonic()
        time.sleep(seconds)
        return 100 * (used() - before) / (time.monotonic() - began)


def cpu_used(process: psutil.Process) -> float:
    """Seconds of CPU a process has used: the nanosecond sum of its threads' run time
    where Linux gives it (``schedstat``), else psutil's user + system, which counts 10 ms
    ticks: too coarse for the few milliseconds a second an idle process uses."""
    total_ns = 0
    try:
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that has just ended
                total_ns += int((task / "schedstat").read_text().split()[0])
    except OSError:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            return times.user + times.system
        return 0.0
    return total_ns / 1e9


# -- the in-memory pools ---------------------------------------------------------------------


def pool_factories() -> dict[str, Callable[[], concurrent.futures.Executor]]:
    import pebble

    def pebble_pool() -> concurrent.futures.Executor:
        return _PebbleExecutor(pebble.ProcessPool(max_workers=PROCS))

    return {
        "ProcessPoolExecutor": lambda: concurrent.futures.ProcessPoolExecutor(PROCS),
        "pebble": pebble_pool,
    }


class _PebbleExecutor(concurrent.futures.Executor):
    """pebble's ProcessPool behind the Executor interface (its ``schedule`` takes a
    ``timeout``, which the timeout workload uses)."""

    def __init__(self, pool: object) -> None:
        self.pool = pool

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.pool.schedule(fn, args=args, kwargs=kwargs)  # type: ignore[attr-defined]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.close()  # type: ignore[attr-defined]
        self.pool.join()  # type: ignore[attr-defined]


def pool_noop(make: Callable[[], concurrent.futures.Executor], n: int) -> float:
    from anchor_tasks import noop

    with make() as pool:
        concurrent.futures.wait([pool.submit(noop) for _ in range(PROCS * 4)])  # warm
        began = time.perf_counter()
        futures = [pool.submit(noop) for _ in range(n)]
        check(sum(f.result() for f in futures), n, "pool no-op")
        return n / (time.perf_counter() - began)


def pool_cpu(make: Callable[[], concurrent.futures.Executor], count: int, seconds: float) -> float:
    from anchor_tasks import burn

    with make() as pool:
        concurrent.futures.wait([pool.submit(burn, 0.001) for _ in range(PROCS)])  # warm
        began = time.perf_counter()
        futures = [pool.submit(burn, seconds) for _ in range(count)]
        check(sum(f.result() for f in futures), count, "pool cpu-bound")
        return (time.perf_counter() - began) / (count * seconds / PROCS)


def pool_latency(make: Callable[[], concurrent.futures.Executor], samples: int) -> list[float]:
    from anchor_tasks import noop

    with make() as pool:
        pool.submit(noop).result()
        times = []
        for _ in range(samples):
            time.sleep(0.02)
            began = time.perf_counter()
            check(pool.submit(noop).result(), 1, "pool latency")
            times.append((time.perf_counter() - began) * 1000)
    return times


def pool_memory(
    make: Callable[[], concurrent.futures.Executor], backlog: int
) -> tuple[float, float, float, float]:
    """As :func:`omniq_memory`, for a pool in this process (the parent is the supervisor)."""
    from anchor_tasks import hold, noop

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}  # e.g. omniq_mp's forkserver
    with scratch_dir() as scratch, make() as pool:
        release = scratch / "release"
        pool.submit(noop).result()
        time.sleep(1.0)
        workers = [p for p in me.children(recursive=True) if p.pid not in before]
        uss = max_uss(workers)
        idle = me.memory_info().rss / 2**20
        futures = [pool.submit(hold, str(release), 60) for _ in range(backlog)]
        time.sleep(1.0)
        busy = me.memory_info().rss / 2**20
        busy_uss = max_uss(workers)
        # Cancel the backlog and let the few tasks already handed to workers return, so
        # the pool shuts down cleanly (killing its workers made the stdlib pool's manager
        # thread print an InvalidStateError for the cancelled futures).
        for future in futures:
            future.cancel()
        release.touch()
    return idle, uss, busy, busy_uss


def max_uss(processes: list[psutil.Process]) -> float:
    """The largest USS among ``processes``, in MiB (0 for none)."""
    return max((p.memory_full_info().uss for p in processes), default=0) / 2**20


# -- timeouts --------------------------------------------------------------------------------

TIMEOUT = 0.2  # seconds each overrunning task is allowed
GRACE = 0.5  # omniq_mp's SIGTERM-to-SIGKILL grace (its default kill_grace)


@dataclass
class Kills:
    """Milliseconds after each overrunning task's deadline until its outcome was recorded
    (pebble: its future failed), its process was gone, and (omniq_mp) a replacement
    process was ready for work."""

    recorded: list[float] = field(default_factory=list)
    gone: list[float] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)

    def add(self, watch: ExitWatch, recorded: float, ready: float | None = None) -> None:
        """One task's figures: its watch (its process is gone by now), and the
        ``time.monotonic()`` of its outcome recorded and of its replacement ready."""
        deadline = watch.deadline()
        self.recorded.append((recorded - deadline) * 1000)
        self.gone.append((watch.gone - deadline) * 1000)
        if ready is not None:
            self.ready.append((ready - deadline) * 1000)


class ExitWatch:
    """Dates one ``anchor_tasks.overrun`` task: its start, which it reports to a datagram
    socket, and its process's exit, a pidfd turning readable. A thread of its own sleeps
    in the kernel until each happens, so the watch does not disturb what it times."""

    def __init__(self, folder: Path) -> None:
        self.address = str(folder / "overrun.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self._socket.settimeout(30)
        self.started = self.gone = math.nan
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        with self._socket:
            pid, started = self._socket.recv(64).decode().split()
        exit_fd = os.pidfd_open(int(pid))
        try:
            select.select([exit_fd], [], [], 30)
            self.gone = time.monotonic()
        finally:
            os.close(exit_fd)
        self.started = float(started)

    def deadline(self) -> float:
        """The task's deadline (``time.monotonic()``), once its process is gone."""
        self._thread.join(40)
        if math.isnan(self.gone):
            raise RuntimeError("an overrunning task never reported, or its process never exited")
        return self.started + TIMEOUT


def omniq_timeout(samples: int, ignore_term: bool = False) -> Kills:
    """Overrunning tasks, one at a time, through the whole stack (store, supervisor, pool);
    with ``ignore_term`` each task shrugs off SIGTERM, so only the SIGKILL after the
    grace ends it."""
    from anchor_tasks import overrun

    from omniq_mp import AsyncOmniQ, Settings, TaskStatus
    from omniq_mp.runtime import run

    async def main(base_dir: Path) -> Kills:
        q = AsyncOmniQ(Settings(base_dir=base_dir, procs=PROCS, kill_grace=GRACE))
        await q.open()
        kills, respawned, settled = Kills(), list[float](), list[float]()
        try:
            async with q.worker_pool(concurrency=PROCS) as workers:
                pool, earlier = workers.pool, workers.pool.on_respawn

                def replaced(old_pid: int, new_pid: int) -> None:
                    respawned.append(time.monotonic())
                    if earlier is not None:
                        earlier(old_pid, new_pid)

                pool.on_respawn = replaced
                workers.on_settled.append(lambda *_: settled.append(time.monotonic()))
                for sample in range(samples):
                    watch = ExitWatch(base_dir)
                    task_id = await q.enqueue(
                        overrun, watch.address, ignore_term, timeout=TIMEOUT, max_retries=0
                    )
                    await workers.process_tasks(limit=1)
                    task = await q.get_task(task_id)
                    assert task is not None and task.status is TaskStatus.FAILED
                    async with asyncio.timeout(30):  # the next sample starts on a full pool
                        while len(respawned) <= sample or pool.idle() < pool.size:
                            await asyncio.sleep(0.005)
                    kills.add(watch, settled[sample], respawned[sample])
        finally:
            await q.close()
        return kills

    with scratch_dir() as base_dir:
        return run(main(base_dir))


def pebble_timeout(samples: int, ignore_term: bool = False) -> Kills:
    """The same overrunning tasks on pebble's ProcessPool, its ``timeout`` set."""
    import pebble
    from anchor_tasks import noop, overrun

    kills = Kills()
    pool = pebble.ProcessPool(max_workers=PROCS)
    try:
        pool.schedule(noop).result()
        with scratch_dir() as folder:
            for _ in range(samples):
                watch = ExitWatch(folder)
                future = pool.schedule(overrun, args=(watch.address, ignore_term), timeout=TIMEOUT)
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    future.result()
                    raise RuntimeError("pebble ran an overrunning task to its end")
                kills.add(watch, time.monotonic())
    finally:
        pool.stop()
        pool.join()
    return kills


# -- Huey ------------------------------------------------------------------------------------


def huey_consumer(**options: str) -> list[str]:
    """The command that runs Huey's consumer: 2 process workers, ``options`` as given."""
    chosen = {"workers": str(PROCS), "worker_type": "'process'", **options}
    args = ", ".join(f"{k}={v}" for k, v in chosen.items())
    return [
        sys.executable,
        "-c",
        f"from huey_tasks import huey; huey.create_consumer({args}).run()",
    ]


def huey_durable(n: int) -> tuple[float, float, float]:
    """(single enqueue/s, stored results/s, end to end tasks/s)."""
    with scratch_dir() as base_dir:
        db = base_dir / "huey.db"
        os.environ["BENCH_HUEY_DB"] = str(db)
        import importlib

        import huey_tasks

        importlib.reload(huey_tasks)
        huey = huey_tasks.huey
        began = time.perf_counter()
        for _ in range(n):
            huey_tasks.huey_noop()
        enqueued = time.perf_counter()
        env = env_for(base_dir, BENCH_HUEY_DB=str(db))
        command = huey_consumer(initial_delay="0.001", max_delay="0.01")
        with background(command, env):
            wait_until(lambda: huey.result_count() >= 1, 60, "Huey's first result")
            first = time.perf_counter()
            first_count = huey.result_count()
            wait_until(lambda: huey.result_count() >= n, 300, "Huey to store every result")
            finished = time.perf_counter()
        check(huey.result_count(), n, "huey results")
        drain = (n - first_count) / (finished - first)
        # End to end: enqueue time plus the drain at its measured rate (the consumer's
        # start-up is left out, as the pools' and omniq_mp's are).
        return n / (enqueued - began), drain, n / ((enqueued - began) + n / drain)


def huey_enqueue_threads(n: int) -> float:
    """Tasks/s of Huey's enqueue called from :data:`PRODUCERS` threads at once."""
    with scratch_dir() as base_dir:
        os.environ["BENCH_HUEY_DB"] = str(base_dir / "huey.db")
        import importlib

        import huey_tasks

        importlib.reload(huey_tasks)
        huey_tasks.huey_noop()  # opens the database
        rate = in_threads(PRODUCERS, n, huey_tasks.huey_noop)
        check(len(huey_tasks.huey), n // PRODUCERS * PRODUCERS + 1, "huey thread enqueues")
    return rate


def huey_latency(samples: int, fast_poll: bool) -> list[float]:
    with scratch_dir() as base_dir:
        db = base_dir / "huey.db"
        os.environ["BENCH_HUEY_DB"] = str(db)
        import importlib

        import huey_tasks

        importlib.reload(huey_tasks)
        options = (
            {"initial_delay": "0.001", "backoff": "1.0", "max_delay": "0.001"} if fast_poll else {}
        )
        with background(huey_consumer(**options), env_for(base_dir, BENCH_HUEY_DB=str(db))):
            huey_tasks.huey_noop().get(blocking=True, timeout=30)
            times = []
            for _ in range(samples):
                time.sleep(0.02)
                began = time.perf_counter()
                check(
                    huey_tasks.huey_noop().get(
                        blocking=True, timeout=30, backoff=1.0, max_delay=0.0005
                    ),
                    1,
                    "huey latency",
                )
                times.append((time.perf_counter() - began) * 1000)
    return times


def huey_cpu(count: int, seconds: float) -> float:
    with scratch_dir() as base_dir:
        db = base_dir / "huey.db"
        os.environ["BENCH_HUEY_DB"] = str(db)
        import importlib

        import huey_tasks

        importlib.reload(huey_tasks)
        huey = huey_tasks.huey
        for _ in range(count):
            huey_tasks.huey_burn(seconds)
        command = huey_consumer(initial_delay="0.001", max_delay="0.01")
        with background(command, env_for(base_dir, BENCH_HUEY_DB=str(db))):
            wait_until(lambda: huey.result_count() >= 1, 60, "Huey's first result")
            # The first result ends one task's run: the clock starts one task earlier.
            first = time.perf_counter() - seconds
            wait_until(lambda: huey.result_count() >= count, 300, "Huey cpu-bound")
            wall = time.perf_counter() - first
        return wall / (count * seconds / PROCS)


# -- the run ---------------------------------------------------------------------------------


MEMORY_ROWS = ("rss", "uss", "rss_backlog", "uss_backlog")  # as omniq_memory returns them


def measure(quick: bool) -> list[Row]:
    repeats = 1 if quick else 3
    n = 500 if quick else 20_000  # seconds per drain: one stall of the machine moves it less
    many = 20_000 if quick else 200_000
    latency_samples = 20 if quick else 200
    cpu_count, cpu_seconds = (40, 0.02) if quick else (200, 0.02)
    timeout_samples = 5 if quick else 30
    stubborn_samples = 2 if quick else 10  # pebble waits 3 s for each to end on SIGTERM
    backlog = 10_000 if quick else 100_000

    rows = {
        "drain": Row(f"durable no-op drain, {n:,} tasks (stored results/s)", "tasks/s", True),
        "e2e": Row(f"durable no-op end to end, {n:,} tasks", "tasks/s", True),
        "enqueue": Row("enqueue, one call and one commit each, sync client", "tasks/s", True),
        "enqueue_async": Row(
            "enqueue, one call and one commit each, asyncio client", "tasks/s", True
        ),
        "threads": Row(f"enqueue from {PRODUCERS} threads at once, sync client", "tasks/s", True),
        "gathered": Row(
            f"enqueue from {COROUTINES} coroutines at once, asyncio client", "tasks/s", True
        ),
        "batched": Row("enqueue in batches of 1,000", "tasks/s", True),
        "many": Row(f"enqueue_many, {many:,} tasks", "tasks/s", True),
        "lat50": Row("idle enqueue-to-result, p50", "ms", False),
        "lat99": Row("idle enqueue-to-result, p99", "ms", False),
        "lat50_normal": Row("idle enqueue-to-result, p50, synchronous=NORMAL", "ms", False),
        # Huey's best case: its consumer polling every millisecond (a core's worth of
        # wake-ups while idle), against omniq_mp's figure above (no polling).
        "lat50_poll": Row("idle enqueue-to-result, p50, Huey polling every 1 ms", "ms", False),
        "lat99_poll": Row("idle enqueue-to-result, p99, Huey polling every 1 ms", "ms", False),
        "cpu": Row(
            f"CPU-bound {cpu_count} x {cpu_seconds * 1000:.0f} ms, wall / ideal", "x", False
        ),
        "tmo50": Row("timeout: deadline to outcome recorded, p50", "ms", False),
        "tmo99": Row("timeout: deadline to outcome recorded, p99", "ms", False),
        "gone50": Row("timeout: deadline to process gone, p50", "ms", False),
        "gone99": Row("timeout: deadline to process gone, p99", "ms", False),
        "ready99": Row("timeout: deadline to replacement process ready, p99", "ms", False),
        "stubborn50": Row(
            "timeout, task ignoring SIGTERM: deadline to process gone, p50", "ms", False
        ),
        "stubborn99": Row(
            "timeout, task ignoring SIGTERM: deadline to process gone, p99", "ms", False
        ),
        "idle_cpu": Row("idle supervisor and workers, CPU", "% of a core", False),
        "rss": Row("supervisor/parent RSS, idle", "MiB", False),
        "uss": Row("worker process USS, idle", "MiB", False),
        "rss_backlog": Row(f"supervisor/parent RSS, {backlog:,} tasks queued", "MiB", False),
        "uss_backlog": Row(
            f"worker process USS, {backlog:,} tasks queued, running one", "MiB", False
        ),
    }
    pools = pool_factories()
    for repeat in range(repeats):
        print(f"repeat {repeat + 1}/{repeats}", flush=True)
        batched, single, drain, e2e = omniq_durable(n)
        for key, value in (
            ("batched", batched),
            ("enqueue_async", single),
            ("drain", drain),
            ("e2e", e2e),
        ):
            rows[key].add("omniq_mp", value)
        rows["enqueue"].add("omniq_mp", omniq_enqueue_sync(n))
        rows["threads"].add("omniq_mp", omniq_enqueue_threads(n))
        rows["gathered"].add("omniq_mp", omniq_enqueue_gathered(n))
        rows["many"].add("omniq_mp", omniq_enqueue_many(many))
        times = omniq_latency(latency_samples)
        for key, share in (("lat50", 50), ("lat50_poll", 50), ("lat99", 99), ("lat99_poll", 99)):
            rows[key].add("omniq_mp", percentile(times, share))
        times = omniq_latency(latency_samples, synchronous="NORMAL")
        rows["lat50_normal"].add("omniq_mp", percentile(times, 50))
        rows["cpu"].add("omniq_mp", omniq_cpu(cpu_count, cpu_seconds))
        add_kills(rows, "omniq_mp", omniq_timeout(timeout_samples))
        add_kills(
            rows, "omniq_mp", omniq_timeout(stubborn_samples, ignore_term=True), ignored_term=True
        )
        for name, make in pools.items():
            rate = pool_noop(make, n)
            rows["drain"].add(name, rate)
            rows["e2e"].add(name, rate)
            rows["cpu"].add(name, pool_cpu(make, cpu_count, cpu_seconds))
            times = pool_latency(make, latency_samples)
            rows["lat50"].add(name, percentile(times, 50))
            rows["lat99"].add(name, percentile(times, 99))
        add_kills(rows, "pebble", pebble_timeout(timeout_samples))
        add_kills(
            rows, "pebble", pebble_timeout(stubborn_samples, ignore_term=True), ignored_term=True
        )
        h_single, h_drain, h_e2e = huey_durable(n)
        rows["enqueue"].add("huey", h_single)
        rows["enqueue_async"].add("huey", h_single)
        h_threads = huey_enqueue_threads(n)
        rows["threads"].add("huey", h_threads)
        rows["gathered"].add("huey", h_threads)
        rows["drain"].add("huey", h_drain)
        rows["e2e"].add("huey", h_e2e)
        for fast_poll, suffix in ((False, ""), (True, "_poll")):
            times = huey_latency(latency_samples, fast_poll=fast_poll)
            rows[f"lat50{suffix}"].add("huey", percentile(times, 50))
            rows[f"lat99{suffix}"].add("huey", percentile(times, 99))
        rows["cpu"].add("huey", huey_cpu(cpu_count, cpu_seconds))
        # Once per repeat: this VM's CPU cost per wake-up drifts by the minute.
        rows["idle_cpu"].add("omniq_mp", omniq_idle_cpu(3.0 if quick else 10.0))
        if repeat == 0:  # memory does not vary between repeats
            for key, value in zip(MEMORY_ROWS, omniq_memory(backlog), strict=True):
                rows[key].add("omniq_mp", value)
            for name, make in pools.items():
                for key, value in zip(MEMORY_ROWS, pool_memory(make, backlog), strict=True):
                    rows[key].add(name, value)
    return list(rows.values())


def add_kills(rows: dict[str, Row], system: str, kills: Kills, ignored_term: bool = False) -> None:
    """A timeout run's percentiles into the rows they belong to: a run of tasks that
    ignored SIGTERM gives only its process-gone figures."""
    if ignored_term:
        rows["stubborn50"].add(system, percentile(kills.gone, 50))
        rows["stubborn99"].add(system, percentile(kills.gone, 99))
        return
    for key, samples in (("tmo", kills.recorded), ("gone", kills.gone)):
        rows[f"{key}50"].add(system, percentile(samples, 50))
        rows[f"{key}99"].add(system, percentile(samples, 99))
    if kills.ready:
        rows["ready99"].add(system, percentile(kills.ready, 99))


def table(rows: list[Row]) -> str:
    headers = ["workload", *SYSTEMS, *(f"vs {a}" for a in ANCHORS)]
    lines = []
    for row in rows:
        cells = [f"{row.workload} ({row.unit})"]
        for system in SYSTEMS:
            value = row.median(system)
            cells.append("n/a" if value is None else format_number(value))
        for anchor in ANCHORS:
            ratio = row.ratio(anchor)
            cells.append("" if ratio is None else f"{ratio:.2f}x")
        lines.append(cells)
    return markdown_table(headers, lines)


def details(rows: list[Row]) -> None:
    for row in rows:
        spreads = []
        for system in SYSTEMS:
            values = row.samples.get(system)
            if values:
                low, high = format_number(min(values)), format_number(max(values))
                spreads.append(
                    f"{system} {format_number(statistics.median(values))} ({low}-{high})"
                )
        print(f"  {row.workload}: {'; '.join(spreads)}")


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if any(r.ratio(a) is not None for a in ANCHORS)]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(shown) + 1.5))
    height = 0.8 / len(ANCHORS)
    for i, anchor in enumerate(ANCHORS):
        ys = [j + i * height for j in range(len(shown))]
        ax.barh(ys, [r.ratio(anchor) or 0 for r in shown], height=height, label=f"vs {anchor}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(shown))])
    ax.set_yticklabels([r.workload for r in shown], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("omniq_mp advantage (x, log scale; > 1 is better)")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (CI)")
    parser.add_argument("--plot", type=Path, help="write a PNG of the ratios here")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    rows = measure(args.quick)
    print("\nmedian (min-max) per system:")
    details(rows)
    print()
    print(table(rows))
    print(f"\nMachine: {machine_line()}")
    if args.plot is not None:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
