"""Crash points: make a process die at a named step of a task's life, for tests.

    OMNIQ_CRASHPOINT=after_settle_commit     die at the first hit of that step
    OMNIQ_CRASHPOINT=after_settle_commit:3   die at its third hit

The process ends with ``os._exit(137)`` (the status of a SIGKILL as a shell reports it):
no ``finally`` blocks, no atexit handlers, no flushing, exactly like a crash or a kill at
that instant. The reliability tests use it to prove that a crash between any two steps
loses nothing (tests/reliability).

The variable is read once, at import. Without it :func:`crash_point` is a dictionary-free
comparison of two strings that never match, so production pays nothing measurable.

Named steps, in the order a task meets them:

``enqueue_before_commit``
    inside the store's enqueue transaction, rows written, COMMIT not yet sent (SQLite).
``after_claim_commit``
    the claim transaction committed; the tasks are in the supervisor's hands only.
``after_send_to_child``
    the RUN frame was written to the worker's socket.
``after_started``
    the worker acknowledged the task (STARTED received; the timeout clock starts).
``after_result_received``
    the attempt's outcome is in the supervisor, not yet written.
``in_retry_scheduling``
    a batch of outcomes holding a retry is about to be written.
``after_settle_commit``
    the outcomes' transaction committed, before the supervisor forgets the tasks.

And inside the file store's every write, whoever makes it (producer or supervisor):

``file_before_fsync``
    an entry's temp file is written, not yet fsync'ed.
``file_before_rename``
    a file is about to be renamed into place (an entry, a link, a state change).
"""

from __future__ import annotations

import os

__all__ = ["CRASHPOINT_ENV", "CRASH_EXIT_STATUS", "NAMES", "crash_point"]

CRASHPOINT_ENV = "OMNIQ_CRASHPOINT"
CRASH_EXIT_STATUS = 137
NAMES = (
    "enqueue_before_commit",
    "after_claim_commit",
    "after_send_to_child",
    "after_started",
    "after_result_received",
    "in_retry_scheduling",
    "after_settle_commit",
    "file_before_fsync",
    "file_before_rename",
)


def _parse(spec: str) -> tuple[str | None, int]:
    """``"name"`` or ``"name:N"`` -> (name, N); anything unusable disarms the hook."""
    name, _, nth = spec.strip().partition(":")
    if not name:
        return None, 0
    try:
        count = int(nth) if nth else 1
    except ValueError:
        return None, 0
    return (name, count) if count >= 1 else (None, 0)


_TARGET, _NTH = _parse(os.environ.get(CRASHPOINT_ENV, ""))
_hits = 0


def crash_point(name: str) -> None:
    """Die here (``os._exit(137)``) if ``OMNIQ_CRASHPOINT`` names this step and this is
    its N-th hit; otherwise return at once."""
    if name != _TARGET:
        return
    global _hits
    _hits += 1
    if _hits >= _NTH:
        os._exit(CRASH_EXIT_STATUS)
