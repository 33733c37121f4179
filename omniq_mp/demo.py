"""The tasks ``omniq-mp demo`` runs: one of each kind a user meets on day one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DemoTask", "demo_tasks"]

DemoTask = tuple[str, Callable[..., Any] | str, tuple[Any, ...], dict[str, Any]]


def cpu_work(n: int) -> int:
    """Pure-Python CPU work: the sum of squares below ``n``."""
    return sum(i * i for i in range(n))


async def async_work(x: int) -> int:
    """A coroutine function: workers await it."""
    await asyncio.sleep(0.01)
    return x + 1


def demo_tasks(scratch: Path) -> list[DemoTask]:
    """Labelled calls with their options: lambdas, a closure, CPU work, a flaky task that
    succeeds on its retry, a dotted path, an async function and a task that overruns."""
    factor = 3
    marker = scratch / f"flaky-{time.time_ns()}"

    def flaky() -> str:
        # Fails on the first attempt only: the marker file remembers it across processes.
        if not marker.exists():
            marker.write_text("failed once")
            raise ConnectionError("simulated flaky network: will succeed on retry")
        return "succeeded on retry"

    tasks: list[DemoTask] = [
        ("lambda", lambda x: x * x, (12,), {}),
        ("closure", lambda v: v * factor, (14,), {}),
        ("dotted path", "math.factorial", (20,), {}),
        ("async function", async_work, (41,), {}),
        ("flaky, retried", flaky, (), {"max_retries": 2}),
        ("overruns 1s timeout", time.sleep, (30,), {"timeout": 1.0, "max_retries": 0}),
    ]
    tasks += [(f"cpu #{i}", cpu_work, (400_000 + i,), {}) for i in range(8)]
    return tasks
