"""Row 30: a 100 MiB result costs the supervisor at most 1.5 times its size in peak memory,
and a result over ``max_result_size`` costs it next to nothing (the worker never sends it).

Measured on a real ``omniq-mp workers`` process through the kernel's own high-water mark
(``VmHWM``), so no moment between the frame's arrival and the commit escapes the check.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings, TaskFailedError
from tests.e2e.conftest import start_workers
from tests.malformed import objects

pytestmark = pytest.mark.process

SIZE = 100 * 2**20


def peak_rss(pid: int) -> int:
    """The process's peak resident set size so far, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def stop(workers: subprocess.Popen[str]) -> None:
    workers.terminate()
    try:
        workers.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        workers.kill()
        workers.communicate()


@needs_proc
def test_a_100_mib_result_raises_the_supervisors_peak_memory_by_under_1_5_times_its_size(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store))
    workers = start_workers(store, "--procs", "1")
    try:
        warm = q.enqueue(objects.random_block, 1024)  # start-up and first settle behind us
        q.get_result(warm, timeout=60)
        baseline = peak_rss(workers.pid)
        task_id = q.enqueue(objects.random_block, SIZE)
        digest, block = q.get_result(task_id, timeout=120)
        grew = peak_rss(workers.pid) - baseline
    finally:
        q.close()
        stop(workers)
    assert hashlib.sha256(block).hexdigest() == digest and len(block) == SIZE
    print(f"supervisor peak RSS +{grew / 2**20:.0f} MiB for a {SIZE / 2**20:.0f} MiB result")
    assert grew < 1.5 * SIZE, (
        f"the supervisor's peak RSS grew by {grew / 2**20:.0f} MiB for a "
        f"{SIZE / 2**20:.0f} MiB result (limit {1.5 * SIZE / 2**20:.0f} MiB)"
    )


@needs_proc
def test_a_result_over_the_limit_never_reaches_the_supervisors_memory(tmp_path: Path) -> None:
    # The row's 1.5 GiB over a 256 MB limit, scaled down: 160 MiB over a 16 MB limit.
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store))
    workers = start_workers(store, "--procs", "1", OMNIQ_MAX_RESULT_SIZE="16MB")
    try:
        warm = q.enqueue(objects.random_block, 1024)
        q.get_result(warm, timeout=60)
        baseline = peak_rss(workers.pid)
        task_id = q.enqueue(objects.random_block, 160 * 2**20)
        with pytest.raises(TaskFailedError, match="max_result_size"):
            q.get_result(task_id, timeout=120)
        grew = peak_rss(workers.pid) - baseline
    finally:
        q.close()
        stop(workers)
    assert grew < 20 * 2**20, f"the supervisor's peak RSS grew by {grew / 2**20:.0f} MiB"
