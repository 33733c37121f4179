"""The single-reader queue under a worker's frames, the outcomes and the events: items
come out in the order they went in, a waiting reader wakes on a put from a callback, and
misuse (a second waiting reader) is an error rather than a lost wake-up."""

from __future__ import annotations

import asyncio

import pytest

from omniq_mp.inbox import Inbox


async def test_items_come_out_in_the_order_they_were_put() -> None:
    inbox: Inbox[int] = Inbox()
    for i in range(5):
        inbox.put_nowait(i)
    assert inbox.qsize() == 5
    assert [await inbox.get(), inbox.get_nowait()] == [0, 1]
    assert [await inbox.get() for _ in range(3)] == [2, 3, 4]
    assert inbox.empty()


async def test_a_waiting_reader_wakes_on_a_put_from_a_callback() -> None:
    inbox: Inbox[str] = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()  # nothing to read: it waits
    asyncio.get_running_loop().call_soon(inbox.put_nowait, "frame")
    assert await asyncio.wait_for(reader, 5) == "frame"


async def test_get_nowait_on_an_empty_inbox_raises_queue_empty() -> None:
    with pytest.raises(asyncio.QueueEmpty):
        Inbox[int]().get_nowait()


async def test_a_second_waiting_reader_is_refused() -> None:
    inbox: Inbox[int] = Inbox()
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one reader"):
        await inbox.get()
    inbox.put_nowait(1)
    assert await first == 1


async def test_a_cancelled_reader_leaves_the_inbox_to_the_next_one() -> None:
    inbox: Inbox[int] = Inbox()
    gone = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    inbox.put_nowait(7)  # not consumed by the cancelled reader
    assert await asyncio.wait_for(inbox.get(), 5) == 7
