"""Results in Redis: one string key per result, ``{prefix}:result:{task_id}``.

A value is a one-line JSON header (status, error, times) followed by the result's raw
pickled bytes, so a large result costs no base64 and is never unpickled here::

    {"v":1,"task_id":"...","status":"COMPLETED",...,"has_result":true}\\n<pickled bytes>

A result with ``expires_at`` is written with ``SET ... PXAT`` (its expiry rounded up to the
millisecond), so Redis deletes it by itself once it is due; ``purge_expired`` exists for
callers that purge explicitly, and usually finds little left to do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from omniq_mp.redis_client import RedisBacked, RedisConnection
from omniq_mp.results.base import TaskResult

__all__ = ["RedisResultStorage"]

_VERSION = 1
_BATCH = 1000  # keys per MGET/UNLINK/script call, so no single command blocks the server long

# Delete the keys (KEYS) whose expiry is before ARGV[1] (epoch ms), in one atomic step: a
# result stored again between SCAN and this script is judged by its new expiry.
_PURGE_EXPIRED = """
local removed = 0
local cutoff = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
    local at = redis.call('PEXPIRETIME', key)
    if at >= 0 and at < cutoff then
        removed = removed + redis.call('UNLINK', key)
    end
end
return removed
"""


class RedisResultStorage(RedisBacked):
    """Results of finished tasks in Redis (7.0 or later), expiring by themselves.

    :param host: server host (ignored when ``url`` is given).
    :param port: server port (ignored when ``url`` is given).
    :param db: database number (ignored when ``url`` is given).
    :param url: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``).
    :param password: used when the URL carries none.
    :param prefix: the keys' namespace; several stores may share a database under
        different prefixes.
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
    ) -> None:
        self.prefix = prefix
        self.skipped = 0  # stored values that could not be decoded, reported as missing
        # Every write here is a whole-value SET or a delete, so resending one is harmless.
        self._redis = RedisConnection(
            "Redis result storage", host, port, db, url=url, password=password, retries=1
        )

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}:result:{task_id}"

    async def store(self, results: Sequence[TaskResult]) -> None:
        """Write the results in one round trip, each replacing any earlier one.

        :raises ValueError: a result's status is not terminal (nothing is written).
        """
        encoded = [(self._key(r.task_id), _encode(r), _expiry_ms(r.expires_at)) for r in results]
        if not encoded:
            return
        pipe = self._redis.client.pipeline(transaction=False)
        for key, value, pxat in encoded:
            pipe.set(key, value, pxat=pxat)
        with self._redis.errors():
            await pipe.execute()

    async def get(self, task_id: str) -> TaskResult | None:
        """The stored result, or None (never stored, deleted or expired)."""
        with self._redis.errors():
            raw = await self._redis.client.get(self._key(task_id))
        return None if raw is None else self._decode(raw)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """The stored results among ``task_ids`` (one round trip), by id."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        pipe = self._redis.client.pipeline(transaction=False)
        for start in range(0, len(ids), _BATCH):
            pipe.mget([self._key(i) for i in ids[start : start + _BATCH]])
        with self._redis.errors():
            replies: list[list[bytes | str | None]] = await pipe.execute()
        found: dict[str, TaskResult] = {}
        for task_id, raw in zip(ids, (v for reply in replies for v in reply), strict=True):
            result = None if raw is None else self._decode(raw)
            if result is not None:
                found[task_id] = result
        return found

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Delete results; return how many existed."""
        keys = [self._key(i) for i in dict.fromkeys(task_ids)]
        return await self._unlink(keys)

    async def purge_expired(self, now: float) -> int:
        """Delete results whose ``expires_at`` is before ``now`` (to the millisecond).

        Redis deletes expired results by itself, so this usually returns 0 for ``now`` up
        to the present: it only counts what it deleted, and finds work when ``now`` is
        ahead of the server's clock or Redis has not yet reclaimed a key. It SCANs every
        key of the database (cost: O(keys in the database), in batches that never block
        the server for long).
        """
        script = self._redis.client.register_script(_PURGE_EXPIRED)
        cutoff = math.ceil(now * 1000)
        removed = 0
        async for keys in self._redis.scan(self._key("")):
            with self._redis.errors():
                removed += int(await script(keys=keys, args=[cutoff]))
        return removed

    async def drop(self) -> None:
        """Delete every result of this prefix (other keys under the prefix are kept)."""
        async for keys in self._redis.scan(self._key("")):
            await self._unlink(keys)

    async def _unlink(self, keys: Sequence[str | bytes]) -> int:
        if not keys:
            return 0
        pipe = self._redis.client.pipeline(transaction=False)
        for start in range(0, len(keys), _BATCH):
            pipe.unlink(*keys[start : start + _BATCH])
        with self._redis.errors():
            counts: list[int] = await pipe.execute()
        return sum(counts)

    def _decode(self, raw: bytes | str) -> TaskResult | None:
        # str only comes from a client told to decode replies (decode_responses in the
        # URL), which has already mangled the pickled bytes.
        result = _decode(raw) if isinstance(raw, bytes) else None
        if result is None:
            self.skipped += 1
        return result


def _expiry_ms(expires_at: float | None) -> int | None:
    # Rounded up so a result never vanishes before its expires_at; at least 1 because
    # Redis rejects PXAT 0 (such a result is long expired anyway and vanishes at once).
    return None if expires_at is None else max(1, math.ceil(expires_at * 1000))


def _encode(result: TaskResult) -> bytes:
    if not result.status.is_terminal:
        raise ValueError(f"a stored result must be terminal, not {result.status.value}")
    header = result.to_dict()
    del header["result"]
    header["v"] = _VERSION
    header["has_result"] = result.result is not None
    line = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    # json.dumps escapes newlines inside strings, so the first b"\n" ends the header.
    return line + b"\n" + (result.result or b"")


def _decode(raw: bytes) -> TaskResult | None:
    head, newline, body = raw.partition(b"\n")
    try:
        header: dict[str, Any] = json.loads(head)
        if not newline or header.get("v") != _VERSION:
            return None
        header["result"] = body if header.get("has_result") else None
        return TaskResult.from_dict(header)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
