"""The byte bound of a claim (``within_budget``), which every store applies in order."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from omniq_mp.storage.base import within_budget

sizes = st.lists(st.integers(min_value=0, max_value=1_000), max_size=20)


@given(sizes, st.integers(min_value=0, max_value=5_000), st.integers(min_value=1, max_value=5))
def test_a_claim_takes_its_first_tasks_then_the_longest_run_that_fits(
    payloads: list[int], max_bytes: int, min_tasks: int
) -> None:
    taken = within_budget(payloads, max_bytes, min_tasks)
    assert taken == len(payloads) or taken >= min_tasks  # those come whatever their size
    assert sum(payloads[min_tasks:taken]) <= max_bytes
    if taken < len(payloads):  # stopped at the first that did not fit, not before
        assert sum(payloads[min_tasks : taken + 1]) > max_bytes


def test_sizes_are_read_only_as_far_as_needed() -> None:
    read: list[int] = []

    def sizes() -> Iterator[int]:
        for size in (10, 10, 10, 10):
            read.append(size)
            yield size

    assert within_budget(sizes(), 15) == 2
    assert len(read) == 3  # the third did not fit; the fourth was never sized


def test_a_missing_payload_takes_no_place_and_no_bytes() -> None:
    # Set aside by the claim that meets it: the healthy tasks behind it fill the places.
    assert within_budget([None, 10, 10, 10], 15, min_tasks=1) == 3
    assert within_budget([None, None, 7], 0) == 3
    assert within_budget([5, None, 20], 10) == 2


@given(sizes)
def test_no_bound_takes_every_candidate(payloads: list[int]) -> None:
    assert within_budget(payloads, None) == len(payloads)
