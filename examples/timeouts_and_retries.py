"""Timeouts kill only the overrunning task; failures retry with backoff; futures tell you.

python examples/timeouts_and_retries.py
"""

from __future__ import annotations

import concurrent.futures
import tempfile
import time
from pathlib import Path

from omniq_mp import OmniQ, TaskFailedError


def flaky(marker: str) -> str:
    """Fails on its first run, succeeds on the retry (the marker file remembers)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried once")
        raise ConnectionError("the service blinked")
    return "succeeded on retry"


with OmniQ(procs=2, retry_delay=0.2) as q, tempfile.TemporaryDirectory() as scratch:
    overrun = q.submit(time.sleep, 60, timeout=1, max_retries=0)  # killed after 1 s
    retried = q.submit(flaky, f"{scratch}/marker", max_retries=2)
    quick = q.submit(sum, [1, 2, 3])
    for future in concurrent.futures.as_completed([overrun, retried, quick], timeout=60):
        try:
            # ids begin with their creation time: the last digits tell tasks apart
            print(f"{future.task_id[-8:]}: {future.result()!r}")
        except TaskFailedError as exc:
            print(f"{future.task_id[-8:]}: {exc.error_type}: {exc.message}")
    task = q.get_task(retried.task_id)
    assert task is not None
    print(f"the flaky task ran {task.attempts} times")
