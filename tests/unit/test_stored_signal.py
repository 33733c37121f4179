"""StoredSignal: how a thread waiting for a result in place learns that outcomes were
stored, without missing one stored between its read and its wait."""

from __future__ import annotations

import threading

from omniq_mp.watcher import StoredSignal


def test_a_bump_from_another_thread_ends_the_wait() -> None:
    signal = StoredSignal()
    seen = signal.generation
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(signal.wait_after(seen, 60)))
    waiter.start()
    signal.bump()
    waiter.join(30)
    assert woke == [True]  # woken, not timed out (the wait was 60 s)


def test_a_bump_between_the_read_and_the_wait_is_not_missed() -> None:
    signal = StoredSignal()
    seen = signal.generation  # noted before the read
    signal.bump()  # an outcome lands while the waiter reads
    assert signal.wait_after(seen, 60) is True  # returns at once


def test_without_a_bump_the_wait_times_out() -> None:
    signal = StoredSignal()
    assert signal.wait_after(signal.generation, 0.01) is False


def test_places_are_limited_and_given_back() -> None:
    signal = StoredSignal(readers=2)
    assert [signal.enter("a"), signal.enter("a"), signal.enter("b")] == [True, True, False]
    signal.leave("a")
    assert signal.enter("b") is True


def test_a_settlement_wakes_waiters_only_when_one_waits_for_that_task() -> None:
    # An embedded supervisor settles every task of a drain: a thread waiting for one of
    # them must not be woken (and read again) for each of the others.
    signal = StoredSignal()
    assert signal.enter("waited")
    seen = signal.generation
    signal.settled("another")
    assert signal.generation == seen
    signal.settled("waited")
    assert signal.wait_after(seen, 60) is True
    signal.leave("waited")
    seen = signal.generation
    signal.settled("waited")  # nobody waits for it any more
    assert signal.generation == seen
