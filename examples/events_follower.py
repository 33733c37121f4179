"""Follow task events live while tasks run, then read one task's history.

python examples/events_follower.py
"""

from __future__ import annotations

import asyncio

from omniq_mp import AsyncOmniQ
from omniq_mp.eventstore import EventType

TERMINAL = {EventType.COMPLETED, EventType.DEAD, EventType.CANCELLED}


async def main() -> None:
    async with AsyncOmniQ(procs=2) as q:
        start = 0  # follow from the beginning of this store's log
        ids = {await q.enqueue(lambda n: n * n, n) for n in range(5)}
        finished: set[str] = set()
        async for stored in q.events(follow=True, after=start):
            event = stored.event
            if event.task_id in ids:
                # ids begin with their creation time: the last digits tell tasks apart
                print(f"{stored.position:>4} {event.event_type.value:<10} {event.task_id[-8:]}")
                if event.event_type in TERMINAL:
                    finished.add(event.task_id)
            if finished == ids:
                break
        one = sorted(ids)[0]
        history = [e.event_type.value for e in await q.get_events(one)]
        print(f"history of {one[-8:]}: {' -> '.join(history)}")


asyncio.run(main())
