"""Events in a Redis stream, ``{prefix}:events``, whose entry ids are the positions.

::

    {prefix}:events              stream; entry "<position>-0" = {ts, [task], body}
    {prefix}:events:seq          the last position handed out
    {prefix}:events:task:<id>    sorted set of the positions of one task's events

An append is one Lua script: it takes the next positions from the counter and ``XADD``\\ s
each event under the id ``<position>-0``, so appenders in any number of processes get
strictly increasing positions and a batch is never interleaved with another. A read after
a position is an ``XRANGE`` from ``<position + 1>-0``; a read of one task goes through its
sorted set, so it costs the size of that task's history, not of the log. A read filtered
by types alone pages through the log after ``after`` and filters here: it costs the number
of events it passes over. An entry that is not a well-formed event is skipped and counted
in ``skipped``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from omniq_mp.errors import ConfigError
from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.redis_client import RedisBacked, RedisConnection

__all__ = ["RedisEventStorage"]

_PAGE = 1000  # entries per XRANGE while filtering or purging
_MAX_BLOCK = 5.0  # seconds one XREAD BLOCK may last (kept below the socket timeout)

# KEYS: stream, counter. ARGV: maxlen (0: none), task index key prefix, then per event:
# "" or "=" .. task_id (so an empty task id stays distinct from none), timestamp, body.
_APPEND = """
local stream, seq = KEYS[1], KEYS[2]
local maxlen = tonumber(ARGV[1])
local index = ARGV[2]
local count = (#ARGV - 2) / 3
local last = redis.call('INCRBY', seq, count) - count
if last == 0 and redis.call('EXISTS', stream) == 1 then
    -- the counter was lost (deleted or evicted): continue after the stream's last id,
    -- which XADD would refuse to go below anyway
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
        if info[i] == 'last-generated-id' then
            last = tonumber(string.match(info[i + 1], '^%d+'))
        end
    end
    redis.call('SET', seq, string.format('%d', last + count))
end
for i = 0, count - 1 do
    local position = string.format('%d', last + 1 + i)
    local task, ts, body = ARGV[3 + 3 * i], ARGV[4 + 3 * i], ARGV[5 + 3 * i]
    if task == '' then
        redis.call('XADD', stream, position .. '-0', 'ts', ts, 'body', body)
    else
        task = string.sub(task, 2)
        redis.call('XADD', stream, position .. '-0', 'ts', ts, 'task', task, 'body', body)
        redis.call('ZADD', index .. task, position, position)
    end
end
if maxlen > 0 then
    -- trimmed here rather than by XADD MAXLEN so the task indexes lose the same events;
    -- at most 1000 beyond this batch per call, so a long log whose maxlen was lowered
    -- shrinks over several appends instead of blocking the server in one
    local excess = math.min(redis.call('XLEN', stream) - maxlen, count + 1000)
    if excess > 0 then
        for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)) do
            local fields = entry[2]
            for j = 1, #fields, 2 do
                if fields[j] == 'task' then
                    redis.call('ZREM', index .. fields[j + 1], string.match(entry[1], '^%d+'))
                end
            end
            redis.call('XDEL', stream, entry[1])
        end
    end
end
return last + count
"""

_Entry = tuple[bytes, dict[bytes, bytes]]


class RedisEventStorage(RedisBacked):
    """An event log in a Redis (7.0 or later) stream, shared by every process using it.

    :param host: server host (ignored when ``url`` is given).
    :param port: server port (ignored when ``url`` is given).
    :param db: database number (ignored when ``url`` is given).
    :param url: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``).
    :param password: used when the URL carries none.
    :param prefix: the keys' namespace.
    :param maxlen: keep at most this many events: each append deletes the oldest beyond
        it, up to 1000 more than it adds (None: keep all until :meth:`purge`).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        *,
        url: str | None = None,
        password: str | None = None,
        prefix: str = "omniq",
        maxlen: int | None = None,
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ConfigError(f"maxlen must be a positive number of events or None; got {maxlen}")
        self.prefix = prefix
        self.maxlen = maxlen
        self.skipped = 0  # malformed entries passed over by read()
        self._stream = f"{prefix}:events"
        self._seq = f"{prefix}:events:seq"
        self._index = f"{prefix}:events:task:"
        # No resending: an append whose reply was lost may have been stored already.
        self._redis = RedisConnection(
            "Redis event storage", host, port, db, url=url, password=password, retries=0
        )

    async def append(self, events: Sequence[Event]) -> None:
        """Store the events in order, atomically, under the next positions."""
        if not events:
            return
        args: list[str | int] = [self.maxlen or 0, self._index]
        for event in events:
            task = "" if event.task_id is None else "=" + event.task_id
            args += [task, repr(float(event.timestamp)), event.to_json()]
        script = self._redis.client.register_script(_APPEND)
        with self._redis.errors():
            await script(keys=[self._stream, self._seq], args=args)

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        task_id: str | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[StoredEvent]:
        """Events with position > ``after``, oldest first, at most ``limit``, optionally of
        one task and/or of some types; a malformed entry is skipped and counted."""
        if limit <= 0 or (types is not None and not types):
            return []
        wanted = None if types is None else frozenset(EventType(t) for t in types)
        if task_id is None:
            return await self._read_log(max(after, 0), limit, wanted)
        return await self._read_task(max(after, 0), limit, task_id, wanted)

    async def _read_log(
        self, after: int, limit: int, wanted: frozenset[EventType] | None
    ) -> list[StoredEvent]:
        found: list[StoredEvent] = []
        start = f"{after + 1}-0"
        while len(found) < limit:
            # Unfiltered, a page is exactly what is still missing; filtered, a full page.
            want = limit - len(found) if wanted is None else _PAGE
            with self._redis.errors():
                entries = _entries(
                    await self._redis.client.xrange(self._stream, min=start, count=want)
                )
            for entry_id, fields in entries:
                start = "(" + entry_id.decode()
                stored = self._decode(entry_id, fields)
                if stored is not None and (wanted is None or stored.event.event_type in wanted):
                    found.append(stored)
            if len(entries) < want:
                break
        return found[:limit]

    async def _read_task(
        self, after: int, limit: int, task_id: str, wanted: frozenset[EventType] | None
    ) -> list[StoredEvent]:
        index = self._index + task_id
        client = self._redis.client
        found: list[StoredEvent] = []
        while len(found) < limit:
            want = limit - len(found) if wanted is None else _PAGE
            with self._redis.errors():
                members = await client.zrangebyscore(index, f"({after}", "+inf", start=0, num=want)
            if not members:
                break
            positions = [int(m) for m in members if isinstance(m, bytes | str)]
            pipe = client.pipeline(transaction=False)
            for position in positions:
                pipe.xrange(self._stream, min=f"{position}-0", max=f"{position}-0")
            with self._redis.errors():
                replies = [_entries(r) for r in await pipe.execute()]
            gone = []
            for position, entries in zip(positions, replies, strict=True):
                after = position
                if not entries:  # purged or trimmed while indexed: tidy the index
                    gone.append(position)
                    continue
                stored = self._decode(*entries[0])
                if (
                    stored is not None
                    and stored.event.task_id == task_id
                    and (wanted is None or stored.event.event_type in wanted)
                ):
                    found.append(stored)
            if gone:
                with self._redis.errors():
                    await client.zrem(index, *gone)
            if len(members) < want:
                break
        return found[:limit]

    async def purge(self, before: float) -> int:
        """Delete events whose timestamp is before ``before``; return how many.

        Timestamps need not follow positions (clocks of several hosts, batches), so this
        pages through the whole log: it costs the log's length, in pages of 1000.
        """
        client = self._redis.client
        removed = 0
        start = "-"
        while True:
            with self._redis.errors():
                entries = _entries(await client.xrange(self._stream, min=start, count=_PAGE))
            old = [(i, f) for i, f in entries if _timestamp(f) < before]
            if old:
                pipe = client.pipeline(transaction=False)
                pipe.xdel(self._stream, *(i for i, _ in old))
                for entry_id, fields in old:
                    task = fields.get(b"task")
                    if task is not None:
                        pipe.zrem(self._index.encode() + task, _position(entry_id) or 0)
                with self._redis.errors():
                    replies: list[int] = await pipe.execute()
                removed += replies[0]
            if len(entries) < _PAGE:
                return removed
            start = "(" + entries[-1][0].decode()

    async def wait(self, after: int, timeout: float) -> None:
        """Return once an event with position > ``after`` exists, or after ``timeout``
        seconds, whichever comes first (an optional fast path for followers: ``XREAD
        BLOCK`` wakes as soon as any client appends, where polling ``read`` would sleep).

        Says nothing about which event came: read after ``after`` to get it.
        """
        deadline = time.monotonic() + timeout
        socket_timeout = self._redis.socket_timeout
        longest = _MAX_BLOCK if socket_timeout is None else min(_MAX_BLOCK, socket_timeout / 2)
        streams: dict[Any, Any] = {self._stream: f"{max(after, 0)}-0"}
        while True:
            remaining = deadline - time.monotonic()
            # BLOCK 0 would wait forever: with no time left, just look once. Round up, so
            # a wait never ends before its timeout.
            block = math.ceil(min(remaining, longest) * 1000) if remaining > 0 else None
            with self._redis.errors():
                reply = await self._redis.client.xread(streams, count=1, block=block)
            if reply or block is None:
                return

    async def drop(self) -> None:
        """Delete the whole log: events, counter and task indexes."""
        client = self._redis.client
        with self._redis.errors():
            await client.unlink(self._stream, self._seq)
        async for keys in self._redis.scan(self._index):
            with self._redis.errors():
                await client.unlink(*keys)

    def _decode(self, entry_id: bytes, fields: dict[bytes, bytes]) -> StoredEvent | None:
        position = _position(entry_id)
        stored = None
        if position is not None and b"body" in fields:
            try:
                stored = StoredEvent(position, Event.from_dict(json.loads(fields[b"body"])))
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
        if stored is None:
            self.skipped += 1
        return stored


def _entries(reply: object) -> list[_Entry]:
    """XRANGE's reply as (id, fields) pairs of bytes, whatever the client decoded."""
    if not isinstance(reply, list):
        return []
    entries: list[_Entry] = []
    for entry_id, fields in reply:
        if entry_id is not None:
            entries.append(
                (_bytes(entry_id), {_bytes(k): _bytes(v) for k, v in (fields or {}).items()})
            )
    return entries


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _position(entry_id: bytes) -> int | None:
    """The position an entry id ``<position>-0`` stands for; None for an id not ours."""
    ms, _, seq = entry_id.partition(b"-")
    if seq != b"0" or not ms.isdigit():
        return None
    return int(ms)


def _timestamp(fields: dict[bytes, bytes]) -> float:
    # An entry without a readable timestamp cannot be judged old: it is kept.
    try:
        return float(fields[b"ts"])
    except (KeyError, ValueError):
        return float("inf")
