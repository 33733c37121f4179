"""The retry budget and backoff bounds (reference decisions 3 and 4)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omniq_mp.errors import ConfigError
from omniq_mp.retry import RetryPolicy


@given(max_retries=st.integers(0, 50))
def test_max_retries_allows_exactly_one_plus_max_retries_executions(max_retries: int) -> None:
    executions = 1
    while RetryPolicy.should_retry(executions, max_retries):
        executions += 1
    assert executions == max_retries + 1


def test_non_retryable_errors_are_never_retried() -> None:
    assert not RetryPolicy.should_retry(1, 10, retryable=False)


def test_nominal_delays_double_from_one_second_up_to_sixty() -> None:
    policy = RetryPolicy()
    assert [policy.nominal_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


@given(retry=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_jittered_delay_stays_within_25_percent_of_nominal(retry: int, seed: int) -> None:
    policy = RetryPolicy(rng=random.Random(seed))
    nominal = policy.nominal_delay(retry)
    assert 0.75 * nominal <= policy.delay(retry) <= 1.25 * nominal


def test_jitter_actually_spreads_delays() -> None:
    policy = RetryPolicy(rng=random.Random(7))
    delays = {round(policy.delay(3), 6) for _ in range(50)}
    assert len(delays) > 40 and min(delays) < 4 < max(delays)


@pytest.mark.parametrize(
    "kwargs", [{"base": 0}, {"base": -1}, {"cap": float("inf")}, {"jitter": 1.0}, {"jitter": -0.1}]
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
