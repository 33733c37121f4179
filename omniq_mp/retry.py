"""The retry budget and backoff, in one place: the queue owns the policy, workers never do.

``max_retries`` counts retries after the first execution, so ``max_retries=3`` allows four
executions; ``attempts`` counts executions started (charged at claim time). A failed
attempt is retried while ``attempts <= max_retries`` and its error is retryable. The
delay before retry *n* is ``min(cap, base * 2**(n-1))`` scaled by a uniform factor in
``[1 - jitter, 1 + jitter]``: 1 s, 2 s, 4 s ... 60 s, each +/-25%.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from omniq_mp.config import check_seconds
from omniq_mp.errors import ConfigError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    :param base: delay before the first retry, in seconds.
    :param cap: largest delay before jitter, in seconds.
    :param jitter: relative spread; 0.25 means +/-25%.
    """

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_seconds("base", self.base)
        check_seconds("cap", self.cap)
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"jitter must be in [0, 1), got {self.jitter!r}")

    @staticmethod
    def should_retry(attempts: int, max_retries: int, retryable: bool = True) -> bool:
        """True if a task that failed its ``attempts``-th execution may run again."""
        return retryable and attempts <= max_retries

    def nominal_delay(self, retry_number: int) -> float:
        """The delay before retry ``retry_number`` (1-based), before jitter."""
        exponent = min(max(retry_number, 1) - 1, 62)  # 2**62 s is past any cap; no overflow
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, retry_number: int) -> float:
        """The jittered delay before retry ``retry_number`` (1-based), in seconds."""
        spread = self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return self.nominal_delay(retry_number) * spread
