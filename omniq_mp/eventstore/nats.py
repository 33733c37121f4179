"""Events in a NATS JetStream stream: one message per event on one subject, and the
message's stream sequence number is the event's position.

Sequences are assigned by the server, so they increase strictly across every writer. A
batch is published in list order on one connection; batches of one store object never
interleave, but batches of different processes may (NATS has no multi-message write).

Reads go through an ephemeral pull consumer starting at ``after + 1``, fetching up to a
thousand events per request; the ``task_id`` and ``types`` filters are applied here, in
the client, so a filtered read scans the stream from ``after`` until it has ``limit``
matches or reaches the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Sequence
from typing import Any

from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.extras import require
from omniq_mp.nats_client import NATSConnection, StreamRange

__all__ = ["NATSEventStorage"]

_WHAT = "NATS event storage"
_STREAM_IN_USE = 10058  # a stream of that name exists with another configuration


class NATSEventStorage:
    """An event log in a JetStream stream (file storage, created if missing).

    :param servers: NATS server URLs of one cluster.
    :param stream: the stream's name.
    :param subject: the subject events are published on; the stream must capture it.
    :param max_age: seconds after which the server drops events by itself (None: never).
        Applies when the stream is created; an existing stream keeps its configuration.
    """

    def __init__(
        self,
        servers: Sequence[str] = ("nats://localhost:4222",),
        stream: str = "OMNIQ_EVENTS",
        subject: str = "omniq.events",
        *,
        max_age: float | None = None,
    ) -> None:
        if not stream or any(c in stream for c in " \t\r\n.*>/\\"):
            raise ConfigError(
                f"NATS stream name may not contain spaces, . * > / \\; got {stream!r}"
            )
        if not subject or any(c in subject for c in " \t\r\n*>") or "" in subject.split("."):
            raise ConfigError(
                f"NATS subject must be dot-separated tokens, no wildcards; got {subject!r}"
            )
        if max_age is not None and max_age <= 0:
            raise ConfigError(
                f"NATS event max_age must be positive seconds or None; got {max_age!r}"
            )
        self.stream = stream
        self.subject = subject
        self.max_age = max_age
        self.skipped = 0  # messages on the subject that are not events, passed over by read()
        self._conn = NATSConnection(_WHAT, servers)
        self._opened = False
        self._append_lock = asyncio.Lock()  # keeps this object's batches contiguous
        self._watch_sub: Any = None
        self._watch_generation = -1
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def endpoint(self) -> str:
        """``host:port`` of the servers, for messages."""
        return self._conn.endpoint

    async def open(self) -> None:
        """Connect and open the stream, creating it if missing (idempotent).

        :raises StorageError: the server is unreachable, or the stream exists and does not
            capture ``subject`` (one line).
        """
        if self._opened:
            return
        await self._conn.open()
        try:
            await self._ensure_stream()
        except BaseException:
            await self._conn.close()
            raise
        self._opened = True

    async def close(self) -> None:
        """Disconnect (idempotent)."""
        self._opened = False
        watch, self._watch_sub = self._watch_sub, None
        self._wake()
        if watch is not None:
            with contextlib.suppress(Exception):
                await watch.unsubscribe()
        await self._conn.close()

    async def drop(self) -> None:
        """Delete the stream and every event in it (a missing stream is not an error).

        Works whether or not the store is open; an open store must be opened again to be
        used afterwards.
        """
        was_open = self._opened
        self._opened = False
        await self._conn.open()
        try:
            errors = require("nats.js.errors", "nats", _WHAT)
            with self._conn.errors(f"cannot delete stream {self.stream}"):
                try:
                    await self._conn.js.delete_stream(self.stream)
                except errors.NotFoundError:
                    pass
        finally:
            if not was_open:
                await self._conn.close()

    async def append(self, events: Sequence[Event]) -> None:
        """Publish the events in order and wait for the server to store each one.

        A batch either fits or is refused whole before anything is sent; a failure while
        it is being stored may leave its first events stored.

        :raises StorageError: the server failed, or an event is larger than it accepts.
        """
        if not events:
            return
        await self._ready()
        payloads = [e.to_json().encode() for e in events]
        limit = self._conn.max_payload
        if (largest := max(len(p) for p in payloads)) > limit:
            raise StorageError(
                f"{_WHAT}: an event of {largest} bytes is more than the {limit} bytes NATS at "
                f"{self.endpoint} accepts in one message (its max_payload); batch not stored"
            )
        async with self._append_lock:
            sequences = await self._conn.publish_all(
                self.subject,
                payloads,
                stream=self.stream,
                doing=f"cannot append to stream {self.stream}",
            )
        if any(a >= b for a, b in itertools.pairwise(sequences)):
            # One connection delivers in order, so this means the server reordered a batch.
            raise StorageError(
                self._conn.message(
                    f"stream {self.stream}", f"batch stored out of order {sequences}"
                )
            )

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        task_id: str | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[StoredEvent]:
        """Events with position > ``after``, oldest first, at most ``limit``; a message that
        is not an event is skipped and counted in ``skipped``."""
        if limit <= 0 or (types is not None and not types):
            return []
        await self._ready()
        if not await self._has_after(after):
            return []  # the common idle poll: no consumer is created for it
        wanted = None if types is None else set(types)
        filtered = task_id is not None or wanted is not None
        found: list[StoredEvent] = []
        async with StreamRange(self._conn, self.stream, self.subject, start=after + 1) as rng:
            while len(found) < limit:
                # Unfiltered, every message counts, so ask for exactly what is missing.
                batch = await rng.next() if filtered else await rng.next(limit - len(found))
                if not batch:
                    break
                for msg in batch:
                    stored = _decode(msg)
                    if stored is None:
                        self.skipped += 1
                    elif (task_id is None or stored.event.task_id == task_id) and (
                        wanted is None or stored.event.event_type in wanted
                    ):
                        found.append(stored)
                        if len(found) == limit:
                            break
        return found

    async def purge(self, before: float) -> int:
        """Delete the events before the first one stamped at or after ``before``; return
        how many.

        The log is cut at one position, so an older-stamped event written after a newer one
        is kept until everything before it goes. Finding the cut reads the events being
        deleted (and one more).
        """
        await self._ready()
        cut: int | None = None
        last_scanned = 0
        async with StreamRange(self._conn, self.stream, self.subject) as rng:
            async for batch in rng.batches():
                for msg in batch:
                    stored = _decode(msg)
                    stamp = None if stored is None else stored.event.timestamp
                    if isinstance(stamp, int | float) and stamp >= before:
                        cut = msg.metadata.sequence.stream
                        break
                    last_scanned = msg.metadata.sequence.stream
                if cut is not None:
                    break
        if not last_scanned:
            return 0  # nothing before the cut; and the server reads sequence 1 as "everything"
        if cut is None:
            cut = last_scanned + 1  # never what was appended after the scan
        reply = await self._conn.api(
            f"STREAM.PURGE.{self.stream}", {"filter": self.subject, "seq": cut}
        )
        return int(reply.get("purged", 0))

    async def wait(self, after: int, timeout: float) -> None:
        """Return once an event with a position after ``after`` is stored, or after
        ``timeout`` seconds, whichever comes first (a follower's alternative to polling).

        :raises StorageError: the server is unreachable.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._ready()
        await self._watch()
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            self._waiters.add(woken)
            try:
                if not self._opened:
                    return  # closed while waiting
                # Registered before looking, so an append between the look and the wait
                # still wakes us.
                if await self._has_after(after):
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(woken, remaining)
                except TimeoutError:
                    return
            finally:
                self._waiters.discard(woken)

    async def _ready(self) -> None:
        if not self._opened:
            raise StorageError(f"{_WHAT} at {self.endpoint} is not open")
        await self._conn.ready()

    async def _ensure_stream(self) -> None:
        api = require("nats.js.api", "nats", _WHAT)
        errors = require("nats.js.errors", "nats", _WHAT)
        js = self._conn.js
        with self._conn.errors(f"cannot open stream {self.stream}"):
            try:
                info = await js.stream_info(self.stream)
            except errors.NotFoundError:
                config = api.StreamConfig(
                    name=self.stream,
                    subjects=[self.subject],
                    storage=api.StorageType.FILE,
                    retention=api.RetentionPolicy.LIMITS,
                    discard=api.DiscardPolicy.OLD,
                    max_age=self.max_age,
                )
                try:
                    info = await self._conn.creating(lambda: js.add_stream(config))
                except errors.APIError as exc:
                    if exc.err_code != _STREAM_IN_USE:
                        raise
                    info = await js.stream_info(self.stream)  # another process won the race
        subjects = info.config.subjects or []
        if not any(_subject_matches(pattern, self.subject) for pattern in subjects):
            raise StorageError(
                f"{_WHAT}: stream {self.stream} at {self.endpoint} exists but does not "
                f"capture subject {self.subject} (it captures {', '.join(subjects) or 'none'})"
            )

    async def _has_after(self, after: int) -> bool:
        errors = require("nats.js.errors", "nats", _WHAT)
        with self._conn.errors(f"cannot read stream {self.stream}"):
            try:
                await self._conn.js.get_msg(
                    self.stream, seq=max(after, 0) + 1, subject=self.subject, next=True
                )
            except errors.NotFoundError:
                return False
        return True

    async def _watch(self) -> None:
        """Follow new events (again after a fresh client) so that they wake waiters.

        An ordered consumer delivering headers only, not a plain subscription: the server
        delivers a message to a consumer after it is stored, so a woken waiter finds it.
        """
        if self._watch_sub is not None and self._watch_generation == self._conn.generation:
            return
        api = require("nats.js.api", "nats", _WHAT)
        with self._conn.errors(f"cannot follow stream {self.stream}"):
            self._watch_sub = await self._conn.js.subscribe(
                self.subject,
                stream=self.stream,
                cb=self._on_message,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW,
                headers_only=True,
            )
        self._watch_generation = self._conn.generation

    async def _on_message(self, _msg: Any) -> None:
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def _decode(msg: Any) -> StoredEvent | None:
    try:
        return StoredEvent(msg.metadata.sequence.stream, Event.from_dict(json.loads(msg.data)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _subject_matches(pattern: str, subject: str) -> bool:
    """Whether the stream subject ``pattern`` (``*`` one token, ``>`` the rest) captures
    ``subject``."""
    tokens, wanted = pattern.split("."), subject.split(".")
    for i, token in enumerate(tokens):
        if token == ">":
            return len(wanted) > i
        if i >= len(wanted) or (token != "*" and token != wanted[i]):
            return False
    return len(tokens) == len(wanted)
