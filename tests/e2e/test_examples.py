"""Every example runs as a user would run it, in a fresh folder, within a time bound, and
prints what it promises; the notebook is executed by a real Jupyter kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import start_workers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROOT = EXAMPLES.parent


def run_example(name: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    assert "42" in out
    assert not list(tmp_path.iterdir())  # its store was temporary


def test_cpu_fanout_map(tmp_path: Path) -> None:
    assert "primes below 200000: 17984" in run_example("cpu_fanout_map.py", tmp_path)


def test_timeouts_and_retries(tmp_path: Path) -> None:
    out = run_example("timeouts_and_retries.py", tmp_path)
    assert ": 6" in out and "'succeeded on retry'" in out
    assert "TimeoutError: task exceeded its 1s timeout" in out
    assert "the flaky task ran 2 times" in out


def test_events_follower(tmp_path: Path) -> None:
    out = run_example("events_follower.py", tmp_path)
    finished = [line for line in out.splitlines() if line.split()[1:2] == ["COMPLETED"]]
    assert len(finished) == 5
    assert "ENQUEUED -> STARTED -> COMPLETED" in out


def test_several_processes(tmp_path: Path) -> None:
    out = run_example("several_processes.py", tmp_path)
    assert "alice got 20 results, last alice:361" in out
    assert "bob got 20 results, last bob:361" in out
    assert "workers exited with 0" in out


def test_producer_with_workers_in_another_process(tmp_path: Path) -> None:
    workers = start_workers(tmp_path / "omniq_data", "--procs", "1")
    try:
        out = run_example("producer.py", tmp_path)
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.communicate(timeout=60)
    assert out.strip() == str([2**n for n in range(10)])


def test_the_notebook_runs_in_a_jupyter_kernel(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=90,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env={**os.environ, "PYTHONPATH": str(ROOT)})
    outputs = [_text(cell) for cell in notebook.cells if cell.cell_type == "code"]
    assert outputs[1] == "196.72"  # a closure over a notebook variable
    assert "100/100" in outputs[2] and outputs[2].endswith("328350")
    assert outputs[3] == "TimeoutError"
    assert outputs[4] == "(True, True)"  # cancel of a running task
    assert outputs[5] == "1048576"  # a future awaited in a cell
    assert outputs[6] == "196.72"  # re-attached by task id
    assert all("Error" not in text or text == "TimeoutError" for text in outputs)


def _text(cell: object) -> str:
    parts = []
    for output in getattr(cell, "outputs", []):
        if output.get("output_type") == "error":
            parts.append(f"{output['ename']}: {output['evalue']}")
        parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "".join(parts).strip()
