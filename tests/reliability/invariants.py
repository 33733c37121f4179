"""The invariant checker: joins the ledger with the store after a run and checks I1-I7
(reliability.md 4.1), with a message that names the task, the attempts and the times.

    I1 no loss          every committed task is terminal (FAILED/DEAD with a reason)
    I2 no phantoms      no row, and no execution, of a task never committed; an enqueue
                        that raised left no row
    I3 no concurrent    attempts of one task never overlap in time (a killed attempt ends
       duplicates       when its process died, per the DeathWatch); the one exception is
                        a frozen supervisor's child, up to the fault's excuse window
    I4 bounded          every start after the first has a cause: the previous attempt
       duplicates       died, a fault happened in between, or the task is designed to
                        retry; and no task starts more than it may
    I5 fencing          a COMPLETED task's result is the one its last attempt returned
    I6 health           (processes: checked by the harness, added with ``process``)
    I7 integrity        ``PRAGMA integrity_check`` is ok

Times in messages are milliseconds since the first start in the ledger.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omniq_mp.serialization import loads_result
from tests.reliability.harness import FaultLog, Producer, Row, StoreView
from tests.reliability.ledger import Attempt, Ledger, parse

__all__ = ["Report", "check"]

TERMINAL = ("COMPLETED", "FAILED", "DEAD", "CANCELLED")
FENCED_LOG = "lease lost before its outcome was stored"


@dataclass
class Report:
    """What the checker found. ``violations`` must be empty; ``ambiguous`` lists overlaps
    inside the DeathWatch's uncertainty (a few ms), reported, not failed."""

    violations: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing was violated."""
        return not self.violations

    def violation(self, invariant: str, message: str) -> None:
        """Record a violation of ``invariant`` (I1 ... I7)."""
        self.violations.append(f"{invariant}: {message}")

    def process(self, message: str) -> None:
        """An I6 finding of the harness (orphans, a dead supervisor that should live)."""
        self.violation("I6", message)

    def text(self, limit: int = 30) -> str:
        """The report as text: the violations (up to ``limit``), then the counts."""
        lines = [f"{len(self.violations)} violation(s), {len(self.ambiguous)} ambiguous"]
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        lines += [f"  (ambiguous) {a}" for a in self.ambiguous[:5]]
        lines += [f"  {k}: {v}" for k, v in sorted(self.counts.items())]
        return "\n".join(lines)


def check(
    *,
    ledger_path: Path,
    store: StoreView,
    producer: Producer,
    faults: FaultLog,
    logs: Sequence[Path] = (),
    integrity: bool = True,
) -> Report:
    """Check I1-I5 and I7 for everything ``producer`` enqueued (I6 is the harness's)."""
    report = Report()
    ledger = parse(ledger_path)
    rows = store.rows()
    t0 = min((a.start for a in ledger.all()), default=0)
    key_of = producer.committed
    id_of = {key: task_id for task_id, key in key_of.items()}

    _no_loss(report, rows, producer)
    _no_phantoms(report, rows, producer, ledger)
    for key, attempts in ledger.attempts.items():
        task_id = id_of.get(key, "?")
        _no_overlap(report, task_id, key, attempts, faults, t0)
        _bounded(report, task_id, key, attempts, faults, producer.expect.get(key, {}), t0)
        row = rows.get(task_id)
        if row is not None:
            _fenced(report, row, key, attempts)
    if ledger.malformed:
        report.violation(
            "ledger", f"{len(ledger.malformed)} malformed line(s): {ledger.malformed[:3]}"
        )
    if integrity and (verdict := store.integrity()) != "ok":
        report.violation("I7", f"PRAGMA integrity_check says {verdict!r}")
    _count(report, rows, producer, ledger, logs)
    return report


def _no_loss(report: Report, rows: dict[str, Row], producer: Producer) -> None:
    for task_id, key in producer.committed.items():
        row = rows.get(task_id)
        if row is None:
            report.violation("I1", f"task {task_id} ({key}) was committed but is not in the store")
            continue
        if row.status not in TERMINAL:
            report.violation(
                "I1",
                f"task {task_id} ({key}) is still {row.status} (attempts {row.attempts}, "
                f"lease {row.lease_token!r} held by {row.worker_id!r})",
            )
        elif row.status in ("FAILED", "DEAD") and not row.error:
            report.violation("I1", f"task {task_id} ({key}) is {row.status} with no reason")
        wanted = producer.expect.get(key, {}).get("status")
        if wanted is not None and row.status not in _as_tuple(wanted):
            report.violation(
                "I1", f"task {task_id} ({key}) ended {row.status}, expected {wanted}: {row.error}"
            )


def _no_phantoms(report: Report, rows: dict[str, Row], producer: Producer, ledger: Ledger) -> None:
    for task_id in rows:
        if task_id not in producer.committed:
            report.violation("I2", f"row {task_id} in the store was never committed by a producer")
    for task_id in producer.raised:
        if task_id in rows:
            report.violation("I2", f"task {task_id}: its enqueue raised, yet it is stored")
    keys = set(producer.committed.values())
    for key in ledger.attempts:
        if key not in keys:
            report.violation("I2", f"ledger key {key} ran but no committed task has it")


def _ms(ns: int | None, t0: int) -> str:
    return "?" if ns is None else f"{(ns - t0) / 1e6:.0f}"


def _no_overlap(
    report: Report,
    task_id: str,
    key: str,
    attempts: list[Attempt],
    faults: FaultLog,
    t0: int,
) -> None:
    for i, a in enumerate(attempts):
        if not a.ended:
            report.violation(
                "I3",
                f"task {task_id} ({key}) attempt {a.n} (pid {a.pid}, started {_ms(a.start, t0)}) "
                "never ended: no end line and no recorded death",
            )
            continue
        for b in attempts[i + 1 :]:
            sure, maybe = a.surely_running_until, a.possibly_running_until
            assert maybe is not None
            if sure is not None and b.start < sure:
                if _excused(a, b, faults):
                    report.counts["I3 overlaps excused (frozen supervisor)"] = (
                        report.counts.get("I3 overlaps excused (frozen supervisor)", 0) + 1
                    )
                    continue
                report.violation(
                    "I3",
                    f"task {task_id} ({key}): attempt {b.n} (pid {b.pid}) started at "
                    f"{_ms(b.start, t0)} ms while attempt {a.n} (pid {a.pid}, started "
                    f"{_ms(a.start, t0)}) was still running until {_ms(sure, t0)} ms",
                )
            elif b.start < maybe and not _excused(a, b, faults):
                report.ambiguous.append(
                    f"task {task_id} ({key}): attempt {b.n} started at {_ms(b.start, t0)} ms, "
                    f"attempt {a.n} died between {_ms(sure, t0)} and {_ms(maybe, t0)} ms"
                )


def _excused(a: Attempt, b: Attempt, faults: FaultLog) -> bool:
    end = a.possibly_running_until
    return any(
        a.pid in f.excuse_pids and b.start >= f.at and end is not None and end <= f.excuse_until
        for f in faults.faults
    )


def _bounded(
    report: Report,
    task_id: str,
    key: str,
    attempts: list[Attempt],
    faults: FaultLog,
    expect: dict[str, object],
    t0: int,
) -> None:
    designed = int(expect.get("retries", 0))  # type: ignore[call-overload]
    for prev, nxt in itertools.pairwise(attempts):
        if prev.end is None:  # it died (killed, crashed, timed out): a restart is its due
            continue
        if any(f.at <= nxt.start and max(f.until, f.at) >= prev.start for f in faults.faults):
            continue  # a fault hit it between the two starts
        if designed > 0:
            designed -= 1
            continue
        report.violation(
            "I4",
            f"task {task_id} ({key}) started again (attempt {nxt.n} at {_ms(nxt.start, t0)} "
            f"ms) though attempt {prev.n} ended normally (at {_ms(prev.end, t0)} ms) and no "
            "fault happened in between",
        )
    limit = expect.get("max_starts")
    if limit is not None and len(attempts) > int(limit):  # type: ignore[call-overload]
        report.violation(
            "I4", f"task {task_id} ({key}) started {len(attempts)} times (at most {limit})"
        )


def _fenced(report: Report, row: Row, key: str, attempts: list[Attempt]) -> None:
    if row.status != "COMPLETED" or not attempts:
        return
    last = attempts[-1]
    try:
        value = loads_result(row.result) if row.result is not None else None
    except Exception as exc:  # the result must be readable; say why not
        report.violation("I5", f"task {row.id} ({key}): stored result unreadable: {exc!r}")
        return
    expected = f"{key} {last.n} {last.pid}"
    if value != expected:
        report.violation(
            "I5",
            f"task {row.id} ({key}): stored result {value!r} is not the last attempt's "
            f"({expected!r}): a stale holder's write got through",
        )
    elif last.end is None:
        report.violation(
            "I5", f"task {row.id} ({key}): completed by attempt {last.n}, which never ended"
        )


def _count(
    report: Report, rows: dict[str, Row], producer: Producer, ledger: Ledger, logs: Iterable[Path]
) -> None:
    counts = report.counts
    counts["tasks committed"] = len(producer.committed)
    for row in rows.values():
        counts[f"tasks {row.status}"] = counts.get(f"tasks {row.status}", 0) + 1
    starts = sum(len(a) for a in ledger.attempts.values())
    counts["attempts started"] = starts
    counts["re-runs (starts after the first)"] = starts - len(ledger.attempts)
    counts["tasks lost (I1)"] = sum(
        rows.get(i) is None or rows[i].status not in TERMINAL for i in producer.committed
    )
    counts["concurrent duplicates (I3)"] = sum(v.startswith("I3") for v in report.violations)
    fenced = 0
    for log in logs:
        if log.exists():
            fenced += log.read_text(errors="replace").count(FENCED_LOG)
    counts["stale writes fenced and logged"] = fenced


def _as_tuple(value: object) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list | tuple | set) else (str(value),)
