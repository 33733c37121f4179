"""The chaos runner cannot rot: a 30-second run with a fixed seed injects faults of
several kinds and reports 0 violations (the full run is ``python -m tests.chaos
--minutes 10 --seed N``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.reliability.harness import REPO, subreaper, wait_gone

pytestmark = [pytest.mark.slow, pytest.mark.process, pytest.mark.timeout(300)]


def test_a_30_second_chaos_run_injects_faults_and_finds_no_violation(tmp_path: Path) -> None:
    with subreaper():
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        done = subprocess.run(
            [sys.executable, "-m", "tests.chaos", "--minutes", "0.5", "--seed", "1",
             "--workdir", str(tmp_path / "chaos")],
            cwd=REPO, capture_output=True, text=True, timeout=280, check=False,
        )  # fmt: skip
        left = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]
        still, _ = wait_gone(left, 1.0)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chaos: seed 1" in done.stdout and "violations: 0" in done.stdout, done.stdout
    summary = json.loads((tmp_path / "chaos" / "chaos.json").read_text())
    assert summary["seed"] == 1 and summary["violations"] == []
    assert sum(summary["faults"].values()) >= 3 and len(summary["faults"]) >= 3, summary["faults"]
    assert summary["invariants"]["tasks committed"] > 50
    assert not still, f"the chaos runner left processes behind: {still}"
