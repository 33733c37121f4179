"""How late tasks that fall due later start on an idle supervisor.

An embedded supervisor with 1 process sits idle (its store poll backed off); then a task
with an ETA 0.3 to 0.7 s ahead is enqueued, and separately a task whose first attempt
fails and is retried after a 0.5 s backoff. Printed: how long after its due time each
started (the task returns ``time.time()`` in the worker), p50 and p99, against what the
idle poll alone would give (up to 8 x ``poll_interval``, 0.4 s by default).
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from pathlib import Path

from _common import Figure, main_of, percentile, scratch_dir

from omniq_mp import OmniQ, Settings

BENCH = "eta_lateness"
IDLE = 0.3  # seconds between samples: enough for the idle poll to back off


def fail_first(marker: str) -> float:
    """Raise on the first call for ``marker``, then return when it ran."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return time.time()


def measure(quick: bool) -> list[Figure]:
    """ETA and retry start lateness, in ms."""
    samples = 3 if quick else 40
    eta_late: list[float] = []
    retry_late: list[float] = []
    with scratch_dir() as base_dir:
        settings = Settings(base_dir=base_dir, procs=1, retry_delay=0.5, max_retries=1)
        with OmniQ(settings) as q:
            q.get_result(q.enqueue(time.time), timeout=30)
            for n in range(samples):
                time.sleep(IDLE)
                delay = random.uniform(0.3, 0.7)
                due = time.time() + delay
                ran = q.get_result(q.enqueue(time.time, eta=timedelta(seconds=delay)), timeout=30)
                eta_late.append((ran - due) * 1000)
                time.sleep(IDLE)
                task_id = q.enqueue(fail_first, str(base_dir / f"marker-{n}"))
                ran = q.get_result(task_id, timeout=30)
                retry_late.append((ran - retry_eta(q, task_id)) * 1000)
    return [
        Figure(BENCH, "ETA task: start after its ETA, p50", percentile(eta_late, 50), "ms"),
        Figure(BENCH, "ETA task: start after its ETA, p99", percentile(eta_late, 99), "ms"),
        Figure(BENCH, "retry: start after its backoff, p50", percentile(retry_late, 50), "ms"),
        Figure(BENCH, "retry: start after its backoff, p99", percentile(retry_late, 99), "ms"),
    ]


def retry_eta(q: OmniQ, task_id: str) -> float:
    """When the failed first attempt said the retry was due (its RETRIED/SCHEDULED event)."""
    for event in q.get_events(task_id):
        if "eta" in event.details:
            return float(event.details["eta"])
    raise AssertionError(f"task {task_id} has no event with the retry's time")


if __name__ == "__main__":
    main_of(measure, __doc__)
