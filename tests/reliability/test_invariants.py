"""The oracle must be able to fail: each invariant the checker enforces is shown catching a
hand-made ledger and store that break it (and passing the same run without the fault)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from omniq_mp.serialization import dumps_result
from tests.reliability.harness import FaultLog, Producer, Row
from tests.reliability.invariants import Report, check

MS = 1_000_000  # ns


class FakeStore:
    """Rows and an integrity verdict, as StoreView gives them."""

    def __init__(self, rows: Sequence[Row], verdict: str = "ok") -> None:
        self._rows = {r.id: r for r in rows}
        self.verdict = verdict

    def rows(self, ids: Sequence[str] | None = None) -> dict[str, Row]:
        return dict(self._rows)

    def integrity(self) -> str:
        return self.verdict


def row(task_id: str, status: str = "COMPLETED", result: str | None = None, **extra: object) -> Row:
    base = Row(task_id, status, 1, 0, None, None, None, None, None, None, 0)
    data = dumps_result(result) if result is not None else None
    return replace(base, result=data, **extra)  # type: ignore[arg-type]


def run(
    tmp_path: Path,
    lines: list[str],
    rows: Sequence[Row],
    *,
    faults: FaultLog | None = None,
    expect: dict[str, dict[str, object]] | None = None,
    verdict: str = "ok",
) -> Report:
    ledger = tmp_path / "ledger"
    ledger.write_text("".join(f"{line}\n" for line in lines))
    producer = Producer(tmp_path, committed={"id-a": "a"}, expect=expect or {})
    store = FakeStore(rows, verdict)
    return check(
        ledger_path=ledger,
        store=store,  # type: ignore[arg-type]
        producer=producer,
        faults=faults or FaultLog(),
    )


ONE_RUN = ["a 1 100 start 1000000", "a 1 100 end 2000000"]


def test_a_clean_run_passes(tmp_path: Path) -> None:
    report = run(tmp_path, ONE_RUN, [row("id-a", result="a 1 100")])
    assert report.ok, report.text()


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], "I1: task id-a (a) was committed but is not in the store"),
        ([row("id-a", "RUNNING")], "I1: task id-a (a) is still RUNNING"),
        ([row("id-a", "DEAD")], "I1: task id-a (a) is DEAD with no reason"),
        ([row("id-a", result="a 1 100"), row("id-x")], "I2: row id-x in the store was never"),
    ],
    ids=["missing", "unfinished", "no-reason", "phantom"],
)
def test_loss_and_phantoms_are_caught(tmp_path: Path, rows: list[Row], expected: str) -> None:
    report = run(tmp_path, ONE_RUN, rows)
    assert any(v.startswith(expected) for v in report.violations), report.text()


def test_an_execution_of_an_unknown_task_is_a_phantom(tmp_path: Path) -> None:
    lines = [*ONE_RUN, "zz 1 100 start 3000000", "zz 1 100 end 4000000"]
    report = run(tmp_path, lines, [row("id-a", result="a 1 100")])
    assert "I2: ledger key zz ran but no committed task has it" in report.violations


def test_overlapping_attempts_are_caught_and_a_death_bracket_is_only_ambiguous(
    tmp_path: Path,
) -> None:
    overlapping = [
        "a 1 100 start 1000000",
        "a 2 200 start 5000000",  # starts while attempt 1 still runs
        "a 1 100 end 9000000",
        "a 2 200 end 12000000",
    ]
    report = run(tmp_path, overlapping, [row("id-a", result="a 2 200")])
    # Also a duplicate without a cause: attempt 1 ended normally, nothing hit it.
    assert [v[:2] for v in report.violations] == ["I3", "I4"], report.text()
    bracket = [
        "a 1 100 start 1000000",
        "a 1 100 died 4000000 6000000",  # alive at 4 ms, dead by 6 ms
        "a 2 200 start 5000000",
        "a 2 200 end 9000000",
    ]
    report = run(tmp_path, bracket, [row("id-a", result="a 2 200")])
    assert report.ok and len(report.ambiguous) == 1, report.text()


def test_an_overlap_inside_a_frozen_supervisors_window_is_excused(tmp_path: Path) -> None:
    lines = ["a 1 100 start 1000000", "a 2 200 start 5000000", "a 1 100 died 6000000 7000000",
             "a 2 200 end 9000000"]  # fmt: skip
    faults = FaultLog()
    faults.add("SIGSTOP", excuse_pids=frozenset({100}), excuse_until=8 * MS).at = 2 * MS
    report = run(tmp_path, lines, [row("id-a", result="a 2 200")], faults=faults)
    assert report.ok, report.text()
    assert report.counts["I3 overlaps excused (frozen supervisor)"] == 1


def test_an_attempt_that_never_ended_is_caught(tmp_path: Path) -> None:
    report = run(tmp_path, ["a 1 100 start 1000000"], [row("id-a", "FAILED", error="x")])
    assert any("never ended" in v for v in report.violations), report.text()


def test_a_restart_without_a_cause_is_caught_unless_designed_or_faulted(tmp_path: Path) -> None:
    twice = [*ONE_RUN, "a 2 200 start 3000000", "a 2 200 end 4000000"]
    rows = [row("id-a", result="a 2 200")]
    report = run(tmp_path, twice, rows)
    assert [v[:2] for v in report.violations] == ["I4"], report.text()
    assert run(tmp_path, twice, rows, expect={"a": {"retries": 1}}).ok
    faults = FaultLog()
    faults.add("supervisor SIGKILL").at = int(2.5 * MS)
    assert run(tmp_path, twice, rows, faults=faults).ok
    report = run(tmp_path, twice, rows, expect={"a": {"retries": 1, "max_starts": 1}})
    assert any("started 2 times (at most 1)" in v for v in report.violations)


def test_a_stale_holders_result_is_caught(tmp_path: Path) -> None:
    lines = ["a 1 100 start 1000000", "a 1 100 died 1500000 2000000", "a 2 200 start 3000000",
             "a 2 200 end 4000000"]  # fmt: skip
    report = run(tmp_path, lines, [row("id-a", result="a 1 100")])
    assert [v[:2] for v in report.violations] == ["I5"], report.text()


def test_a_damaged_database_is_caught(tmp_path: Path) -> None:
    report = run(tmp_path, ONE_RUN, [row("id-a", result="a 1 100")], verdict="*** page 3 bad")
    assert report.violations == ["I7: PRAGMA integrity_check says '*** page 3 bad'"]
