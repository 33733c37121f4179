"""A backlog of tasks with large arguments costs the supervisor a bounded amount of
memory: it claims and sends ahead only as many as ``Pacer.BUFFER_BYTES`` of payloads
beyond one per worker, however many are queued and however quick they are, and whatever
size the tasks before them had.

Measured on a real ``omniq-mp workers`` process through the kernel's high-water mark
(``VmHWM``), so no moment of the drain escapes the check.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from omniq_mp import LargePayloadWarning, OmniQ, Settings
from omniq_mp.worker import Pacer
from tests.e2e.conftest import start_workers
from tests.e2e.test_large_results import needs_proc, peak_rss, stop

pytestmark = pytest.mark.process

SIZE = 16 * 2**20
BACKLOG = 40  # 640 MiB of arguments queued at once


@needs_proc
@pytest.mark.parametrize("warm_up", ["one large task", "many small tasks"])
def test_a_backlog_of_large_arguments_raises_the_supervisors_peak_memory_by_a_bounded_amount(
    tmp_path: Path, warm_up: str
) -> None:
    warnings.simplefilter("ignore", LargePayloadWarning)  # large on purpose
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store, event_storage_type="none"))
    workers = start_workers(store, "--procs", "2", OMNIQ_EVENT_STORAGE_TYPE="none")
    data = os.urandom(SIZE)
    try:
        if warm_up == "one large task":
            # Start-up, the first settle and the first large task behind us: the supervisor
            # has measured its tasks as quick, which alone would have it claim 128 at a time.
            q.get_result(q.enqueue(len, data), timeout=60)
        else:
            # Quick tasks with tiny arguments: all the supervisor knows of payloads says
            # its next claim may take the whole backlog below; the store's byte bound on
            # a claim must hold it back.
            small = q.enqueue_many(len, [(b"x",)] * 300)
            assert [q.get_result(i, timeout=60) for i in small] == [1] * 300
        baseline = peak_rss(workers.pid)
        ids = q.enqueue_many(len, [(data,)] * BACKLOG)
        assert [q.get_result(i, timeout=120) for i in ids] == [SIZE] * BACKLOG
        grew = peak_rss(workers.pid) - baseline
    finally:
        q.close()
        stop(workers)
    bound = 3 * Pacer.BUFFER_BYTES  # the buffer, one task per worker, copies in transit
    print(f"supervisor peak RSS +{grew / 2**20:.0f} MiB for {BACKLOG} x 16 MiB queued")
    assert grew < bound, (
        f"the supervisor's peak RSS grew by {grew / 2**20:.0f} MiB draining {BACKLOG} "
        f"tasks of 16 MiB arguments (bound {bound / 2**20:.0f} MiB)"
    )
