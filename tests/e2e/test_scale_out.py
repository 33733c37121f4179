"""Scale-out on PostgreSQL: three ``omniq-mp workers`` supervisors share one queue, one of
them is SIGKILLed mid-way, and still every task completes exactly once as far as results
go, and never runs twice at the same time.

Each task is ``tests.e2e.ledger_tasks.record(i)`` for i in 0..19999: it appends a start
and an end line (pid, monotonic time) to a ledger file and returns ``i``. The results
prove nothing was lost; the ledger proves what ran where and when: every argument ran,
the re-runs are only the killed supervisor's unfinished work, no two runs of one argument
overlapped in time, and each supervisor took part.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
import pytest

from omniq_mp import OmniQ, Settings, TaskStatus
from omniq_mp.core import task_value
from omniq_mp.models import Task
from omniq_mp.storage.postgres import PostgresStorage
from tests.e2e.conftest import cli_env
from tests.e2e.ledger_tasks import LEDGER_ENV

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(400),  # the drain alone is bounded at DRAIN_BOUND below
]

ROOT = Path(__file__).resolve().parents[2]
TASK = "tests.e2e.ledger_tasks.record"
TASKS = 20_000
BATCH = 1_000
SUPERVISORS = 3
PROCS = 2
LEASE_TTL = 3
KILL_AFTER = 5_000
# Settings' default, pinned in the supervisors' environment so the bound below holds even
# if the caller's environment sets OMNIQ_PREFETCH.
PREFETCH: int = Settings.prefetch  # the dataclass field's default
# A killed supervisor's re-runs are the tasks it had started and not yet settled, which its
# claim limit (procs running + prefetch more in hand) is meant to bound; the margin covers
# outcomes still on their way to the settlement batch at the kill.
DUPLICATE_BOUND = PROCS * (1 + PREFETCH) + 2 * PROCS
DRAIN_BOUND = 240.0
POLL = 0.2  # seconds between stats queries: each is a GROUP BY over the whole table


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    """A schema of its own on the shared server, dropped afterwards."""
    schema = f"omniq_scale_{uuid.uuid4().hex[:8]}"
    yield schema
    asyncio.run(_drop(postgres_dsn, schema))


async def _drop(dsn: str, schema: str) -> None:
    storage = PostgresStorage(dsn, schema=schema)
    try:
        await storage.drop()
    finally:
        await storage.close()


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` every POLL seconds; fail naming ``what`` after ``timeout``.

    tests.waiting.wait_for polls every 20 ms, which here would mean 50 stats queries a
    second competing with the supervisors for the machine's two cores.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


# -- supervisors -----------------------------------------------------------------------------


@dataclass
class Supervisor:
    """One ``python -m omniq_mp workers`` process, its log, and its processes seen so far."""

    index: int
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path
    # Every descendant seen while it ran (workers, fork server): the ledger's pids are
    # attributed to a supervisor through this.
    tree: dict[int, psutil.Process] = field(default_factory=dict)

    def refresh_tree(self) -> None:
        """Add the descendants it has now (nothing once it is gone)."""
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.tree.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        """The end of its stderr, for failure messages."""
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


def start_supervisor(index: int, dsn: str, env: dict[str, str], logs: Path) -> Supervisor:
    """Start one supervisor with ``PROCS`` workers; stdout and stderr go to a file (a pipe
    nobody reads could fill up and block it)."""
    log_path = logs / f"supervisor-{index}.log"
    log = log_path.open("wb")
    command = [sys.executable, "-m", "omniq_mp", "workers", "--backend", "postgres"]
    command += ["--dsn", dsn, "--procs", str(PROCS)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return Supervisor(index, proc, log, log_path)


def supervisor_env(base: Path, schema: str, ledger: Path) -> dict[str, str]:
    """The environment of every supervisor: the test's schema, no events, short leases."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return cli_env(
        base,
        OMNIQ_POSTGRES_SCHEMA=schema,
        OMNIQ_EVENT_STORAGE_TYPE="none",
        OMNIQ_LEASE_TTL=str(LEASE_TTL),
        OMNIQ_PREFETCH=str(PREFETCH),
        PYTHONPATH=path,  # the workers import the task by its dotted path
        **{LEDGER_ENV: str(ledger)},
    )


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_supervisor(victim: Supervisor) -> int:
    """SIGKILL the supervisor; wait (bounded) until no process of its tree is left.
    Returns the monotonic ns by which every one of them was gone."""
    victim.refresh_tree()
    tree = list(victim.tree.values())
    assert tree, "the supervisor to kill has no worker processes"
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(timeout=10)
    # Its workers watch it and kill their own process groups when it is gone.
    wait_until(lambda: not [p for p in tree if _alive(p)], 5, "the killed supervisor's tree")
    return time.monotonic_ns()


def stop_gracefully(supervisors: Sequence[Supervisor]) -> None:
    """SIGTERM each; each must exit 0 within a bound."""
    for s in supervisors:
        s.proc.send_signal(signal.SIGTERM)
    for s in supervisors:
        try:
            s.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"supervisor {s.index} ignored SIGTERM for 60s:\n{s.log_tail()}")
        assert s.proc.returncode == 0, f"supervisor {s.index}:\n{s.log_tail()}"


def reap(supervisors: Sequence[Supervisor]) -> None:
    """After a failure: SIGKILL whatever is still running, wait for it, close the logs."""
    for s in supervisors:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=10)
        s.log.close()


# -- the ledger ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One execution of one argument in one process: [start, end] in monotonic ns."""

    arg: int
    pid: int
    start: int
    end: float  # math.inf: started in a live process and never ended


def read_ledger(path: Path) -> dict[int, list[tuple[str, int, int]]]:
    """Argument -> its (event, pid, ns) lines."""
    events: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        event, arg, pid, ns = line.split()
        events[int(arg)].append((event, int(pid), int(ns)))
    return events


def runs_of(
    arg: int, events: list[tuple[str, int, int]], killed: set[int], killed_at: int
) -> list[Run]:
    """Pair each process's starts with its ends. A start without an end ran until the kill
    in a killed process, and (conservatively) forever in any other."""
    by_pid: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for event, pid, ns in events:
        by_pid[pid].append((ns, event))
    runs: list[Run] = []
    for pid, timeline in by_pid.items():
        open_start: int | None = None
        for ns, event in sorted(timeline):  # a process runs one task at a time
            if event == "start":
                assert open_start is None, f"arg {arg}: pid {pid} started it twice at once"
                open_start = ns
            else:
                assert open_start is not None, f"arg {arg}: pid {pid} ended it unstarted"
                runs.append(Run(arg, pid, open_start, ns))
                open_start = None
        if open_start is not None:
            runs.append(Run(arg, pid, open_start, killed_at if pid in killed else math.inf))
    return sorted(runs, key=lambda r: r.start)


def overlapping(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs (an earlier run still going, a later run) of one argument's runs sorted by
    start: the later one began before the earlier ended."""
    found = []
    longest: Run | None = None  # the run, among those started so far, ending last
    for run in runs:
        if longest is not None and run.start < longest.end:
            found.append((longest, run))
        if longest is None or run.end > longest.end:
            longest = run
    return found


# -- results ---------------------------------------------------------------------------------


async def read_tasks(dsn: str, schema: str, ids: list[str]) -> list[Task]:
    """Every task by id, in chunks (one query each)."""
    storage = PostgresStorage(dsn, schema=schema, migrate=False)
    await storage.open()
    try:
        found: list[Task] = []
        for start in range(0, len(ids), 2_000):
            found += await storage.get_many(ids[start : start + 2_000])
        return found
    finally:
        await storage.close()


def check_results(dsn: str, schema: str, args_by_id: dict[str, int]) -> dict[int, int]:
    """Assert every task COMPLETED with its argument as result; returns how many each
    supervisor pid completed (from the claimer recorded in the task)."""
    tasks = asyncio.run(read_tasks(dsn, schema, list(args_by_id)))
    assert len(tasks) == TASKS
    completed_by: dict[int, int] = defaultdict(int)
    wrong = []
    for task in tasks:
        arg = args_by_id[task.id]
        if task.status is not TaskStatus.COMPLETED or task_value(task) != arg:
            wrong.append((arg, task.status))
        # worker_id is "host:pid:nonce" of the supervisor whose claim completed it.
        completed_by[int(str(task.worker_id).split(":")[1])] += 1
    assert not wrong, f"{len(wrong)} tasks without their result, e.g. {wrong[:5]}"
    return dict(completed_by)


# -- the test --------------------------------------------------------------------------------


def enqueue_all(q: OmniQ) -> dict[str, int]:
    """Store TASKS calls, BATCH per transaction; returns task id -> argument."""
    args_by_id: dict[str, int] = {}
    for first in range(0, TASKS, BATCH):
        args = range(first, first + BATCH)
        ids = q.enqueue_tasks([q.build(TASK, i) for i in args])
        args_by_id.update(zip(ids, args, strict=True))
    assert len(args_by_id) == TASKS
    return args_by_id


def completed_at_least(q: OmniQ, n: int, supervisors: Sequence[Supervisor]) -> Callable[[], bool]:
    """A condition for wait_until that also records the supervisors' process trees, and
    fails at once if one of them exits."""

    def check() -> bool:
        for s in supervisors:
            status = s.proc.poll()
            assert status is None, f"supervisor {s.index} exited ({status}):\n{s.log_tail()}"
            s.refresh_tree()
        return q.stats().completed >= n

    return check


def check_ledger(
    ledger: Path, supervisors: Sequence[Supervisor], victim: Supervisor, killed_at: int
) -> int:
    """The ledger's assertions; returns how many arguments started more than once."""
    events = read_ledger(ledger)
    missing = [a for a in range(TASKS) if not any(e == "end" for e, _, _ in events.get(a, []))]
    assert not missing, f"{len(missing)} arguments never ran to the end, e.g. {missing[:10]}"
    assert set(events) == set(range(TASKS)), "the ledger names arguments never enqueued"

    owner = {pid: s.index for s in supervisors for pid in s.tree}
    killed = set(victim.tree)
    starts: dict[int, int] = defaultdict(int)  # supervisor index -> starts
    unknown: set[int] = set()
    clashes: list[tuple[Run, Run]] = []
    forever: list[Run] = []
    duplicated: list[int] = []
    for arg, lines in events.items():
        for event, pid, _ in lines:
            if event == "start":
                if pid in owner:
                    starts[owner[pid]] += 1
                else:
                    unknown.add(pid)
        runs = runs_of(arg, lines, killed, killed_at)
        forever += [r for r in runs if r.end == math.inf]
        clashes += overlapping(runs)
        if len(runs) > 1:
            duplicated.append(arg)

    print(f"starts per supervisor: {dict(sorted(starts.items()))}")
    # A re-run whose first run ended had its outcome lost between the worker and the store
    # (waiting in the killed supervisor's settlement batch); the others were cut off.
    ended = [a for a in duplicated if any(e == "end" and p in killed for e, p, _ in events[a])]
    print(
        f"arguments started more than once: {len(duplicated)} (bound {DUPLICATE_BOUND}); "
        f"{len(ended)} of them had ended on the killed supervisor, outcome not yet stored"
    )
    assert not unknown, f"ledger pids of no supervisor's tree: {sorted(unknown)}"
    assert not clashes, f"{len(clashes)} concurrent duplicate runs, e.g. {clashes[:3]}"
    assert not forever, f"runs that never ended in a live supervisor: {forever[:5]}"
    assert all(starts[s.index] > 0 for s in supervisors), f"idle supervisor: {starts}"
    # Only the killed supervisor's unfinished work may run again.
    rerun_elsewhere = [
        a for a in duplicated if not any(p in killed for e, p, _ in events[a] if e == "start")
    ]
    assert not rerun_elsewhere, f"re-run though never on the killed one: {rerun_elsewhere[:10]}"
    assert len(duplicated) <= DUPLICATE_BOUND, f"{len(duplicated)} re-runs: {duplicated[:20]}"
    return len(duplicated)


def test_three_supervisors_drain_twenty_thousand_tasks_through_a_sigkill(
    postgres_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    ledger = tmp_path / "ledger.txt"
    q = OmniQ(
        Settings(
            backend="postgres",
            dsn=postgres_dsn,
            postgres_schema=pg_schema,
            event_storage_type="none",
        )
    )
    supervisors: list[Supervisor] = []
    try:
        args_by_id = enqueue_all(q)
        enqueued = time.monotonic()
        env = supervisor_env(tmp_path / "store", pg_schema, ledger)
        for i in range(SUPERVISORS):  # appended one by one: reap() must see each started
            supervisors.append(start_supervisor(i, postgres_dsn, env, tmp_path))
        wait_until(completed_at_least(q, KILL_AFTER, supervisors), 120, f"{KILL_AFTER} done")

        victim, survivors = supervisors[0], supervisors[1:]
        killed_at = kill_supervisor(victim)
        at_kill = q.stats()
        assert at_kill.completed < TASKS, "killed after the end: nothing to prove"
        killed = time.monotonic()

        wait_until(completed_at_least(q, TASKS, survivors), DRAIN_BOUND, "every task done")
        drained = time.monotonic()
        for s in survivors:
            s.refresh_tree()
        stop_gracefully(survivors)

        stats = q.stats()
        assert (stats.completed, stats.total) == (TASKS, TASKS), stats
        assert (stats.failed, stats.dead, stats.unfinished) == (0, 0, 0), stats
        completed_by = check_results(postgres_dsn, pg_schema, args_by_id)
        duplicates = check_ledger(ledger, supervisors, victim, killed_at)
        assert set(completed_by) == {s.proc.pid for s in supervisors}, completed_by
        print(
            f"enqueue {enqueued - began:.1f}s, kill at {at_kill.completed} completed after "
            f"{killed - enqueued:.1f}s, drained {drained - killed:.1f}s later, "
            f"total {time.monotonic() - began:.1f}s; completed per supervisor pid "
            f"{completed_by}; {duplicates} duplicates"
        )
    finally:
        reap(supervisors)
        q.close()
