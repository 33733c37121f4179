"""The event-storage contract every backend keeps (ordered positions, resumable reads,
filters, purge, exact round trips, several processes sharing a store), then the file
backend's own: damaged lines, segments, a folder in the way."""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import multiprocessing
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from multiprocessing.context import SpawnProcess
from pathlib import Path

import pytest
from loguru import logger

from omniq_mp.errors import StorageError
from omniq_mp.eventstore.base import Event, EventStorage, EventType, StoredEvent
from omniq_mp.eventstore.file import FileEventStorage
from tests.contract.event_backends import EVENT_BACKENDS, SHARED, backend_params
from tests.services import require

OLD = 1_000_000.0  # a timestamp long past


def make(
    writer: str,
    seq: int,
    timestamp: float | None = None,
    event_type: EventType = EventType.COMPLETED,
) -> Event:
    """An event that says who wrote it and in which order."""
    return Event(
        event_type,
        task_id=f"{writer}-{seq}",
        timestamp=time.time() if timestamp is None else timestamp,
        details={"writer": writer, "seq": seq},
    )


def new_unique() -> str:
    return uuid.uuid4().hex[:12]


@asynccontextmanager
async def opened(backend: str, folder: Path, unique: str) -> AsyncIterator[EventStorage]:
    """An opened log of ``backend`` at (``folder``, ``unique``); afterwards it is dropped,
    when the backend can (so servers keep nothing), and closed."""
    service, factory = EVENT_BACKENDS[backend]
    if service is not None:
        require(service)
    storage = factory(folder, unique)
    await storage.open()
    try:
        yield storage
    finally:
        try:
            drop = getattr(storage, "drop", None)
            if drop is not None:
                await drop()
        finally:
            await storage.close()


@pytest.fixture(params=backend_params(list(EVENT_BACKENDS)))
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStorage]:
    async with opened(request.param, tmp_path, new_unique()) as storage:
        yield storage


@pytest.fixture
async def flog(tmp_path: Path) -> AsyncIterator[FileEventStorage]:
    storage = FileEventStorage(tmp_path / "events", segment_events=10)
    await storage.open()
    yield storage
    await storage.close()


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    messages: list[str] = []
    logger.enable("omniq_mp")
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    yield messages
    logger.remove(sink)
    logger.disable("omniq_mp")


def positions(stored: list[StoredEvent]) -> list[int]:
    return [s.position for s in stored]


def assert_strictly_increasing(stored: list[StoredEvent]) -> None:
    found = positions(stored)
    assert all(a < b for a, b in itertools.pairwise(found)), found


async def read_all(log: EventStorage, after: int = 0, **filters: object) -> list[StoredEvent]:
    return await log.read(after=after, limit=100_000, **filters)  # type: ignore[arg-type]


# -- the contract ------------------------------------------------------------------------------


async def test_events_come_back_in_append_order_with_increasing_positions(
    log: EventStorage,
) -> None:
    sent = [make("a", i) for i in range(120)]
    for start in range(0, 120, 7):  # batches straddle the file backend's segments
        await log.append(sent[start : start + 7])
    await log.append([])
    stored = await read_all(log)
    assert [s.event for s in stored] == sent
    assert_strictly_increasing(stored)
    assert positions(stored)[0] >= 1


async def test_one_big_append_comes_back_whole_and_in_order(log: EventStorage) -> None:
    # A recorder's batch can hold hundreds of events; backends that write several rows
    # per statement must split it without losing, repeating or reordering any.
    sent = [make("big", i) for i in range(457)]
    await log.append(sent)
    stored = await read_all(log)
    assert [s.event for s in stored] == sent
    assert_strictly_increasing(stored)


async def test_reading_after_the_last_position_resumes_without_gaps_or_repeats(
    log: EventStorage,
) -> None:
    await log.append([make("a", i) for i in range(60)])
    everything = await read_all(log)
    pages: list[StoredEvent] = []
    while page := await log.read(after=pages[-1].position if pages else 0, limit=7):
        assert len(page) <= 7
        pages += page
        if len(pages) == 35:  # what is appended meanwhile comes next, once
            await log.append([make("b", i) for i in range(3)])
    assert pages[:60] == everything
    assert [s.event.task_id for s in pages[60:]] == ["b-0", "b-1", "b-2"]
    assert_strictly_increasing(pages)
    assert await log.read(after=pages[-1].position) == []
    for i in range(0, 63, 9):  # any position resumes exactly after itself
        assert await read_all(log, after=pages[i].position) == pages[i + 1 :]


async def test_reads_filter_by_task_and_by_types(log: EventStorage) -> None:
    kinds = [EventType.ENQUEUED, EventType.STARTED, EventType.COMPLETED, EventType.FAILED]
    sent = [make("t", i % 5, event_type=kinds[i % 4]) for i in range(100)]
    await log.append(sent)
    stored = await read_all(log)

    of_task = await read_all(log, task_id="t-3")
    assert of_task == [s for s in stored if s.event.task_id == "t-3"] and len(of_task) == 20
    done = await read_all(log, types=[EventType.COMPLETED, EventType.FAILED])
    assert done == [s for s in stored if s.event.event_type in kinds[2:]] and len(done) == 50
    both = await read_all(log, task_id="t-2", types=[EventType.FAILED])
    assert both == [
        s for s in stored if s.event.task_id == "t-2" and s.event.event_type in kinds[3:]
    ]
    later = await read_all(log, after=stored[60].position, task_id="t-1")
    assert later == [s for s in stored[61:] if s.event.task_id == "t-1"]
    assert await read_all(log, task_id="nobody") == []
    limited = await log.read(limit=3, task_id="t-4")
    assert limited == [s for s in stored if s.event.task_id == "t-4"][:3]


async def test_limit_caps_a_read_from_the_oldest(log: EventStorage) -> None:
    await log.append([make("a", i) for i in range(80)])
    stored = await read_all(log)
    assert await log.read(limit=5) == stored[:5]
    assert await log.read(limit=55) == stored[:55]  # across a file segment boundary
    assert await log.read(after=stored[40].position, limit=3) == stored[41:44]
    assert await log.read(limit=1000) == stored
    assert await log.read(limit=0) == []


async def test_purge_deletes_old_events_and_counts_them(log: EventStorage) -> None:
    for start in range(0, 100, 10):  # two full file segments of old events...
        await log.append([make("old", i, OLD + i) for i in range(start, start + 10)])
    for start in range(0, 100, 10):  # ...then two of recent ones
        await log.append([make("new", i) for i in range(start, start + 10)])
    stored = await read_all(log)
    assert await log.purge(OLD + 1000) == 100
    assert await log.purge(OLD + 1000) == 0
    kept = await read_all(log)
    assert kept == stored[100:]
    assert await read_all(log, after=stored[20].position) == stored[100:]
    await log.append([make("after", 0)])
    [last] = await log.read(after=kept[-1].position)
    assert last.position > kept[-1].position and last.event.task_id == "after-0"


async def test_events_round_trip_exactly(log: EventStorage) -> None:
    sent = [
        Event(
            EventType.FAILED,
            task_id="t-é✓",
            timestamp=1_700_000_000.123456,
            worker_id="host:42",
            func_name="pkg.mod:func",
            queue="emails",
            attempt=3,
            duration=0.1 + 0.2,
            details={
                "error": 'ValueError("bad \\n input")\n\ttraceback…',
                "will_retry": False,
                "eta": 1_700_000_060.000001,
                "nested": {"list": [1, 2.5, None, "x"], "tiny": 1e-300, "big": 2**53 + 1},
            },
        ),
        Event(EventType.WORKER_HEARTBEAT, timestamp=1.0, worker_id="w", details={}),
        Event(EventType.ENQUEUED, task_id="t", timestamp=5),
    ]
    await log.append(sent)
    stored = await read_all(log)
    assert [s.event for s in stored] == sent
    assert stored[0].event.duration == 0.1 + 0.2
    assert stored[0].event.details["nested"]["big"] == 2**53 + 1


async def test_concurrent_appends_in_one_process_keep_batches_whole(log: EventStorage) -> None:
    await asyncio.gather(*(log.append([make(w, i) for i in range(10)]) for w in "abcdef"))
    stored = await read_all(log)
    assert len({s.position for s in stored}) == 60
    assert_strictly_increasing(stored)
    writers = [s.event.details["writer"] for s in stored]
    assert all(len(set(writers[i : i + 10])) == 1 for i in range(0, 60, 10))  # not interleaved
    assert_each_writer_complete_and_in_order(stored, 10)


def _append_in_child(
    backend: str, folder: str, unique: str, writer: str, count: int, pause: float
) -> None:
    async def run() -> None:
        log = EVENT_BACKENDS[backend][1](Path(folder), unique)
        await log.open()
        for start in range(0, count, 10):
            await log.append([make(writer, i) for i in range(start, start + 10)])
            if pause:
                await asyncio.sleep(pause)
        await log.close()

    asyncio.run(run())


def start_writers(
    backend: str, folder: Path, unique: str, writers: list[str], count: int, pause: float
) -> list[SpawnProcess]:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_append_in_child, args=(backend, str(folder), unique, w, count, pause))
        for w in writers
    ]
    for p in procs:
        p.start()
    return procs


def join(procs: list[SpawnProcess]) -> None:
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def assert_each_writer_complete_and_in_order(stored: list[StoredEvent], count: int) -> None:
    by_writer: dict[str, list[int]] = {}
    for s in stored:
        by_writer.setdefault(s.event.details["writer"], []).append(s.event.details["seq"])
    assert all(seqs == list(range(count)) for seqs in by_writer.values()), by_writer


@pytest.mark.process
@pytest.mark.parametrize("backend", backend_params(SHARED))
async def test_two_processes_appending_get_distinct_increasing_positions(
    backend: str, tmp_path: Path
) -> None:
    unique = new_unique()
    async with opened(backend, tmp_path, unique) as log:
        join(start_writers(backend, tmp_path, unique, ["a", "b"], 500, 0.0))
        stored = await read_all(log)
    assert len(set(positions(stored))) == 1000
    assert_strictly_increasing(stored)
    if backend in ("sqlite", "file"):  # these two also number without gaps
        assert positions(stored) == list(range(1, 1001))
    assert_each_writer_complete_and_in_order(stored, 500)


@pytest.mark.process
@pytest.mark.parametrize("backend", backend_params(SHARED))
async def test_a_follower_sees_each_event_once_while_another_process_appends(
    backend: str, tmp_path: Path
) -> None:
    unique = new_unique()
    async with opened(backend, tmp_path, unique) as log:
        procs = start_writers(backend, tmp_path, unique, ["w"], 500, 0.002)
        seen: list[StoredEvent] = []
        deadline = time.monotonic() + 60
        while len(seen) < 500 and time.monotonic() < deadline:
            seen += await log.read(after=seen[-1].position if seen else 0, limit=37)
            await asyncio.sleep(0.001)
        join(procs)
        assert await log.read(after=seen[-1].position) == []
    assert len(seen) == 500
    assert_strictly_increasing(seen)
    assert_each_writer_complete_and_in_order(seen, 500)
    if isinstance(log, FileEventStorage):
        assert log.skipped == 0  # lines being written were waited for, not skipped


# -- the file backend ------------------------------------------------------------------------


def segment_files(flog: FileEventStorage) -> list[Path]:
    return sorted(flog.base_dir.glob("events-*.jsonl"))


def add_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def test_a_half_written_last_line_is_skipped_and_later_appends_still_read(
    flog: FileEventStorage, warnings_logged: list[str]
) -> None:
    await flog.append([make("a", i) for i in range(5)])
    [segment] = segment_files(flog)
    add_bytes(segment, b'{"position": 6, "event": {"event_type": "COMPL')  # a crashed writer
    assert positions(await read_all(flog)) == [1, 2, 3, 4, 5]
    assert flog.skipped == 1
    await flog.append([make("b", i) for i in range(3)])
    stored = await read_all(flog)
    assert positions(stored) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [s.event.task_id for s in stored[5:]] == ["b-0", "b-1", "b-2"]
    assert flog.skipped == 1  # the same line, now ended by the append, is not counted again
    assert len([m for m in warnings_logged if "crashed" in m]) == 1

    fresh = FileEventStorage(flog.base_dir)
    await fresh.open()
    assert await read_all(fresh) == stored and fresh.skipped == 1
    await fresh.close()


async def test_garbage_lines_are_skipped_counted_and_logged_once(
    flog: FileEventStorage, warnings_logged: list[str]
) -> None:
    await flog.append([make("a", i) for i in range(3)])
    [segment] = segment_files(flog)
    good = segment.read_bytes().splitlines(keepends=True)[1]
    garbage = [
        b"not json\n",
        b'{"position": 4, "event": {"event_type": "COMPLETED", "timestamp": 1, "x": "\xff"}}\n',
        b'{"position": 4, "event": {"event_type": "NOPE", "timestamp": 1}}\n',
        b'{"position": 4, "event": {"event_type": "STARTED", "timestamp": "noon"}}\n',
        b'{"position": true, "event": {"event_type": "STARTED", "timestamp": 1}}\n',
        b"[1, 2]\n",
        b"\n",
        good,  # a repeated position
    ]
    add_bytes(segment, b"".join(garbage))
    await flog.append([make("b", i) for i in range(2)])
    stored = await read_all(flog)
    assert [s.event.task_id for s in stored] == ["a-0", "a-1", "a-2", "b-0", "b-1"]
    assert positions(stored) == [1, 2, 3, 4, 5]
    assert flog.skipped == len(garbage)
    assert await read_all(flog) == stored  # reading again counts and logs nothing more
    assert flog.skipped == len(garbage) and len(warnings_logged) == len(garbage)
    assert sum("out of order" in m for m in warnings_logged) == 1


async def test_an_append_in_progress_is_waited_for_not_skipped(flog: FileEventStorage) -> None:
    await flog.append([make("a", i) for i in range(2)])
    [segment] = segment_files(flog)
    line = (
        segment.read_bytes()
        .splitlines(keepends=True)[0]
        .replace(b'"position": 1', b'"position": 3')
    )
    fd = os.open(flog.base_dir / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer in another process holds it
        add_bytes(segment, line[:30])
        assert positions(await read_all(flog)) == [1, 2]
        add_bytes(segment, line[30:])
    finally:
        os.close(fd)
    assert positions(await read_all(flog)) == [1, 2, 3]
    assert flog.skipped == 0


async def test_segments_roll_over_by_count_and_by_size(tmp_path: Path) -> None:
    flog = FileEventStorage(tmp_path / "events", segment_events=10, segment_bytes=800)
    await flog.open()
    for start in range(0, 60, 5):
        await flog.append([make("a", i) for i in range(start, start + 5)])
    await flog.close()
    files = segment_files(flog)
    assert len(files) > 60 // 10  # the size rolled them over before the count did
    firsts = [int(f.stem.split("-")[1]) for f in files]
    assert firsts[0] == 1 and firsts == sorted(firsts)

    again = FileEventStorage(tmp_path / "events")  # another instance continues the numbering
    await again.open()
    await again.append([make("b", 0)])
    stored = await read_all(again)
    assert positions(stored) == list(range(1, 62))
    await again.close()


async def test_a_read_after_a_position_skips_older_segments(flog: FileEventStorage) -> None:
    for start in range(0, 40, 10):
        await flog.append([make("a", i) for i in range(start, start + 10)])
    first, second, *_ = segment_files(flog)
    add_bytes(first, b"garbage that only a full scan would meet\n")
    stored = await flog.read(after=25)
    assert positions(stored) == list(range(26, 41)) and flog.skipped == 0
    second.unlink()  # what a read after position 30 needs is not in the first two segments
    assert positions(await flog.read(after=30)) == list(range(31, 41))
    assert flog.skipped == 0


async def test_purge_deletes_only_whole_old_segments_never_the_last(
    flog: FileEventStorage,
) -> None:
    await flog.append([make("a", i, OLD) for i in range(10)])  # 1-10 old
    await flog.append([make("b", i, OLD) for i in range(9)] + [make("b", 9)])  # 11-20 mixed
    await flog.append([make("c", i, OLD) for i in range(10)])  # 21-30 old
    await flog.append([make("d", i, OLD) for i in range(10)])  # 31-40 old, but the last
    before = segment_files(flog)
    assert await flog.purge(OLD + 1) == 20
    assert segment_files(flog) == [before[1], before[3]]
    assert positions(await read_all(flog)) == [*range(11, 21), *range(31, 41)]
    assert positions(await read_all(flog, after=5)) == [*range(11, 21), *range(31, 41)]
    assert positions(await read_all(flog, after=25)) == list(range(31, 41))
    await flog.append([make("e", 0)])
    assert positions(await flog.read(after=40)) == [41]


async def test_a_file_in_the_way_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "events"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="not a directory"):
        await FileEventStorage(blocker).open()
    with pytest.raises(StorageError, match="not a directory"):
        await FileEventStorage(blocker / "below").open()
    with pytest.raises(StorageError, match="not open"):
        await FileEventStorage(tmp_path / "other").read()


async def test_open_creates_the_folder_with_its_parents(tmp_path: Path) -> None:
    flog = FileEventStorage(tmp_path / "a" / "b" / "events")
    await flog.open()
    await flog.open()
    assert flog.base_dir.is_dir()
    assert await flog.read() == []
    assert await flog.purge(time.time()) == 0
    await flog.close()
    await flog.close()
