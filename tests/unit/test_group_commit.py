"""Group commit's bookkeeping: every call of a group gets its own answer, whatever the
commit does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.models import Task, create_task
from omniq_mp.storage.group_commit import LoopGroups, Outcomes, ThreadGroups
from tests.waiting import until, wait_for


def ids_or_refused(batches: list[Sequence[Task]]) -> Outcomes:
    """A commit that refuses calls whose first task is named "refused"."""
    return [
        ValueError("refused") if b[0].func_name == "refused" else [t.id for t in b] for b in batches
    ]


class HeldCommits:
    """``commit`` for the groups: the first commit waits for ``release``; each commit's
    batches are recorded; ``fail`` makes every later commit raise it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.groups: list[int] = []
        self.fail: BaseException | None = None

    def commit(self, batches: list[Sequence[Task]]) -> Outcomes:
        first = not self.groups
        self.groups.append(len(batches))
        if first:
            self.release.wait(10)
        elif self.fail is not None:
            raise self.fail
        return ids_or_refused(batches)


def run_threads(
    groups: ThreadGroups, calls: list[list[Task]], held: HeldCommits
) -> dict[int, object]:
    outcomes: dict[int, object] = {}

    def call(index: int, tasks: list[Task]) -> None:
        try:
            outcomes[index] = groups.enqueue(tasks)
        except BaseException as exc:
            outcomes[index] = exc

    first = threading.Thread(target=call, args=(-1, [create_task("m.f")]))
    first.start()
    wait_for(lambda: groups._committing, 5, "the first commit to start")
    threads = [threading.Thread(target=call, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(groups._waiting) == len(calls), 5, "every call to wait")
    held.release.set()
    for thread in [first, *threads]:
        thread.join(10)
    return outcomes


def test_threads_get_their_own_ids_or_refusal_from_one_shared_commit() -> None:
    held = HeldCommits()
    groups = ThreadGroups(held.commit)
    calls = [[create_task("m.f")], [create_task("refused")], [create_task("m.f")]]
    outcomes = run_threads(groups, calls, held)
    assert held.groups == [1, 3]
    assert outcomes[0] == [calls[0][0].id]
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2] == [calls[2][0].id]


def test_a_failed_commit_fails_every_call_of_its_group() -> None:
    held = HeldCommits()
    held.fail = StorageError("disk full")
    outcomes = run_threads(
        ThreadGroups(held.commit), [[create_task("m.f")] for _ in range(3)], held
    )
    assert isinstance(outcomes[-1], list)  # the first commit went through
    assert [str(outcomes[i]) for i in range(3)] == ["disk full"] * 3


def test_an_interrupted_commit_tells_the_other_threads_and_passes_the_next_turn_on() -> None:
    held = HeldCommits()
    held.fail = KeyboardInterrupt()
    groups = ThreadGroups(held.commit)
    outcomes = run_threads(groups, [[create_task("m.f")] for _ in range(3)], held)
    errors = [outcomes[i] for i in range(3)]
    # One of the three committed and was interrupted itself; the others were told.
    assert sum(isinstance(e, KeyboardInterrupt) for e in errors) == 1
    told = [e for e in errors if isinstance(e, StorageError)]
    assert len(told) == 2 and all("may or may not be stored" in str(e) for e in told)
    held.fail = None
    task = create_task("m.f")
    assert groups.enqueue([task]) == [task.id]  # nobody is left holding the turn


async def test_coroutines_get_their_own_ids_or_refusal_from_one_shared_commit() -> None:
    release = asyncio.Event()
    sizes: list[int] = []

    async def commit(batches: list[Sequence[Task]]) -> Outcomes:
        sizes.append(len(batches))
        if len(sizes) == 1:
            await release.wait()
        return ids_or_refused(batches)

    groups = LoopGroups(commit)
    first = asyncio.ensure_future(groups.enqueue([create_task("m.f")]))
    await until(lambda: _true(bool(sizes)), 5, "the first commit to start")
    calls = [[create_task("m.f")], [create_task("refused")], [create_task("m.f")]]
    waiting = [asyncio.ensure_future(groups.enqueue(c)) for c in calls]
    await until(lambda: _true(len(groups._waiting) == 3), 5, "every call to wait")
    release.set()
    await first
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert sizes == [1, 3]
    assert outcomes[0] == [calls[0][0].id]
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2] == [calls[2][0].id]


async def test_a_failed_coroutine_commit_fails_every_call_of_its_group() -> None:
    async def commit(batches: list[Sequence[Task]]) -> Outcomes:
        raise StorageError("read-only")

    groups = LoopGroups(commit)
    results = await asyncio.gather(
        *(groups.enqueue([create_task("m.f")]) for _ in range(3)), return_exceptions=True
    )
    assert [str(r) for r in results] == ["read-only"] * 3
    with pytest.raises(StorageError):  # and the next call commits afresh
        await groups.enqueue([create_task("m.f")])


async def _true(value: bool) -> bool:
    return value
