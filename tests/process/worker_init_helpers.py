"""Worker initializers the worker_init tests name by dotted path (the workers import this
module by name, so it must stay importable from the repository root)."""

from __future__ import annotations

import os
import time
from pathlib import Path

LOADED: str | None = None  # set by load() in each worker
CALLS = 0  # how many times load() ran in this process


def load() -> None:
    """Stands for loading a model: note which process did it, and count the calls."""
    global LOADED, CALLS
    LOADED = f"loaded in {os.getpid()}"
    CALLS += 1


def loaded() -> tuple[int, str | None, int]:
    """A task: (this worker's pid, what load() left here, how often load() ran here)."""
    return os.getpid(), LOADED, CALLS


def fail() -> None:
    raise ValueError("model file missing")


def hang() -> None:
    time.sleep(600)


def works_once() -> None:
    """Succeeds for the first worker only; every later start fails (a resource that was
    there at start-up and then went away)."""
    marker = Path(os.environ["OMNIQ_TEST_INIT_LOG"])
    if marker.exists():
        raise RuntimeError("the licence server refused a second seat")
    marker.write_text("taken")


def die() -> None:
    """A task whose process dies, so that its worker must be started again."""
    os._exit(3)
