"""Enqueue lambdas, closures and a CPU-bound function; read their results.

Run: python examples/quickstart.py   (uses a temporary store, leaves nothing behind)
"""

from __future__ import annotations

import tempfile
import time

from omniq_mp import OmniQ, Settings, TaskFailedError


def fib(n: int) -> int:
    """Deliberately slow: CPU-bound work for the worker processes."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


with tempfile.TemporaryDirectory() as folder, OmniQ(Settings(base_dir=folder, procs=2)) as q:
    task_id = q.enqueue(lambda x: x * 2, 21)
    print("lambda:", q.get_result(task_id, timeout=10))

    base = 100
    closures = [q.enqueue(lambda i=i: base + i) for i in range(5)]
    print("closures:", [q.get_result(t, timeout=10) for t in closures])

    began = time.perf_counter()
    fibs = [q.enqueue(fib, 24) for _ in range(4)]
    print(
        "fib(24) x4:",
        [q.get_result(t, timeout=30) for t in fibs],
        f"in {time.perf_counter() - began:.2f}s",
    )

    slow = q.enqueue(time.sleep, 10, timeout=0.5, max_retries=0)
    try:
        q.get_result(slow, timeout=10)
    except TaskFailedError as exc:
        print("timeout:", exc.error_type, "-", exc.message)
