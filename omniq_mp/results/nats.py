"""Results in a NATS JetStream key-value bucket, keyed by task id.

Each value is self-describing: one line of JSON (status, error, times, whether there is a
value) then the raw pickled value bytes, so nothing is ever unpickled here. Writes of a
batch go out concurrently. A result too large for one NATS message (the server's
``max_payload``, 1 MiB by default) keeps only its header line in the bucket; its value goes
in chunks to a stream beside the bucket, checked by size and SHA-256 when read back.
Expiry is kept in the value: a result past its ``expires_at`` reads as missing and is
deleted by that read; :meth:`NATSResultStorage.purge_expired` removes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.extras import require
from omniq_mp.nats_client import NATSConnection, StreamRange
from omniq_mp.results.base import TaskResult, check_terminal, is_expired

__all__ = ["NATSResultStorage"]

_WHAT = "NATS result storage"
_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
_BUCKET = re.compile(r"[-_a-zA-Z0-9]+")
_FORMAT = 1
_CONCURRENCY = 500  # requests in flight at once for one call
_CHUNK = 256 * 1024  # bytes per chunk of a large value, at most
_STREAM_IN_USE = 10058  # a stream of that name exists (with another configuration)
_WRONG_LAST_SEQUENCE = (10071, 10164)  # a newer value was written meanwhile
_T = TypeVar("_T")
_A = TypeVar("_A")


class NATSResultStorage:
    """Results in a JetStream key-value bucket (file storage, created if missing).

    :param servers: NATS server URLs of one cluster.
    :param bucket: the bucket's name (letters, digits, ``-`` and ``_``).
    :param ttl: seconds after which the server drops any result whatever its
        ``expires_at`` (None: kept until deleted or expired).

    Task ids are the keys, so only ids made of letters, digits and ``-/_=.`` (not
    starting or ending with ``.``, no ``..``) can be stored; others raise ValueError.
    A deleted result leaves a small tombstone in the bucket, as KV deletes do. Large values
    live in the stream ``OMNIQ_CHUNKS_<bucket>``, created and dropped with the bucket.
    """

    def __init__(
        self,
        servers: Sequence[str] = ("nats://localhost:4222",),
        bucket: str = "omniq_results",
        *,
        ttl: float | None = None,
    ) -> None:
        if not _BUCKET.fullmatch(bucket):
            raise ConfigError(f"NATS bucket name must be letters, digits, - and _; got {bucket!r}")
        if ttl is not None and ttl <= 0:
            raise ConfigError(f"NATS result ttl must be positive seconds or None; got {ttl!r}")
        self.bucket = bucket
        self.ttl = ttl
        self.skipped = 0  # unreadable values passed over as missing
        self._conn = NATSConnection(_WHAT, servers)
        self._chunks = _Chunks(self._conn, bucket, ttl)
        self._kv: Any = None
        self._kv_generation = -1  # the client the bucket handle was made with

    @property
    def endpoint(self) -> str:
        """``host:port`` of the servers, for messages."""
        return self._conn.endpoint

    async def open(self) -> None:
        """Connect and open the bucket, creating it if missing (idempotent).

        :raises StorageError: the server is unreachable or refuses the bucket (one line).
        """
        if self._kv is not None:
            return
        await self._conn.open()
        try:
            await self._chunks.create()
            self._kv = await self._bucket()
        except BaseException:
            await self._conn.close()
            raise
        self._kv_generation = self._conn.generation

    async def close(self) -> None:
        """Disconnect (idempotent)."""
        self._kv = None
        await self._conn.close()

    async def drop(self) -> None:
        """Delete the bucket, its chunk stream and everything in them (missing ones are not
        an error).

        Works whether or not the store is open; an open store must be opened again to be
        used afterwards.
        """
        was_open = self._kv is not None
        self._kv = None
        await self._conn.open()
        try:
            errors = require("nats.js.errors", "nats", _WHAT)
            with self._conn.errors(f"cannot delete bucket {self.bucket}"):
                for stream in (f"KV_{self.bucket}", self._chunks.stream):
                    try:
                        await self._conn.js.delete_stream(stream)
                    except errors.NotFoundError:
                        pass
        finally:
            if not was_open:
                await self._conn.close()

    async def store(self, results: Sequence[TaskResult]) -> None:
        """Write the results concurrently; a later result for the same id replaces it.

        :raises ValueError: a status that is not terminal, or a task id that cannot be a
            key (nothing is written then).
        :raises StorageError: the server failed; some of the batch may be written.
        """
        check_terminal(results)
        latest = {r.task_id: r for r in results}  # a batch's last word on an id wins
        for task_id in latest:
            _check_key(task_id)
        kv = await self._ready()
        limit = self._conn.max_payload

        async def put(result: TaskResult) -> None:
            value = result.result or b""
            header = _header(result)
            if len(header) + 1 + len(value) <= limit:
                await kv.put(result.task_id, header + b"\n" + value)
                return
            chunks = await self._chunks.write(result.task_id, value)
            await kv.put(result.task_id, _header(result, chunks) + b"\n")
            # Chunks of earlier writes of this id are garbage now; leaving them is harmless.
            with contextlib.suppress(StorageError):
                await self._chunks.forget(result.task_id, before=chunks["seq"])

        with self._conn.errors("cannot store results"):
            await _bounded(put, list(latest.values()))

    async def get(self, task_id: str) -> TaskResult | None:
        """The stored result, or None (unknown, deleted, expired or unreadable).

        :raises ValueError: ``task_id`` cannot be a key.
        """
        _check_key(task_id)
        kv = await self._ready()
        with self._conn.errors("cannot read results"):
            found = await self._read(kv, task_id, time.time())
        return found

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """The stored results among ``task_ids`` (read concurrently), by id.

        :raises ValueError: an id cannot be a key.
        """
        wanted = list(dict.fromkeys(task_ids))
        for task_id in wanted:
            _check_key(task_id)
        if not wanted:
            return {}
        kv = await self._ready()
        now = time.time()

        async def read(key: str) -> TaskResult | None:
            return await self._read(kv, key, now)

        with self._conn.errors("cannot read results"):
            found = await _bounded(read, wanted)
        return {r.task_id: r for r in found if r is not None}

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Delete results (each leaves a tombstone); return how many were stored, expired
        ones included.

        :raises ValueError: an id cannot be a key.
        """
        wanted = list(dict.fromkeys(task_ids))
        for task_id in wanted:
            _check_key(task_id)
        if not wanted:
            return 0
        kv = await self._ready()

        async def delete_one(key: str) -> bool:
            entry = await self._entry(kv, key)
            if entry is None:
                return False
            await kv.delete(key)
            if _chunk_ref(entry.value) is not None:
                await self._chunks.forget(key)
            return True

        with self._conn.errors("cannot delete results"):
            deleted = await _bounded(delete_one, wanted)
        return sum(deleted)

    async def purge_expired(self, now: float) -> int:
        """Delete results whose ``expires_at`` is before ``now``; return how many.

        Reads every current value of the bucket once (one pass through the server, values
        included), so it costs as much as the bucket holds: run it now and then, or set
        ``ttl`` to have the server drop old results for free. A result rewritten during the
        pass is left alone.
        """
        kv = await self._ready()
        stream, prefix = f"KV_{self.bucket}", f"$KV.{self.bucket}."
        expired: list[tuple[str, int, bool]] = []

        async def delete_unchanged(item: tuple[str, int, bool]) -> bool:
            return await self._delete_if_unchanged(kv, *item)

        with self._conn.errors("cannot purge results"):
            async with StreamRange(self._conn, stream, f"{prefix}>", last_per_subject=True) as rng:
                async for batch in rng.batches():
                    for msg in batch:
                        decoded = None if _is_marker(msg) else _decode(msg.data, "")
                        if decoded is not None and is_expired(decoded[0], now):
                            key = msg.subject[len(prefix) :]
                            chunked = decoded[1] is not None
                            expired.append((key, msg.metadata.sequence.stream, chunked))
            deleted = await _bounded(delete_unchanged, expired)
        return sum(deleted)

    async def _bucket(self) -> Any:
        api = require("nats.js.api", "nats", _WHAT)
        errors = require("nats.js.errors", "nats", _WHAT)
        js = self._conn.js
        with self._conn.errors(f"cannot open bucket {self.bucket}"):
            try:
                return await js.key_value(self.bucket)
            except errors.BucketNotFoundError:
                pass
            # Two processes creating the same bucket at once both succeed: the server
            # accepts an identical configuration again.
            config = api.KeyValueConfig(
                bucket=self.bucket,
                history=1,
                ttl=self.ttl,
                storage=api.StorageType.FILE,
                direct=True,
            )
            return await self._conn.creating(lambda: js.create_key_value(config))

    async def _ready(self) -> Any:
        if self._kv is None:
            raise StorageError(f"{_WHAT} at {self.endpoint} is not open")
        await self._conn.ready()
        if self._kv_generation != self._conn.generation:
            # The client gave up reconnecting and was replaced: bind the bucket to the new one.
            self._kv = await self._bucket()
            self._kv_generation = self._conn.generation
        return self._kv

    async def _entry(self, kv: Any, key: str) -> Any:
        errors = require("nats.js.errors", "nats", _WHAT)
        try:
            return await kv.get(key)
        except errors.KeyNotFoundError:
            return None

    async def _read(self, kv: Any, key: str, now: float) -> TaskResult | None:
        entry = await self._entry(kv, key)
        if entry is None:
            return None
        decoded = _decode(entry.value or b"", key)
        if decoded is None:
            self.skipped += 1
            return None
        result, chunks = decoded
        if is_expired(result, now):
            await self._delete_if_unchanged(kv, key, entry.revision, chunks is not None)
            return None
        if chunks is None:
            return result
        value = await self._chunks.read(key, chunks)
        if value is None:  # chunks lost or damaged (or replaced while being read)
            self.skipped += 1
            return None
        return dataclasses.replace(result, result=value)

    async def _delete_if_unchanged(
        self, kv: Any, key: str, revision: int, chunked: bool = False
    ) -> bool:
        errors = require("nats.js.errors", "nats", _WHAT)
        try:
            await kv.delete(key, last=revision)
        except errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return False
            raise
        if chunked:
            await self._chunks.forget(key)
        return True


class _Chunks:
    """Values too large for one message, as runs of messages on a stream of their own.

    Each write of a value gets a subject of its own, ``<prefix>.<task id>.<write id>``, so
    concurrent writes of one id never mix; the bucket's header line names the write.
    """

    def __init__(self, conn: NATSConnection, bucket: str, ttl: float | None) -> None:
        self.conn = conn
        self.stream = f"OMNIQ_CHUNKS_{bucket}"
        self.prefix = f"omniq.chunks.{bucket}"
        self.ttl = ttl

    async def create(self) -> None:
        """Create the stream if missing."""
        api = require("nats.js.api", "nats", _WHAT)
        errors = require("nats.js.errors", "nats", _WHAT)
        js = self.conn.js
        with self.conn.errors(f"cannot open stream {self.stream}"):
            try:
                await js.stream_info(self.stream)
                return
            except errors.NotFoundError:
                pass
            config = api.StreamConfig(
                name=self.stream,
                subjects=[f"{self.prefix}.>"],
                storage=api.StorageType.FILE,
                max_age=self.ttl,
            )
            try:
                await self.conn.creating(lambda: js.add_stream(config))
            except errors.APIError as exc:
                if exc.err_code != _STREAM_IN_USE:  # else another process made it meanwhile
                    raise

    async def write(self, task_id: str, value: bytes) -> dict[str, Any]:
        """Store ``value``; return the reference the header line keeps."""
        write_id = uuid.uuid4().hex
        size = max(1, min(_CHUNK, self.conn.max_payload))
        pieces = [value[i : i + size] for i in range(0, len(value), size)] or [b""]
        sequences = await self.conn.publish_all(
            f"{self.prefix}.{task_id}.{write_id}",
            pieces,
            stream=self.stream,
            doing=f"cannot store the value of task {task_id}",
        )
        return {
            "id": write_id,
            "seq": sequences[0],
            "count": len(pieces),
            "size": len(value),
            "sha256": hashlib.sha256(value).hexdigest(),
        }

    async def read(self, task_id: str, ref: dict[str, Any]) -> bytes | None:
        """The value ``ref`` names, or None when its chunks are missing or damaged."""
        subject = f"{self.prefix}.{task_id}.{ref['id']}"
        pieces: list[bytes] = []
        async with StreamRange(self.conn, self.stream, subject, start=int(ref["seq"])) as rng:
            while len(pieces) < ref["count"] and (batch := await rng.next()):
                pieces += [bytes(msg.data) for msg in batch]
        value = b"".join(pieces[: ref["count"]])
        if len(value) != ref["size"] or hashlib.sha256(value).hexdigest() != ref["sha256"]:
            return None
        return value

    async def forget(self, task_id: str, before: int | None = None) -> None:
        """Delete the chunks of every write of ``task_id`` (only those stored before stream
        sequence ``before``, when given)."""
        request: dict[str, Any] = {"filter": f"{self.prefix}.{task_id}.*"}
        if before is not None:
            if before <= 1:
                return  # nothing is older; and the server reads sequence 1 as "everything"
            request["seq"] = before
        await self.conn.api(f"STREAM.PURGE.{self.stream}", request)


def _check_key(task_id: str) -> None:
    if (
        not isinstance(task_id, str)
        or not _KEY.fullmatch(task_id)
        or task_id.startswith(".")
        or task_id.endswith(".")
        or ".." in task_id
    ):
        raise ValueError(
            f"task id {task_id!r} cannot be a NATS key: use letters, digits and -/_=. "
            "(not starting or ending with '.', no '..')"
        )


def _is_marker(msg: Any) -> bool:
    # Deletes and purges (and, on newer servers, age-out markers) carry no value.
    headers = msg.headers or {}
    return "KV-Operation" in headers or "Nats-Marker-Reason" in headers or not msg.data


def _header(result: TaskResult, chunks: dict[str, Any] | None = None) -> bytes:
    header = {
        "v": _FORMAT,
        "task_id": result.task_id,
        "status": result.status.value,
        "error": None if result.error is None else result.error.to_dict(),
        "finished_at": result.finished_at,
        "expires_at": result.expires_at,
        "result": result.result is not None,  # tells None from an empty value
        "chunks": chunks,  # where a value too large for the bucket is
    }
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()


def _decode(data: bytes, key: str) -> tuple[TaskResult, dict[str, Any] | None] | None:
    """The result ``data`` holds and its chunk reference (None: the value is inline), or
    None when ``data`` is not a value this module wrote."""
    line, newline, value = bytes(data).partition(b"\n")
    try:
        header = json.loads(line)
        if not newline or not isinstance(header, dict) or header.get("v") != _FORMAT:
            return None
        chunks = header.get("chunks")
        if chunks is not None and not (
            isinstance(chunks, dict)
            and isinstance(chunks.get("id"), str)
            and all(isinstance(chunks.get(k), int) for k in ("seq", "count", "size"))
            and isinstance(chunks.get("sha256"), str)
        ):
            return None
        header["task_id"] = key or header["task_id"]
        header["result"] = value if header.get("result") else None
        return TaskResult.from_dict(header), chunks
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _chunk_ref(data: bytes | None) -> dict[str, Any] | None:
    decoded = _decode(data or b"", "")
    return None if decoded is None else decoded[1]


async def _bounded(call: Callable[[_A], Awaitable[_T]], items: Sequence[_A]) -> list[_T]:
    """``call`` on each item concurrently, at most ``_CONCURRENCY`` at a time; every call
    finishes before the first error is raised, so a failed batch leaves nothing in flight."""
    results: list[_T] = []
    for start in range(0, len(items), _CONCURRENCY):
        chunk = items[start : start + _CONCURRENCY]
        done = await asyncio.gather(*(call(item) for item in chunk), return_exceptions=True)
        for item in done:
            if isinstance(item, BaseException):
                raise item
        results += done  # type: ignore[arg-type]
    return results
