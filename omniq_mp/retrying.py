"""Writing to a store that may be unreachable for a while: retry with backoff, say so once
per outage (not once per attempt), and give up only when told to."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger

from omniq_mp.errors import StorageReadOnlyError

__all__ = ["OutageWriter"]

_FIRST_DELAY = 0.1
_MAX_DELAY = 5.0


class OutageWriter:
    """Runs writes, retrying each until it succeeds or ``give_up()`` turns true.

    :param what: names the store in log lines ("event store", "result store").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self.in_outage = False

    async def write(
        self,
        attempt: Callable[[], Awaitable[None]],
        give_up: Callable[[], bool],
        stopping: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Run ``attempt`` until it succeeds (True) or ``give_up()`` (False). While
        ``stopping()``, a store that says it is read-only is given up at once: it will not
        turn writable in the seconds a stop waits, and the stop should not wait for it."""
        delay = _FIRST_DELAY
        while True:
            try:
                await attempt()
            except Exception as exc:
                self.failures += 1
                if not self.in_outage:
                    self.in_outage = True
                    logger.bind(action="store_unreachable").warning(
                        "{} unreachable, retrying with backoff: {}", self.what, exc
                    )
                if give_up() or (stopping() and isinstance(exc, StorageReadOnlyError)):
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)
            else:
                if self.in_outage:
                    self.in_outage = False
                    logger.bind(action="store_reachable").info("{} reachable again", self.what)
                return True
