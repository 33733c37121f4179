"""The byte bound of a claim (``within_budget``), which every store applies in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from omniq_mp.storage.base import within_budget

sizes = st.lists(st.integers(min_value=0, max_value=1_000), max_size=20)


@given(sizes, st.integers(min_value=0, max_value=5_000))
def test_a_claim_takes_the_longest_run_from_the_first_that_fits(
    payloads: list[int], max_bytes: int
) -> None:
    taken = within_budget(payloads, max_bytes)
    if not payloads:
        assert taken == 0
        return
    assert 1 <= taken <= len(payloads)  # the first always comes
    assert taken == 1 or sum(payloads[:taken]) <= max_bytes
    if taken < len(payloads):  # stopped at the first that did not fit, not before
        assert sum(payloads[: taken + 1]) > max_bytes


@given(sizes)
def test_no_bound_takes_every_candidate(payloads: list[int]) -> None:
    assert within_budget(payloads, None) == len(payloads)
