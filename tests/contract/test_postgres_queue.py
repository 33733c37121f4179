"""What the PostgreSQL queue backend promises beyond the shared contract suite: claims that
never collide across processes and never wait on each other, an index serving the claim,
NOTIFY wake-ups, leases judged by the database clock, migrations, and recovery from lost
connections."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner

from omniq_mp.cli_db import db
from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskStatus, create_task
from omniq_mp.storage.postgres import PostgresStorage
from omniq_mp.storage.postgres_migrations import LATEST
from omniq_mp.storage.postgres_sql import Statements
from tests.contract.conftest import MakeStore

pytestmark = pytest.mark.postgres
asyncpg = pytest.importorskip("asyncpg")


def due(**options: Any) -> Task:
    options.setdefault("eta", time.time() - 1)
    return create_task("math.sqrt", **options)


def with_app_name(dsn: str, name: str) -> str:
    """``dsn`` whose connections show ``name`` as application_name in pg_stat_activity."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """The first truthy result of ``probe``, polled every 20 ms for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return result


@pytest.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[Any]:
    """A plain connection of the test's own, outside any store."""
    conn = await asyncpg.connect(postgres_dsn)
    yield conn
    await conn.close()


# -- claims --------------------------------------------------------------------------------


def _claim_all(dsn: str, schema: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> list[str]:
        store = PostgresStorage(dsn, schema=schema)
        await store.open()
        got: list[str] = []
        try:
            while batch := await store.claim(
                ["default"], 7, time.time(), time.time() + 60, "child"
            ):
                got += [t.id for t in batch]
        finally:
            await store.close()
        return got

    out.put(asyncio.run(run()))


async def test_processes_claiming_at_once_get_every_task_exactly_once(
    make_store: MakeStore, postgres_dsn: str, schema: str
) -> None:
    store = await make_store()
    tasks = [due() for _ in range(2_000)]
    await store.enqueue(tasks)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(postgres_dsn, schema, out)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(10)
    claimed = [i for ids in results for i in ids]
    assert sorted(claimed) == sorted(t.id for t in tasks)  # each exactly once, none left
    assert (await store.stats(None, time.time())).running == 2_000


async def test_stores_claiming_from_one_loop_never_share_a_task(make_store: MakeStore) -> None:
    stores = [await make_store() for _ in range(4)]
    tasks = [due() for _ in range(400)]
    await stores[0].enqueue(tasks)

    async def drain(store: PostgresStorage) -> list[str]:
        got: list[str] = []
        while batch := await store.claim(["default"], 5, time.time(), time.time() + 60, "w"):
            got += [t.id for t in batch]
        return got

    results = await asyncio.gather(*(drain(s) for s in stores for _ in range(2)))
    claimed = [i for ids in results for i in ids]
    assert sorted(claimed) == sorted(t.id for t in tasks)


async def test_a_claimer_does_not_wait_for_another_transaction_holding_a_task(
    make_store: MakeStore, admin: Any, schema: str
) -> None:
    store = await make_store()
    held, *free = [due(priority=p) for p in (9, 1, 1)]
    await store.enqueue([held, *free])
    async with admin.transaction():
        await admin.execute(f"SELECT 1 FROM {schema}.tasks WHERE id = $1 FOR UPDATE", held.id)
        claimed = await asyncio.wait_for(
            store.claim(["default"], 10, time.time(), time.time() + 30, "w"), timeout=5
        )
        assert {t.id for t in claimed} == {t.id for t in free}  # the held one is skipped
    [late] = await store.claim(["default"], 10, time.time(), time.time() + 30, "w")
    assert late.id == held.id


async def test_the_claim_reads_the_partial_index_of_pending_tasks(
    make_store: MakeStore, admin: Any, schema: str
) -> None:
    store = await make_store()
    finished = [due(status=TaskStatus.COMPLETED, queue=f"q{i % 5}") for i in range(5_000)]
    await store.enqueue([*finished, *(due(queue=f"q{i % 5}") for i in range(50))])
    await admin.execute(f"ANALYZE {schema}.tasks")
    now = time.time()
    plan = await admin.fetch(
        f"EXPLAIN {Statements(schema).claim}",
        "token",
        now + 30,
        "w",
        now,
        ["q1", "q2"],
        10,
        now,
        64 * 2**20,
        2,
    )
    text = "\n".join(r[0] for r in plan)
    assert "tasks_claimable" in text, text
    assert "Seq Scan" not in text, text


async def test_ten_thousand_tasks_enqueue_in_one_call_in_order(make_store: MakeStore) -> None:
    store = await make_store()
    tasks = [due(eta=1.0, key=f"k{i % 9_000}") for i in range(10_000)]
    ids = await store.enqueue(tasks)
    assert ids[:9_000] == [t.id for t in tasks[:9_000]]
    assert ids[9_000:] == [t.id for t in tasks[:1_000]]  # a repeated key yields the first
    assert (await store.stats(None, time.time())).pending == 9_000
    claimed = await store.claim(["default"], 9_000, time.time(), time.time() + 30, "w")
    assert [t.id for t in claimed] == [t.id for t in tasks[:9_000]]  # FIFO kept


# -- wake-ups ------------------------------------------------------------------------------


async def test_an_idle_waiter_wakes_promptly_when_another_store_enqueues(
    make_store: MakeStore,
) -> None:
    waiter, producer = await make_store(), await make_store()
    started = time.monotonic()
    assert await waiter.wait_for_work(0.3) is False  # nothing enqueued: sleeps it out
    assert time.monotonic() - started >= 0.3
    waiting = asyncio.ensure_future(waiter.wait_for_work(10))
    await asyncio.sleep(0)  # let the waiter block on its notification
    enqueued = time.monotonic()
    await producer.enqueue([due()])
    assert await asyncio.wait_for(waiting, timeout=5) is True
    assert time.monotonic() - enqueued < 1.0


async def test_retries_revivals_and_fired_schedules_wake_waiters(make_store: MakeStore) -> None:
    waiter, store = await make_store(), await make_store()
    await waiter.wait_for_work(0)  # start listening
    await store.enqueue([due()])
    assert await waiter.wait_for_work(5) is True
    [t] = await store.claim(["default"], 1, time.time(), time.time() + 30, "w")
    assert await waiter.wait_for_work(0.05) is False  # a claim announces nothing
    retry = Settlement(t.id, t.lease_token or "", TaskStatus.PENDING, eta=time.time())
    await store.settle([retry])
    assert await waiter.wait_for_work(5) is True
    [t] = await store.claim(["default"], 1, time.time(), time.time() + 30, "w")
    await store.settle([Settlement(t.id, t.lease_token or "", TaskStatus.DEAD)])
    assert await store.revive(None, time.time()) == [t.id]
    assert await waiter.wait_for_work(5) is True


async def test_wait_for_work_on_an_unreachable_server_returns_after_its_timeout() -> None:
    store = PostgresStorage("postgresql://postgres@127.0.0.1:1/test", schema="omniq_unused")
    started = time.monotonic()
    assert await store.wait_for_work(0.3) is False
    assert 0.3 <= time.monotonic() - started < 5
    await store.close()


@dataclass
class CaughtConnecting:
    """A store whose listener has made its connection but not yet sent LISTEN: the
    moment a supervisor stopping, or closing its store, can hit."""

    store: PostgresStorage
    waiting: asyncio.Future[bool]  # the store's wait_for_work, held there
    release: asyncio.Event  # set: the LISTEN goes ahead
    app: str
    admin: Any

    async def connections(self) -> int:
        """The store's connections open on the server."""
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        return int(await self.admin.fetchval(query, self.app))

    async def until_connections(self, expected: int, what: str) -> None:
        async def reached() -> bool:
            return await self.connections() == expected

        await eventually(reached, 10, what)


async def catch_connecting(
    make_store: MakeStore, dsn: str, admin: Any, monkeypatch: pytest.MonkeyPatch, wait: float
) -> CaughtConnecting:
    app = f"omniq_test_{uuid.uuid4().hex[:8]}"
    store = await make_store(dsn=with_app_name(dsn, app))
    reached, release = asyncio.Event(), asyncio.Event()
    listen = asyncpg.Connection.add_listener

    async def held(conn: Any, channel: str, callback: Any) -> None:
        reached.set()
        await release.wait()
        await listen(conn, channel, callback)

    monkeypatch.setattr(asyncpg.Connection, "add_listener", held)
    waiting = asyncio.ensure_future(store.wait_for_work(wait))
    await asyncio.wait_for(reached.wait(), timeout=10)
    return CaughtConnecting(store, waiting, release, app, admin)


async def test_a_wait_cancelled_while_connecting_leaves_no_connection_open(
    make_store: MakeStore, postgres_dsn: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    caught = await catch_connecting(make_store, postgres_dsn, admin, monkeypatch, wait=10)
    assert await caught.connections() == 2  # the pool's and the listener's
    caught.waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caught.waiting
    await caught.until_connections(1, "the half-made listener connection to close")


async def test_closing_the_store_while_its_listener_connects_closes_that_connection(
    make_store: MakeStore, postgres_dsn: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    caught = await catch_connecting(make_store, postgres_dsn, admin, monkeypatch, wait=0.5)
    await caught.store.close()
    caught.release.set()
    assert await asyncio.wait_for(caught.waiting, timeout=10) is False
    await caught.until_connections(0, "every connection of the closed store to close")


# -- revive --------------------------------------------------------------------------------


async def test_a_revive_racing_an_enqueue_of_its_key_leaves_the_new_task_holding_it(
    make_store: MakeStore, postgres_dsn: str, schema: str, admin: Any
) -> None:
    # The revive reads which keys are held, then re-queues; a task taking the key in
    # between used to fail the revive with a raw unique violation.
    app = f"omniq_test_{uuid.uuid4().hex[:8]}"
    store = await make_store(dsn=with_app_name(postgres_dsn, app))
    dead, newcomer = due(key="nightly"), due()
    await store.enqueue([dead])
    [t] = await store.claim(["default"], 1, time.time(), time.time() + 30, "w")
    await store.settle([Settlement(t.id, t.lease_token or "", TaskStatus.DEAD)])
    await store.enqueue([newcomer])
    async with admin.transaction():
        # Uncommitted: the revive's read of key holders cannot see it, its UPDATE waits on it.
        await admin.execute(
            f"UPDATE {schema}.tasks SET unique_key = 'nightly' WHERE id = $1", newcomer.id
        )
        reviving = asyncio.ensure_future(store.revive(None, time.time()))

        async def revive_waits_on_the_key() -> bool:
            return bool(
                await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    app,
                )
            )

        await eventually(revive_waits_on_the_key, 10, "the revive to wait on the key")
    assert await asyncio.wait_for(reviving, timeout=10) == []
    assert (await store.get(dead.id)).status is TaskStatus.DEAD  # type: ignore[union-attr]
    assert await store.key_holder("nightly") == newcomer.id


# -- leases --------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
async def test_leases_are_judged_by_the_database_clock_whatever_the_claimer_clock(
    make_store: MakeStore, skew: float
) -> None:
    skewed = await make_store(clock=lambda: time.time() + skew)
    honest = await make_store()
    task = due(eta=0.0)
    await skewed.enqueue([task])
    claimer_now = time.time() + skew
    [t] = await skewed.claim(["default"], 1, claimer_now, claimer_now + 30, "skewed")
    assert t.lease_until == claimer_now + 30  # shown as the claimer gave it
    # Judged by an honest clock, and by the skewed one, the lease ends 30 s from now.
    assert await honest.expired(time.time() + 20, 10) == []
    assert [x.id for x in await honest.expired(time.time() + 40, 10)] == [task.id]
    assert await skewed.expired(time.time() + skew + 20, 10) == []
    assert [x.id for x in await skewed.expired(time.time() + skew + 40, 10)] == [task.id]
    lost = await skewed.extend_leases({t.id: t.lease_token or ""}, time.time() + skew + 300)
    assert lost == set()
    assert await honest.expired(time.time() + 200, 10) == []
    assert [x.id for x in await honest.expired(time.time() + 400, 10)] == [task.id]


# -- migrations ----------------------------------------------------------------------------


async def test_open_creates_the_schema_at_the_latest_version_once(
    make_store: MakeStore, postgres_dsn: str, schema: str
) -> None:
    fresh = PostgresStorage(postgres_dsn, schema=schema)
    assert await fresh.schema_version() == 0
    stores = await asyncio.gather(*(make_store() for _ in range(4)))  # racing supervisors
    assert await stores[0].schema_version() == LATEST
    assert await stores[0].upgrade() == []
    assert await fresh.schema_version() == LATEST  # without open(): a short-lived pool


async def test_a_schema_newer_than_this_code_is_refused(
    make_store: MakeStore, postgres_dsn: str, schema: str, admin: Any
) -> None:
    await make_store()
    await admin.execute(
        f"INSERT INTO {schema}.schema_version (version, name) VALUES ($1, 'from the future')",
        LATEST + 1,
    )
    newer = PostgresStorage(postgres_dsn, schema=schema)
    with pytest.raises(StorageError, match=f"version {LATEST + 1}, newer") as refused:
        await newer.open()
    assert "\n" not in str(refused.value)
    with pytest.raises(StorageError, match="newer"):
        await newer.upgrade()
    with pytest.raises(StorageError, match="newer"):
        await PostgresStorage(postgres_dsn, schema=schema, migrate=False).open()


async def test_without_migrate_an_old_schema_is_refused_naming_the_command(
    postgres_dsn: str, schema: str
) -> None:
    store = PostgresStorage(postgres_dsn, schema=schema, migrate=False)
    with pytest.raises(StorageError, match="omniq-mp db upgrade"):
        await store.open()
    assert await store.schema_version() == 0  # nothing was created


def test_db_cli_upgrades_and_reports_the_version(postgres_dsn: str, schema: str) -> None:
    runner = CliRunner()
    args = ["--dsn", postgres_dsn, "--schema", schema]
    try:
        first = runner.invoke(db, ["upgrade", *args])
        assert first.exit_code == 0, first.output
        assert f"now at version {LATEST}" in first.output
        again = runner.invoke(db, ["upgrade", *args])
        assert f"already at version {LATEST}" in again.output
        shown = runner.invoke(db, ["version", *args])
        assert shown.exit_code == 0 and f"version {LATEST} (up to date)" in shown.output
    finally:
        asyncio.run(PostgresStorage(postgres_dsn, schema=schema).drop())


def test_db_cli_reports_an_unreachable_server_in_one_line() -> None:
    result = CliRunner().invoke(db, ["version", "--dsn", "postgresql://u:s3cret@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert "127.0.0.1:1" in result.output and "s3cret" not in result.output
    assert result.output.count("\n") == 1


# -- lost connections ----------------------------------------------------------------------


async def test_an_unreachable_server_is_one_line_naming_host_and_port_not_password() -> None:
    store = PostgresStorage("postgresql://postgres:s3cret@127.0.0.1:1/test")
    with pytest.raises(StorageError) as refused:
        await store.open()
    message = str(refused.value)
    assert "127.0.0.1:1" in message and "s3cret" not in message and "\n" not in message


async def _terminate(admin: Any, app: str, **where: str) -> int:
    extra = "".join(f" AND {column} = '{value}'" for column, value in where.items())
    return int(
        await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name = $1{extra}",
            app,
        )
    )


async def test_a_connection_killed_mid_call_fails_that_call_only(
    make_store: MakeStore, postgres_dsn: str, schema: str, admin: Any
) -> None:
    app = f"omniq_test_{uuid.uuid4().hex[:8]}"
    store = await make_store(dsn=with_app_name(postgres_dsn, app))
    task = due()
    await store.enqueue([task])
    async with admin.transaction():
        # Holding the row makes the store's cancel wait on it: a call in flight.
        await admin.execute(f"SELECT 1 FROM {schema}.tasks WHERE id = $1 FOR UPDATE", task.id)
        cancelling = asyncio.ensure_future(store.cancel(task.id, time.time()))

        async def blocked() -> int:
            return await _terminate(admin, app, wait_event_type="Lock")

        await eventually(blocked, 10, "the store's cancel to wait on the row lock")
        with pytest.raises(StorageError) as lost:
            await asyncio.wait_for(cancelling, timeout=10)
    message = str(lost.value)
    assert "127.0.0.1:5432" in message and "\n" not in message
    got = await store.cancel(task.id, time.time())  # the next call works
    assert got is not None and got.status is TaskStatus.CANCELLED


async def test_the_store_recovers_after_every_connection_is_killed(
    make_store: MakeStore, postgres_dsn: str, admin: Any
) -> None:
    app = f"omniq_test_{uuid.uuid4().hex[:8]}"
    store = await make_store(dsn=with_app_name(postgres_dsn, app), min_size=2)
    producer = await make_store()
    await store.wait_for_work(0)  # the LISTEN connection exists too
    assert await _terminate(admin, app) >= 3
    try:  # a pooled connection not yet known to be dead may fail this call ...
        await store.enqueue([due()])
    except StorageError as exc:
        assert "connection lost" in str(exc) and "\n" not in str(exc)
    await store.enqueue([due()])  # ... but the pool is renewed for the next one

    # The listener reconnects on its next wait, saying work may have been missed ...
    async def listening_again() -> bool:
        return await store.wait_for_work(0.2)

    await eventually(listening_again, 10, "the listener to reconnect")
    # ... and notifications reach it again.
    waiting = asyncio.ensure_future(store.wait_for_work(10))
    await asyncio.sleep(0)
    started = time.monotonic()
    await producer.enqueue([due()])
    assert await asyncio.wait_for(waiting, timeout=5) is True
    assert time.monotonic() - started < 1.0
