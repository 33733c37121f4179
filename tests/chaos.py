"""The seeded chaos runner (reliability.md 4.2 row 38, shortened):

    python -m tests.chaos --minutes 10 --seed 7
    python -m tests.chaos --minutes 0.5 --seed 1      # a smoke run

Two supervisors (``python -m omniq_mp workers``, test profile of 4.1) share one SQLite
store; a producer keeps them at about half their capacity with a mixed workload (sleeps,
CPU spins, bursts of short tasks that get sent ahead to busy workers, tasks failing once,
timeouts, a rare poison task); and every 3-8 s a fault
drawn with the seed hits them: a worker SIGKILLed mid-task (row 1), a segfaulting task
(row 3), a task leaking memory past its limit (row 8), a supervisor SIGKILLed and
restarted (row 12), a supervisor SIGSTOPped for longer than its lease (row 13),
another process holding the store's write lock longer than the lease (row 20), or a
third supervisor started armed with a crash point (row 16: ``OMNIQ_CRASHPOINT`` at a
random lifecycle step and hit count), which dies there and is not restarted.

At the end the producer stops, the faults stop, the queue drains, the supervisors are
stopped, and the invariant checker (tests/reliability/invariants.py) joins the ledger
with the store. Row 38's leak check is part of it: the longest-lived supervisor's RSS and
open fds, sampled every 10 s, may grow at most 10% from its 10th minute to its last
(gated once that span reaches 10 minutes; shorter runs print the figure). Printed: the
seed, the faults injected by kind, the figures, and the violations; the exit status is 1
if there is any. Everything (store, ledger, logs, a
``chaos.json`` summary) stays in ``--workdir`` (default: a new temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from omniq_mp.crashpoints import CRASH_EXIT_STATUS, CRASHPOINT_ENV, NAMES
from omniq_mp.errors import StorageError
from tests.reliability import ledger
from tests.reliability.harness import (
    LEASE_TTL,
    MAX_CRASHES,
    RENEWAL,
    Fault,
    Rig,
    Row,
    Supervisor,
    WriteLock,
    now_ns,
    subreaper,
    write_json,
)
from tests.reliability.invariants import Report

TICK = 0.02
USAGE_EVERY = 10.0  # seconds between RSS / fd samples of the supervisors (row 38)
WINDOW = 6  # samples (a minute) whose median stands for one point of a supervisor's life
GROWTH_FROM = 600.0  # s into a supervisor's life its growth is measured from (row 38)
GROWTH_LIMIT = 0.10  # most RSS / fd growth allowed over a gated span
GATED_SPAN = 10.0  # minutes of measured life below which growth is printed, not gated
LOAD = 4.0  # tasks per second: about half of 2 supervisors x 2 children at ~0.45 s a task
TIMEOUT = 0.5
BURST = 20  # short tasks enqueued at once, now and then
ARMED_PATIENCE = 180.0  # s an armed supervisor may take to reach its crash point
FAULTS = {  # kind -> weight
    "child SIGKILL": 4,
    "segfault task": 2,
    "memory limit": 2,
    "supervisor SIGKILL": 3,
    "supervisor SIGSTOP": 2,
    "store write-locked": 2,
    "crash point": 3,
}
# The supervisor's steps (enqueue_before_commit is the producer's, tested apart).
SUPERVISOR_POINTS = tuple(n for n in NAMES if n != "enqueue_before_commit")


class Thaw:
    """The SIGCONT of a frozen supervisor, on a timer thread of its own: the frozen
    supervisor may hold the store's write lock, and then this runner's own enqueues wait
    for it; the thaw must not wait for them."""

    def __init__(
        self, chaos: Chaos, slot: str, sup: Supervisor, fault: Fault, after: float
    ) -> None:
        self.chaos, self.slot, self.sup, self.fault = chaos, slot, sup, fault
        self._lock = threading.Lock()
        self._timer = threading.Timer(after, self.now)
        self._timer.daemon = True
        self._timer.start()

    def now(self) -> None:
        """SIGCONT (once), close the fault's I3 window, forget the freeze."""
        self._timer.cancel()
        with self._lock:
            if self.chaos.stopped.get(self.slot) is not self:
                return
            self.sup.signal(signal.SIGCONT)
            ended = time.monotonic_ns()
            self.fault.until = ended
            self.fault.excuse_until = ended + int(RENEWAL * 1e9)
            del self.chaos.stopped[self.slot]


@dataclass
class Watch:
    """A task the runner times: from ``since`` until its row shows ``done``."""

    task_id: str
    figure: str
    since: float
    token: str | None = None
    crashes: int = 0
    deadline: float = 0.0


@dataclass
class Chaos:
    """The running experiment: the rig, the seeded random source, what is under way."""

    rig: Rig
    rng: random.Random
    until: float
    names: dict[str, Supervisor] = field(default_factory=dict)  # slot -> its supervisor
    restarts: int = 0
    stopped: dict[str, Thaw] = field(default_factory=dict)  # slot -> its pending SIGCONT
    lock: WriteLock | None = None
    watches: list[Watch] = field(default_factory=list)
    running: dict[tuple[str, int], int] = field(default_factory=dict)  # (key, attempt) -> pid
    starts: dict[str, float] = field(default_factory=dict)  # key -> first start (s)
    next_fault: float = 0.0
    produced: float = 0.0
    serial: int = 0
    poison: list[str] = field(default_factory=list)
    armed: dict[str, str] = field(default_factory=dict)  # supervisor name -> its crash point
    armed_at: float = 0.0  # when the armed supervisor started
    # Row 38: (monotonic s, RSS bytes, open fds) of each supervisor, every USAGE_EVERY s.
    usage: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    next_usage: float = 0.0
    timed: list[tuple[str, float, float, float]] = field(
        default_factory=list
    )  # figure, from, to, s

    def __post_init__(self) -> None:
        self.tail = ledger.LedgerTail(self.rig.ledger)
        self.began = time.monotonic()
        self.next_fault = self.began + self.rng.uniform(3, 8)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Start the supervisors, then inject and produce until the time is up."""
        for slot in ("A", "B"):
            self.start(slot)
        for sup in self.names.values():
            sup.wait_workers()
        while time.monotonic() < self.until:
            self.step()
            time.sleep(TICK)
        self.calm()

    def step(self) -> None:
        """One tick: follow the ledger, produce, thaw, inject a fault when due, time."""
        now = time.monotonic()
        self.read_ledger()
        self.produce(now)
        if self.lock is not None and self.lock.released_ns:
            self.lock.join()
            self.lock = None
        if now >= self.next_fault:
            self.inject(self.rng.choices(list(FAULTS), list(FAULTS.values()))[0])
            self.next_fault = now + self.rng.uniform(3, 8)
        self.check_watches()
        self.check_supervisors()
        self.disarm_if_stale(now)
        if now >= self.next_usage:
            self.sample_usage(now)
            self.next_usage = now + USAGE_EVERY

    def sample_usage(self, now: float) -> None:
        """Row 38: each running supervisor's RSS and open file descriptors."""
        for sup in self.names.values():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(sup.pid)
                sample = (now, proc.memory_info().rss, proc.num_fds())
                self.usage.setdefault(sup.name, []).append(sample)

    def usage_growth(self) -> Growth | None:
        """RSS and fd growth of the longest-lived supervisor (row 38's leak check): the
        median of a minute of samples from its 10th minute (or a sixth into a shorter life,
        past start-up) against the median of its last minute. Medians, so a sample taken
        while a worker is being replaced (its old and new sockets both open) is not a
        leak."""
        spans = [(samples[-1][0] - samples[0][0], name, samples)
                 for name, samples in self.usage.items() if len(samples) >= 2 * WINDOW]  # fmt: skip
        if not spans:
            return None
        span, name, samples = max(spans)
        began = samples[0][0]
        settled = min(GROWTH_FROM, span / 6)
        start = next(i for i, s in enumerate(samples) if s[0] - began >= settled)
        start = min(start, len(samples) - 2 * WINDOW)
        early, late = samples[start : start + WINDOW], samples[-WINDOW:]
        return Growth(
            name,
            minutes=(late[-1][0] - early[0][0]) / 60,
            rss=(_median(s[1] for s in early), _median(s[1] for s in late)),
            fds=(_median(s[2] for s in early), _median(s[2] for s in late)),
        )

    def calm(self) -> None:
        """Stop the faults: thaw, unlock."""
        for thaw in list(self.stopped.values()):
            thaw.now()
        if self.lock is not None:
            self.lock.join()
            self.lock = None

    # -- supervisors ------------------------------------------------------------------------

    def start(self, slot: str) -> None:
        """Start (or restart) the supervisor of ``slot``."""
        name = f"{slot}{self.restarts}"
        self.restarts += 1
        self.names[slot] = self.rig.supervisor(name=name, wait=False)

    def check_supervisors(self) -> None:
        """A supervisor that died without being killed is a finding (I6); restart it. One
        armed with a crash point that died there is the fault itself: record it."""
        for slot, sup in list(self.names.items()):
            if sup.running():
                continue
            point = self.armed.pop(sup.name, None)
            if point is not None and sup.proc.returncode == CRASH_EXIT_STATUS:
                died = now_ns()  # within a tick of the crash: the window covers it
                self.rig.faults.faults.append(Fault("crash point", died - 10**9, sup.name, died))
                self.rig.figures.count(f"crash point {point} hit")
                del self.names[slot]
                continue
            self.rig.findings.append(f"{sup.name} died on its own:\n{sup.stderr()}")
            self.start(slot)

    def live(self) -> list[str]:
        """Slots whose supervisor runs and is not frozen (nor armed with a crash point:
        that one's end is its own fault)."""
        return [
            s
            for s, sup in self.names.items()
            if sup.running() and s not in self.stopped and sup.name not in self.armed
        ]

    # -- the workload ------------------------------------------------------------------------

    def produce(self, now: float) -> None:
        """Enqueue what the load calls for since the start."""
        due = int((now - self.began) * LOAD) - int(self.produced)
        for _ in range(due):
            self.add_task()
        self.produced += due

    def enqueue(self, func: Callable[..., Any], key: str, *args: Any, **options: Any) -> str | None:
        """Enqueue as a producer would; a store locked too long refuses it (the task is then
        one that must not exist, I2), and the run goes on."""
        try:
            return self.rig.producer.add(func, key, *args, **options)
        except StorageError:
            self.rig.figures.count("enqueues refused (store locked too long)")
            return None

    def key(self, kind: str) -> str:
        """A fresh task key."""
        self.serial += 1
        return f"{kind}{self.serial:05d}"

    def add_task(self) -> None:
        """Enqueue one task of the mixed workload."""
        add, rng = self.enqueue, self.rng
        roll = rng.random()
        if roll < 0.66:
            add(ledger.sleep, self.key("sleep"), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3))
        elif roll < 0.70:
            # A burst of short tasks: supervisors then send tasks ahead to busy workers
            # (send_ahead_below), so faults also meet tasks waiting inside a worker.
            for _ in range(BURST):
                add(ledger.spin, self.key("short"), rng.uniform(0.002, 0.01))
        elif roll < 0.80:
            add(ledger.spin, self.key("spin"), rng.uniform(0.05, 0.3))
        elif roll < 0.88:
            add(ledger.fail_once, self.key("fail"), 0.05, expect={"retries": 1})
        elif roll < 0.995:
            key = self.key("hang")
            how = rng.choice(["busy", "sleep", "regex", "ignore_term"])
            task_id = add(ledger.hang, key, how, True, timeout=TIMEOUT, max_retries=1)
            if task_id is not None:
                figure = "timeout -> task settled, minus the timeout"
                self.watches.append(Watch(task_id, figure, 0.0))
        else:
            key = self.key("poison")
            if add(ledger.crash, key, "segv", True, max_retries=5) is not None:
                self.poison.append(key)

    def read_ledger(self) -> None:
        """Track which attempts run, and when each key first started."""
        for rec in self.tail.read():
            ident = (rec.key, rec.attempt)
            if rec.event == "start":
                self.running[ident] = rec.pid
                self.starts.setdefault(rec.key, rec.ns / 1e9)
            else:
                self.running.pop(ident, None)

    # -- faults -----------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        """Inject one fault of ``kind``."""
        getattr(self, "fault_" + kind.replace(" ", "_").replace("-", "_"))(kind)

    def fault_child_SIGKILL(self, kind: str) -> None:
        """Row 1: SIGKILL the worker of a running attempt."""
        workers = {pid for s in self.live() for pid in self.names[s].workers()}
        victims = [(ident, pid) for ident, pid in self.running.items() if pid in workers]
        if not victims:
            return
        (key, _), pid = self.rng.choice(sorted(victims))
        task_id = self.id_of(key)
        row = self.rig.store.row(task_id)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.rig.faults.add(kind, key)
            if row is not None:
                figure = "child death -> task settled"
                self.watches.append(
                    Watch(task_id, figure, time.monotonic(), row.lease_token, row.crashes)
                )

    def fault_segfault_task(self, kind: str) -> None:
        """Row 3: enqueue a task that segfaults on its first start."""
        key = self.key("segv")
        if self.enqueue(ledger.crash, key, "segv", False, self.rng.uniform(0, 0.3)):
            self.rig.faults.add(kind, key)

    def fault_memory_limit(self, kind: str) -> None:
        """Row 8: enqueue a task leaking memory past its 96 MB limit."""
        key = self.key("hog")
        if self.enqueue(ledger.hog, key, 32, 40, True, max_memory="96MB"):
            self.rig.faults.add(kind, key)

    def fault_supervisor_SIGKILL(self, kind: str) -> None:
        """Row 12: SIGKILL a supervisor, time its tasks' recovery, restart it."""
        live = self.live()
        if not live:
            return
        slot = self.rng.choice(live)
        sup = self.names[slot]
        held = {
            r.id: r.lease_token
            for r in self.rig.store.rows().values()
            if r.status == "RUNNING" and (r.worker_id or "").startswith(sup.worker_prefix)
        }
        fault = self.rig.kill(sup, kind)
        for task_id, token in held.items():
            self.watches.append(
                Watch(
                    task_id, "SIGKILLed supervisor's tasks claimable again", fault.at / 1e9, token
                )
            )
        self.start(slot)

    def fault_supervisor_SIGSTOP(self, kind: str) -> None:
        """Row 13: freeze a supervisor for longer than the lease."""
        live = self.live()
        if not live or self.stopped:
            return
        slot = self.rng.choice(live)
        sup = self.names[slot]
        fault = self.rig.faults.add(kind, sup.name, excuse_pids=frozenset(sup.tree()))
        sup.signal(signal.SIGSTOP)
        seconds = self.rng.uniform(LEASE_TTL + 0.5, LEASE_TTL + 2)
        self.stopped[slot] = Thaw(self, slot, sup, fault, seconds)

    def fault_store_write_locked(self, kind: str) -> None:
        """Row 20: hold the store's write lock for longer than the lease."""
        if self.lock is not None:
            return
        seconds = self.rng.uniform(LEASE_TTL + 0.5, LEASE_TTL + 2)
        self.lock = WriteLock(self.rig.base_dir / "omniq.db", seconds).start()
        self.rig.faults.add(kind, until=self.lock.acquired_ns + int(seconds * 1e9))

    # -- timing ------------------------------------------------------------------------------

    def fault_crash_point(self, kind: str) -> None:
        """Row 16: a third supervisor, armed to die (os._exit, as a crash) at a random
        lifecycle step on a random hit; what it held must be recovered like any crash."""
        if self.armed:
            return  # the last one armed has not hit its point yet
        point = self.rng.choice(SUPERVISOR_POINTS)
        name = f"C{self.restarts}"
        self.restarts += 1
        env = {CRASHPOINT_ENV: f"{point}:{self.rng.randint(1, 8)}"}
        self.names["C"] = self.rig.supervisor(name=name, env=env, wait=False)
        self.armed[name] = point
        self.armed_at = time.monotonic()

    def disarm_if_stale(self, now: float) -> None:
        """An armed supervisor whose step is rare (a late hit of a retry step) may not reach
        it for the rest of the run, holding back every later crash point: after
        ARMED_PATIENCE it is stopped gracefully (not a fault) and the next may be armed."""
        sup = self.names.get("C")
        if sup is None or sup.name not in self.armed or now - self.armed_at < ARMED_PATIENCE:
            return
        point = self.armed.pop(sup.name)
        del self.names["C"]
        self.rig.figures.count(f"crash point {point} not reached, supervisor stopped")
        threading.Thread(target=sup.stop, name=f"stop-{sup.name}", daemon=True).start()

    def id_of(self, key: str) -> str:
        """The task id of ``key``."""
        return next(i for i, k in self.rig.producer.committed.items() if k == key)

    def check_watches(self) -> None:
        """Time the watched tasks whose rows moved."""
        if not self.watches:
            return
        rows = self.rig.store.rows([w.task_id for w in self.watches])
        now = time.monotonic()
        for watch in list(self.watches):
            row = rows.get(watch.task_id)
            if row is None or not self.settled(watch, row, now):
                continue
            self.watches.remove(watch)

    def settled(self, watch: Watch, row: Row, now: float) -> bool:
        """Whether ``watch`` is done (and record its latency)."""
        if watch.figure.startswith("timeout"):
            return self.timed_out(watch, row, now)
        moved = row.lease_token != watch.token or row.crashes > watch.crashes
        if moved:
            self.timed.append((watch.figure, watch.since, now, now - watch.since))
        return moved or now - watch.since > 60

    def timed_out(self, watch: Watch, row: Row, now: float) -> bool:
        """A timeout watch is done once the task's first error is stored."""
        if row.error is None:
            return row.status in ("COMPLETED", "FAILED", "DEAD", "CANCELLED")
        key = self.rig.producer.committed[watch.task_id]
        if '"timeout"' in row.error and key in self.starts:
            began = self.starts[key]
            self.timed.append((watch.figure, began, now, now - began - TIMEOUT))
        return True


@dataclass(frozen=True)
class Growth:
    """RSS and open fds of one supervisor at two points of its life (early, late)."""

    name: str
    minutes: float
    rss: tuple[float, float]
    fds: tuple[float, float]

    def ratios(self) -> dict[str, float]:
        """Relative growth of each measure, e.g. 0.03 for +3%."""
        return {"RSS": self.rss[1] / self.rss[0] - 1, "open fds": self.fds[1] / self.fds[0] - 1}

    def violations(self) -> list[str]:
        """Row 38's gate: over a long enough span, neither measure grows past the limit."""
        if self.minutes < GATED_SPAN:
            return []
        return [
            f"row 38: supervisor {self.name}'s {what} grew {100 * grew:+.1f}% over "
            f"{self.minutes:.1f} min (limit {100 * GROWTH_LIMIT:g}%)"
            for what, grew in self.ratios().items()
            if grew > GROWTH_LIMIT
        ]

    def __str__(self) -> str:
        rss, fds = self.ratios()["RSS"], self.ratios()["open fds"]
        gate = "gated" if self.minutes >= GATED_SPAN else "too short to gate"
        return (
            f"supervisor {self.name} over {self.minutes:.1f} min ({gate}): RSS "
            f"{self.rss[0] / 2**20:.1f} -> {self.rss[1] / 2**20:.1f} MiB ({100 * rss:+.1f}%), "
            f"open fds {self.fds[0]:g} -> {self.fds[1]:g} ({100 * fds:+.1f}%)"
        )


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


STALLS = ("store write-locked", "supervisor SIGSTOP")  # faults that hold every clock back


def record_figures(chaos: Chaos) -> None:
    """Latencies go to the figures under their name, or, when a store lock or a frozen
    supervisor overlapped the measured span (and so delayed it by design), under
    "<name> (across a lock or freeze)"."""
    stalls = [
        (f.at / 1e9, max(f.until, f.at) / 1e9) for f in chaos.rig.faults.faults if f.kind in STALLS
    ]
    for figure, began, ended, value in chaos.timed:
        stalled = any(a <= ended and b >= began for a, b in stalls)
        chaos.rig.figures.sample(
            f"{figure} (across a lock or freeze)" if stalled else figure, value
        )


def report_text(chaos: Chaos, report: Report, seed: int, minutes: float) -> str:
    """The printed report: seed, faults by kind, figures, counts, violations."""
    rig = chaos.rig
    counts = rig.faults.counts()
    attempts = ledger.parse(rig.ledger).attempts
    poison_starts = max((len(attempts.get(k, [])) for k in chaos.poison), default=0)
    rig.figures.count("poison tasks", len(chaos.poison))
    growth = chaos.usage_growth()
    lines = [
        f"chaos: seed {seed}, {minutes:g} min, 2 supervisors on {rig.base_dir / 'omniq.db'}",
        f"faults injected: {sum(counts.values())} "
        + "("
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + ")",
        f"poison task: at most {poison_starts} starts (budget {MAX_CRASHES})",
        f"growth (row 38): {growth or 'no supervisor lived long enough'}",
        *(f"  {line}" for line in rig.figures.summary()),
        *(f"  {k}: {v}" for k, v in sorted(report.counts.items())),
        f"violations: {len(report.violations)}",
        *(f"  {v}" for v in report.violations[:50]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chaos experiment; the exit status is 1 on any violation."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="omniq-chaos-"))
    print(f"chaos: seed {seed} (replay: python -m tests.chaos --minutes {args.minutes:g} "
          f"--seed {seed}); work in {workdir}", flush=True)  # fmt: skip
    with subreaper():
        rig = Rig(workdir)
        chaos = Chaos(rig, random.Random(seed), time.monotonic() + args.minutes * 60)
        try:
            chaos.run()
            try:
                rig.drain(180)
            except AssertionError:  # what did not finish is reported by the checker (I1)
                print("chaos: not every task finished within 180 s of the end", flush=True)
            report = rig.finish()
        finally:
            chaos.calm()
            chaos.tail.close()
            rig.close()
    record_figures(chaos)
    if (growth := chaos.usage_growth()) is not None:
        report.violations.extend(growth.violations())
    text = report_text(chaos, report, seed, args.minutes)
    print(text, flush=True)
    summary = {
        "seed": seed,
        "minutes": args.minutes,
        "faults": rig.faults.counts(),
        "fault_log": [  # for post-mortems: monotonic ns, as in the ledger
            {"kind": f.kind, "target": f.target, "at": f.at, "until": f.until}
            for f in rig.faults.faults
        ],
        "violations": report.violations,
        "invariants": report.counts,
        "figures": rig.figures.to_json(),
    }
    write_json(workdir / "chaos.json", summary)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
