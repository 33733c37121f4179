"""What the Redis result and event stores promise beyond the shared contracts: clear
connect errors, results that expire by themselves, concurrent appenders that a follower
reads without gaps or repeats, a blocking ``wait`` for new events, and stored results that
survive a restart of the server."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from omniq_mp.errors import StorageError
from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.eventstore.redis import RedisEventStorage
from omniq_mp.models import TaskError, TaskStatus
from omniq_mp.results.base import TaskResult
from omniq_mp.results.redis import RedisResultStorage
from tests.own_servers import PASSWORD, OwnRedis
from tests.waiting import until

Store = RedisResultStorage | RedisEventStorage
STORES = [RedisResultStorage, RedisEventStorage]


def result(task_id: str, value: bytes = b"v", expires_at: float | None = None) -> TaskResult:
    return TaskResult(
        task_id, TaskStatus.COMPLETED, value, finished_at=time.time(), expires_at=expires_at
    )


def event(writer: str, seq: int) -> Event:
    return Event(EventType.COMPLETED, task_id=f"{writer}-{seq}", details={"w": writer, "s": seq})


def assert_one_line_naming(error: StorageError, where: str) -> None:
    message = str(error)
    assert where in message and "\n" not in message and PASSWORD not in message, message


@pytest.fixture
def prefix() -> str:
    return f"omniq-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def raw(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared server; deletes this test's keys afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


@pytest.fixture
async def results(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> AsyncIterator[RedisResultStorage]:
    store = RedisResultStorage(url=redis_url, prefix=prefix)
    await store.open()
    yield store
    await store.drop()
    await store.close()


# -- without a server --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", STORES)
async def test_an_unreachable_server_is_one_line_naming_host_and_port_not_password(
    cls: type[Store],
) -> None:
    for store in [
        cls(url=f"redis://:{PASSWORD}@127.0.0.1:1/0"),
        cls("127.0.0.1", 1, password=PASSWORD),
    ]:
        started = time.monotonic()
        with pytest.raises(StorageError, match=re.escape("127.0.0.1:1")) as caught:
            await store.open()
        assert time.monotonic() - started < 5  # refused at once, not retried for long
        assert_one_line_naming(caught.value, "127.0.0.1:1")
        await store.close()  # safe after a failed open
        with pytest.raises(StorageError, match="not open"):
            if isinstance(store, RedisResultStorage):
                await store.purge_expired(0.0)
            else:
                await store.purge(0.0)


# -- results -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_result_past_its_expiry_is_gone_without_a_purge(
    results: RedisResultStorage,
) -> None:
    now = time.time()
    await results.store([result("past", expires_at=now - 1), result("kept")])
    assert await results.get("past") is None
    assert set(await results.get_many(["past", "kept"])) == {"kept"}

    await results.store([result("soon", expires_at=time.time() + 0.3)])
    assert await results.get("soon") is not None

    async def soon_gone() -> bool:
        return await results.get("soon") is None

    await until(soon_gone, 5, "the result to expire")
    assert await results.get("kept") is not None


@pytest.mark.redis
async def test_redis_is_told_when_each_result_expires(
    results: RedisResultStorage, raw: aioredis.Redis, prefix: str
) -> None:
    expires_at = time.time() + 3600.0001
    await results.store([result("later", expires_at=expires_at), result("never")])
    # Rounded up: a result never vanishes before its expires_at.
    assert await raw.pexpiretime(f"{prefix}:result:later") == math.ceil(expires_at * 1000)
    assert await raw.pexpiretime(f"{prefix}:result:never") == -1
    await results.store([result("later")])  # stored again without expiry: kept for good
    assert await raw.pexpiretime(f"{prefix}:result:later") == -1


@pytest.mark.redis
async def test_purge_expired_removes_what_is_due_by_the_given_time(
    results: RedisResultStorage,
) -> None:
    now = time.time()
    await results.store(
        [result("a", expires_at=now + 60), result("b", expires_at=now + 600), result("c")]
    )
    assert await results.purge_expired(now) == 0  # nothing is due yet
    assert await results.purge_expired(now + 120) == 1
    assert set(await results.get_many(["a", "b", "c"])) == {"b", "c"}
    assert await results.purge_expired(now + 10_000) == 1
    assert set(await results.get_many(["a", "b", "c"])) == {"c"}


@pytest.mark.redis
async def test_results_round_trip_raw_bytes_and_errors_and_refuse_non_terminal(
    results: RedisResultStorage,
) -> None:
    pickled = bytes(range(256)) + b"\n\n{not json"
    error = TaskError("ValueError", "bad\ninput é", "Traceback...\n", retry_count=2)
    sent = [
        result("bytes", pickled),
        result("empty", b""),
        TaskResult("none", TaskStatus.COMPLETED, None, finished_at=1.25),
        TaskResult("failed", TaskStatus.FAILED, error=error, finished_at=2.5, expires_at=9e9),
    ]
    await results.store(sent)
    assert await results.get_many([r.task_id for r in sent]) == {r.task_id: r for r in sent}
    with pytest.raises(ValueError, match="terminal"):
        await results.store([result("ok"), TaskResult("running", TaskStatus.RUNNING)])
    assert await results.get("ok") is None  # nothing of a refused batch was written
    assert await results.delete(["bytes", "none", "missing"]) == 2
    assert set(await results.get_many([r.task_id for r in sent])) == {"empty", "failed"}


@pytest.mark.redis
async def test_a_damaged_value_reads_as_missing_and_is_counted(
    results: RedisResultStorage, raw: aioredis.Redis, prefix: str
) -> None:
    await results.store([result("good")])
    await raw.set(f"{prefix}:result:bad", b"\x00not a result")
    assert await results.get("bad") is None
    assert set(await results.get_many(["good", "bad"])) == {"good"}
    assert results.skipped == 2


@pytest.mark.redis
async def test_drop_deletes_only_this_prefix_results(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    mine = RedisResultStorage(url=redis_url, prefix=prefix)
    other = RedisResultStorage(url=redis_url, prefix=f"{prefix}:other[*]")
    for store in (mine, other):
        await store.open()
        await store.store([result(str(i)) for i in range(1500)])
    await raw.set(f"{prefix}:unrelated", b"x")
    try:
        await mine.drop()
        assert await mine.get_many([str(i) for i in range(1500)]) == {}
        assert len(await other.get_many([str(i) for i in range(1500)])) == 1500
        assert await raw.get(f"{prefix}:unrelated") == b"x"
    finally:
        await other.drop()
        for store in (mine, other):
            await store.close()


# -- events ------------------------------------------------------------------------------------


@pytest.fixture
async def event_stores(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> AsyncIterator[Callable[..., RedisEventStorage]]:
    """Opened event stores on one log, each with its own connections; dropped after."""
    made: list[RedisEventStorage] = []

    def make(url: str | None = None, maxlen: int | None = None) -> RedisEventStorage:
        store = RedisEventStorage(url=url or redis_url, prefix=prefix, maxlen=maxlen)
        made.append(store)
        return store

    yield make
    if made:
        await made[0].drop()
    for store in made:
        await store.close()


@pytest.mark.redis
async def test_concurrent_appenders_never_let_a_follower_miss_or_repeat_an_event(
    event_stores: Callable[..., RedisEventStorage],
) -> None:
    writers = [event_stores() for _ in range(4)]
    follower = event_stores()
    for store in [follower, *writers]:
        await store.open()
    batches, per_batch = 40, 3

    async def write(store: RedisEventStorage, name: str) -> None:
        for b in range(batches):
            await store.append([event(name, b * per_batch + i) for i in range(per_batch)])

    # Two appenders per writer store, so more appends are in flight than stores.
    names = [f"{w}{half}" for w in range(len(writers)) for half in "ab"]
    appending = asyncio.gather(*(write(writers[int(n[:-1])], n) for n in names))
    total = len(names) * batches * per_batch
    seen: list[StoredEvent] = []
    deadline = time.monotonic() + 60
    while len(seen) < total and time.monotonic() < deadline:
        seen += await follower.read(after=seen[-1].position if seen else 0, limit=7)
        await asyncio.sleep(0)
    await appending
    everything = await follower.read(limit=total + 1)

    assert len(everything) == total
    assert seen == everything
    assert all(a.position < b.position for a, b in itertools.pairwise(seen))
    by_writer: dict[str, list[int]] = {}
    for s in seen:
        by_writer.setdefault(s.event.details["w"], []).append(s.event.details["s"])
    assert by_writer == {n: list(range(batches * per_batch)) for n in names}
    for i in range(0, total, per_batch):  # each batch kept whole
        assert len({s.event.details["w"] for s in seen[i : i + per_batch]}) == 1


@pytest.mark.redis
async def test_wait_returns_as_soon_as_another_client_appends(
    event_stores: Callable[..., RedisEventStorage], redis_url: str, raw: aioredis.Redis
) -> None:
    name = f"omniq-waiter-{uuid.uuid4().hex[:12]}"
    waiter = event_stores(url=f"{redis_url}?client_name={name}")
    writer = event_stores()
    await waiter.open()
    await writer.open()
    await writer.append([event("w", 0)])
    [first] = await waiter.read()

    waiting = asyncio.create_task(waiter.wait(after=first.position, timeout=30))

    async def blocked() -> bool:
        clients = await raw.client_list()
        return any(c.get("name") == name and c.get("cmd") == "xread" for c in clients)

    await until(blocked, 5, "the waiter to block in XREAD")
    assert not waiting.done()
    await writer.append([event("w", 1)])
    appended = time.monotonic()
    await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - appended < 1.0
    [second] = await waiter.read(after=first.position)
    assert second.event.details["s"] == 1


@pytest.mark.redis
async def test_wait_returns_after_its_timeout_or_at_once_when_events_exist(
    event_stores: Callable[..., RedisEventStorage], redis_url: str
) -> None:
    # A socket timeout shorter than the wait: the block must be split, not time out.
    store = event_stores(url=f"{redis_url}?socket_timeout=0.4")
    await store.open()
    started = time.monotonic()
    await store.wait(after=0, timeout=1.0)  # an empty log
    assert 1.0 <= time.monotonic() - started < 3.0

    await store.append([event("w", 0), event("w", 1)])
    first, second = await store.read()
    started = time.monotonic()
    await store.wait(after=first.position, timeout=10)
    await store.wait(after=0, timeout=0)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    await store.wait(after=second.position, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2.0


@pytest.mark.redis
async def test_maxlen_keeps_the_newest_events_and_task_reads_follow(
    event_stores: Callable[..., RedisEventStorage],
) -> None:
    store = event_stores(maxlen=10)
    await store.open()
    for start in range(0, 30, 3):
        await store.append([Event(EventType.STARTED, f"t{i % 4}") for i in range(start, start + 3)])
    kept = await store.read()
    assert [s.position for s in kept] == list(range(21, 31))
    assert await store.read(task_id="t1") == [s for s in kept if s.event.task_id == "t1"]


@pytest.mark.redis
async def test_positions_continue_when_the_counter_key_is_lost(
    event_stores: Callable[..., RedisEventStorage], raw: aioredis.Redis, prefix: str
) -> None:
    store = event_stores()
    await store.open()
    await store.append([event("a", i) for i in range(5)])
    await raw.delete(f"{prefix}:events:seq")
    await store.append([event("b", 0)])
    assert [s.position for s in await store.read()] == [1, 2, 3, 4, 5, 6]


@pytest.mark.redis
async def test_a_damaged_entry_is_skipped_and_counted(
    event_stores: Callable[..., RedisEventStorage], raw: aioredis.Redis, prefix: str
) -> None:
    store = event_stores()
    await store.open()
    await store.append([event("a", 0)])
    await raw.xadd(f"{prefix}:events", {"body": "{not json"}, id="2-0")
    await raw.xadd(f"{prefix}:events", {"body": "{}"}, id="3-0")
    await raw.set(f"{prefix}:events:seq", 3)
    await store.append([event("a", 1)])
    assert [s.position for s in await store.read()] == [1, 4]
    assert store.skipped == 2


# -- a server restart --------------------------------------------------------------------------


async def test_a_server_restart_loses_no_stored_result_and_the_stores_reconnect(
    own_redis: OwnRedis,
) -> None:
    own_redis.start()
    await own_redis.ready()
    results = RedisResultStorage(url=own_redis.url)
    events = RedisEventStorage(url=own_redis.url)
    try:
        await results.open()
        await events.open()
        sent = [result(f"r{i}", f"value {i}".encode()) for i in range(200)]
        for start in range(0, 200, 50):
            await results.store(sent[start : start + 50])
        await events.append([event("w", i) for i in range(5)])

        own_redis.stop()
        with pytest.raises(StorageError) as caught:
            await results.store([result("while-down")])
        assert_one_line_naming(caught.value, f"127.0.0.1:{own_redis.port}")
        with pytest.raises(StorageError) as caught:
            await events.append([event("while-down", 0)])
        assert_one_line_naming(caught.value, f"127.0.0.1:{own_redis.port}")

        own_redis.start()
        await own_redis.ready()
        # The same objects, never re-opened.
        assert await results.get_many([r.task_id for r in sent]) == {r.task_id: r for r in sent}
        assert await results.get("while-down") is None
        await results.store([result("after")])
        assert await results.get("after") is not None
        await events.append([event("w", 5)])
        stored = await events.read()
        assert [s.position for s in stored] == [1, 2, 3, 4, 5, 6]
        assert [s.event.details["s"] for s in stored] == list(range(6))
    finally:
        await results.close()
        await events.close()
