"""Events in a folder of JSON-lines segments: an append-only log that several processes
append to while others read it.

::

    <base_dir>/
      .lock                          flock'ed by append and purge; readers only try it
      events-<first position>.jsonl  one {"position": N, "event": {...}} per line

Positions go 1, 2, 3... across segments and processes: an append takes the lock, learns the
last position from the end of the last segment, writes its batch with one ``os.write`` to
that file opened ``O_APPEND`` and fsyncs it. A new segment starts once the last one holds
``segment_events`` events or ``segment_bytes`` bytes; segments are named after their first
position, so a read finds where to start from the names alone.

A line that is not a well-formed event (bad UTF-8 or JSON, wrong fields, a position out of
order, a crashed writer's half line) is skipped, counted once in ``skipped`` and logged
once. An unterminated end of the last segment is an append in progress while a writer holds
the lock, debris once none does; the next append ends it with a newline, so it cannot
swallow the line written after it. :meth:`FileEventStorage.purge` deletes whole segments
only, so an event can outlive its cut-off until its whole segment is old.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import NoneType
from typing import TypeVar

from loguru import logger

from omniq_mp.errors import StorageError
from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.file_modes import FILE_MODE, make_private_dirs

__all__ = ["FileEventStorage"]

T = TypeVar("T")
_NAME = re.compile(r"events-(\d+)\.jsonl")
_PREFIX = re.compile(rb'\{"position": (\d+),')  # how append starts every line
_TEXT, _NUMBER = (str, NoneType), (int, float)
_FIELDS: dict[str, tuple[type, ...]] = {  # what Event.from_dict would take unchecked
    **dict.fromkeys(("task_id", "worker_id", "func_name", "queue"), _TEXT),
    **{"event_type": (str,), "timestamp": _NUMBER, "attempt": (int, NoneType)},
    **{"duration": (*_NUMBER, NoneType), "details": (dict, NoneType)},
}


@dataclasses.dataclass
class _Cursor:
    """How far reads got in a segment: every line before ``offset`` holds a position of at
    most ``top``, so a read after ``top`` can start at ``offset``."""

    inode: int  # a segment deleted and made again is another file
    offset: int = 0
    top: int = 0


@dataclasses.dataclass
class _Query:
    """One read: its filters, what it found, and the last position it accepted."""

    after: int
    limit: int
    task_id: str | None
    types: frozenset[EventType] | None
    found: list[StoredEvent] = dataclasses.field(default_factory=list)
    last: int = 0  # the last position taken (``after`` to begin with)

    @property
    def full(self) -> bool:
        return len(self.found) >= self.limit

    def take(self, stored: StoredEvent) -> None:
        self.last = stored.position
        event = stored.event
        if (self.task_id is None or event.task_id == self.task_id) and (
            self.types is None or event.event_type in self.types
        ):
            self.found.append(stored)


class FileEventStorage:
    """An event log in a folder, shared safely by several processes.

    :param base_dir: the log's folder; created with its parents by :meth:`open`.
    :param segment_events: events per segment before a new one starts.
    :param segment_bytes: bytes per segment before a new one starts.
    """

    def __init__(
        self, base_dir: str | Path, segment_events: int = 10_000, segment_bytes: int = 8 << 20
    ) -> None:
        self.base_dir = Path(base_dir)
        self.segment_events = segment_events
        self.segment_bytes = segment_bytes
        self.skipped = 0  #: malformed lines met so far, each counted once
        self._opened = False
        self._state = threading.Lock()  # reads of one instance may run in several threads
        self._bad_lines: set[tuple[str, int]] = set()  # (segment, byte offset) already counted
        self._cursors: dict[str, _Cursor] = {}  # by segment: how far reads got in it
        # The last segment as our own last append left it: (name, inode, size, position).
        # Only a hint: appends re-check it under the lock, as another process may have written.
        self._tail: tuple[str, int, int, int] | None = None

    async def open(self) -> None:
        """Create the folder. :raises StorageError: when a file is in its way."""
        await asyncio.to_thread(_make_folder, self.base_dir)
        self._opened = True

    async def close(self) -> None:
        """Mark the log closed; nothing is held between calls. Safe to call twice."""
        self._opened = False

    async def _run(self, op: Callable[[], T]) -> T:
        if not self._opened:
            raise StorageError(f"event log {self.base_dir} is not open; call open() first")
        try:
            return await asyncio.to_thread(op)
        except OSError as exc:
            raise StorageError(f"event log {self.base_dir}: {exc}") from exc

    async def append(self, events: Sequence[Event]) -> None:
        """Store the events in order, with consecutive positions, in one write.
        :raises TypeError: when an event's details are not JSON-serialisable."""
        batch = list(events)
        if batch:
            await self._run(lambda: self._append(batch))

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        task_id: str | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[StoredEvent]:
        """Up to ``limit`` events with position > ``after``, oldest first, of ``task_id``
        and of ``types`` where given. Malformed lines are skipped (see :attr:`skipped`)."""
        wanted = None if types is None else frozenset(types)
        query = _Query(after, limit, task_id, wanted, last=after)
        if query.full:
            return []
        await self._run(lambda: self._read(query))
        return query.found

    async def purge(self, before: float) -> int:
        """Delete each segment but the last whose newest event is older than ``before``;
        :return: how many events were deleted."""
        return await self._run(lambda: self._purge(before))

    # -- in a worker thread ------------------------------------------------------------------

    def _append(self, events: list[Event]) -> None:
        bodies = [e.to_json() for e in events]  # fails here, before the lock
        with _flock(self.base_dir, fcntl.LOCK_EX):
            first, path, size, last = self._last_segment()
            if last - first + 1 >= self.segment_events or size >= self.segment_bytes:
                first, path, size = last + 1, self.base_dir / f"events-{last + 1:020d}.jsonl", 0
            lines = (f'{{"position": {last + i}, "event": {b}}}\n' for i, b in enumerate(bodies, 1))
            data = "".join(lines).encode()
            self._tail = None  # a failed write leaves the size unknown
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                view = memoryview(data)
                while view:  # one write in practice; the loop only covers a short write
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                inode = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            if size == 0:
                _fsync_dir(self.base_dir)  # a new segment's name must survive a power cut too
            self._tail = (path.name, inode, size + len(data), last + len(bodies))

    def _last_segment(self) -> tuple[int, Path, int, int]:
        """Under the lock: the last segment's first position, path, size and last position,
        with a crashed writer's half line ended first."""
        segments = _segments(self.base_dir)
        if not segments:
            return 1, self.base_dir / f"events-{1:020d}.jsonl", 0, 0
        first, path = segments[-1]
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            stat = os.fstat(fd)
            size = stat.st_size
            if self._tail is not None and self._tail[:3] == (path.name, stat.st_ino, size):
                return first, path, size, self._tail[3]  # nobody wrote since our last append
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")  # the half line now reads as one corrupt line
                os.fsync(fd)
                size += 1
            return first, path, size, _last_position(fd, size, first)
        finally:
            os.close(fd)

    def _read(self, query: _Query) -> None:
        segments = _segments(self.base_dir)
        # The segment holding ``after + 1`` is the last one starting at or before it.
        start = max(bisect.bisect_right([f for f, _ in segments], query.after + 1) - 1, 0)
        for i in range(start, len(segments)):
            self._read_segment(segments[i][1], query, i == len(segments) - 1)
            if query.full:
                return

    def _read_segment(self, path: Path, query: _Query, is_last: bool) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return  # purged since it was listed
        try:
            inode = os.fstat(fd).st_ino
            known = self._cursors.get(path.name)
            usable = known is not None and known.inode == inode and known.top <= query.after
            cursor = dataclasses.replace(known) if known and usable else _Cursor(inode)
            if self._scan(path.name, fd, cursor, query):
                if not is_last:  # appends only go to the last segment: this is debris
                    self._bad(path.name, cursor.offset, "unterminated line")
                else:
                    self._settle(path.name, fd, cursor, query)
            if known is None or known.inode != inode or known.offset < cursor.offset:
                self._cursors[path.name] = cursor
        finally:
            os.close(fd)

    def _settle(self, name: str, fd: int, cursor: _Cursor, query: _Query) -> None:
        """Decide about the unterminated end of the last segment."""
        try:
            # Writers hold the lock while writing: with a shared lock, no append is in
            # progress, so what is still unterminated under it is a crashed writer's.
            with _flock(self.base_dir, fcntl.LOCK_SH | fcntl.LOCK_NB):
                if self._scan(name, fd, cursor, query):
                    self._bad(name, cursor.offset, "unterminated line left by a crashed writer")
        except BlockingIOError:
            pass  # an append is in progress: its line will be whole on the next read

    def _scan(self, name: str, fd: int, cursor: _Cursor, query: _Query) -> bool:
        """Feed the whole lines of segment ``name`` from ``cursor`` on to ``query``, moving
        the cursor past them; :return: whether an unterminated rest follows."""
        base, pos = cursor.offset, 0
        data = _read_from(fd, base)
        while not query.full and (newline := data.find(b"\n", pos)) >= 0:
            line, offset, pos = data[pos:newline], base + pos, newline + 1
            cursor.offset = base + pos
            quick = _PREFIX.match(line)
            if quick and int(quick[1]) <= query.after:  # before the read: no need to decode
                cursor.top = max(cursor.top, int(quick[1]))
                continue
            stored = _decode(line)
            if stored is not None:
                cursor.top = max(cursor.top, stored.position)
            if stored is None or query.after < stored.position <= query.last:
                self._bad(name, offset, "not an event" if stored is None else "out of order")
            elif stored.position > query.after:
                query.take(stored)
        return not query.full and pos < len(data)

    def _bad(self, name: str, offset: int, why: str) -> None:
        with self._state:
            if (name, offset) in self._bad_lines:
                return
            self._bad_lines.add((name, offset))
            self.skipped += 1
        logger.warning("{}: skipped line at byte {} of {}: {}", self.base_dir, offset, name, why)

    def _purge(self, before: float) -> int:
        removed = 0
        with _flock(self.base_dir, fcntl.LOCK_EX):
            for _, path in _segments(self.base_dir)[:-1]:  # appends go to the last one
                lines = path.read_bytes().split(b"\n")
                stamps = [s.event.timestamp for s in map(_decode, lines) if s is not None]
                if stamps and max(stamps) >= before:
                    continue
                path.unlink()
                self._cursors.pop(path.name, None)
                removed += len(stamps)
            _fsync_dir(self.base_dir)
        return removed


def _decode(line: bytes) -> StoredEvent | None:
    """The event on one line, or None when the line is not a well-formed one."""
    try:
        doc = json.loads(line.decode("utf-8"))
        position, event = doc["position"], doc["event"]
        if type(position) is not int or position < 1 or not isinstance(event, dict):
            return None
        for key, kinds in _FIELDS.items():
            value = event.get(key)
            if (key in event or key in ("event_type", "timestamp")) and (
                not isinstance(value, kinds) or isinstance(value, bool)
            ):
                return None
        return StoredEvent(position, Event.from_dict(event))
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


def _last_position(fd: int, size: int, first: int) -> int:
    """The highest position among the last well-formed lines of a segment (``first - 1`` if
    none): the highest, so a stray copy of an older line cannot send numbering back."""
    window = 64 << 10
    while True:
        start = max(size - window, 0)
        lines = os.pread(fd, size - start, start).split(b"\n")[1 if start else 0 :]
        found = [s.position for s in map(_decode, lines) if s is not None]  # lines[0] cut off
        if found or start == 0:
            return max(found, default=first - 1)
        window *= 4


def _segments(base: Path) -> list[tuple[int, Path]]:
    """The segments, oldest first, each with its first position."""
    return sorted((int(m[1]), base / m[0]) for n in os.listdir(base) if (m := _NAME.fullmatch(n)))


def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def _flock(base: Path, how: int) -> Iterator[None]:
    # A fresh descriptor each time: flock excludes other descriptors, including other
    # threads of this process, while threads sharing one descriptor would all pass.
    fd = os.open(base / ".lock", os.O_RDONLY | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)  # also releases the flock


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_folder(base: Path) -> None:
    try:
        make_private_dirs(base)  # 0700, as the queue store it describes
    except (FileExistsError, NotADirectoryError) as exc:  # a file where a folder must be
        raise StorageError(f"event log {base}: a file in the way is not a directory") from exc
    except OSError as exc:
        raise StorageError(f"cannot create event log {base}: {exc.strerror}") from exc
