"""A follower in another process receives every event of 2,000 tasks exactly once, across
a crash and restart of the follower."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings
from omniq_mp.events import AsyncEventProcessor, Event, EventType
from omniq_mp.eventstore import SQLiteEventStorage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The follower appends "position event_type task_id" lines; on start it resumes after the
# last line it wrote (its output is its saved position). It crashes (os._exit, no cleanup)
# after `crash_after` events, or stops cleanly once it has written `until` lines in all.
FOLLOWER = """
import asyncio, os, sys
from omniq_mp.events import AsyncEventProcessor
events_db, out, crash_after, until = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = open(out).read().splitlines() if os.path.exists(out) else []
after = int(lines[-1].split()[0]) if lines else 0
written = len(lines)
processor = AsyncEventProcessor(
    event_storage_type="sqlite", event_storage_path=events_db, after=after, poll_interval=0.02
)
sink = open(out, "a")
handled = 0

def handle(event):
    global handled, written
    sink.write(f"{processor.current.position} {event.event_type.value} {event.task_id}\\n")
    sink.flush()
    handled += 1
    written += 1
    if handled == crash_after:
        os._exit(3)
    if written >= until:
        processor.stop()

processor.register_handler(handle)
asyncio.run(processor.start())
"""


def follower(events_db: Path, out: Path, crash_after: int, until: int) -> subprocess.Popen[str]:
    args = [str(events_db), str(out), str(crash_after), str(until)]
    return subprocess.Popen(
        [sys.executable, "-c", FOLLOWER, *args], stderr=subprocess.PIPE, text=True
    )


async def stored_positions(events_db: Path) -> list[tuple[int, str]]:
    storage = SQLiteEventStorage(events_db)
    await storage.open()
    found = []
    while batch := await storage.read(found[-1][0] if found else 0, 1000):
        found += [(s.position, s.event.event_type.value) for s in batch]
    await storage.close()
    return found


async def test_every_event_exactly_once_across_a_follower_restart(tmp_path: Path) -> None:
    events_db, out = tmp_path / "events.db", tmp_path / "seen.txt"
    first = follower(events_db, out, crash_after=2500, until=10**9)  # live, then crashes
    with OmniQ(Settings(base_dir=tmp_path, procs=2)) as q:
        ids = q.enqueue_tasks([q.build(pow, 2, n % 10) for n in range(2000)])
        for task_id in ids[-10:]:
            q.get_result(task_id, timeout=120)
        while q.stats().unfinished:
            q.get_result(ids[0], timeout=1)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 3, err  # it crashed mid-stream, as planned
    stored = await stored_positions(events_db)
    second = follower(events_db, out, crash_after=-1, until=len(stored))
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    seen = [line.split() for line in out.read_text().splitlines()]
    assert [(int(p), kind) for p, kind, _ in seen] == stored  # no gap, no repeat, in order
    assert sum(kind == "COMPLETED" for _, kind, _ in seen) == 2000


async def test_a_handler_that_raises_is_logged_and_the_processor_goes_on(tmp_path: Path) -> None:
    storage = SQLiteEventStorage(tmp_path / "events.db")
    await storage.open()
    await storage.append([Event(EventType.ENQUEUED, f"t{i}") for i in range(3)])
    processor = AsyncEventProcessor(storage, poll_interval=0.01)
    handled: list[str] = []

    def flaky(event: Event) -> None:
        if event.task_id == "t1":
            raise ValueError("bad handler")
        handled.append(event.task_id or "")
        if len(handled) == 2:
            processor.stop()

    processor.register_handler(flaky)
    await processor.start()
    await storage.close()
    assert handled == ["t0", "t2"] and processor.handler_errors == 1 and processor.position == 3
