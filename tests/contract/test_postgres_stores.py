"""What the PostgreSQL result and event stores promise beyond the shared contracts: clear
connect errors, refused table names, safe concurrent opens and appends, recovery from
killed connections, and a table shared by several stores."""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.eventstore.postgres import PostgreSQLEventStorage
from omniq_mp.models import TaskError, TaskStatus
from omniq_mp.results.base import TaskResult
from omniq_mp.results.postgres import PostgreSQLResultStorage

Store = PostgreSQLResultStorage | PostgreSQLEventStorage
STORES = [PostgreSQLResultStorage, PostgreSQLEventStorage]
PASSWORD = "s3cret"


@dataclass
class Server:
    """The test database: DSNs that tag this test's connections, and an admin connection
    that sees and kills only those, and drops only the tables this test named."""

    dsn: str
    app: str
    admin_dsn: str
    admin: Any
    tables: list[str] = field(default_factory=list)

    def table(self, kind: str) -> str:
        name = f"omniq_{kind}_{uuid.uuid4().hex[:12]}"
        self.tables.append(name)
        return name

    async def kill(self) -> int:
        """Terminate this test's connections, waiting until each is gone; how many."""
        killed: int = await self.admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
            "FROM pg_stat_activity WHERE application_name = $1",
            self.app,
        )
        return killed

    @contextlib.asynccontextmanager
    async def table_locked(self, table: str) -> AsyncIterator[None]:
        """Hold an exclusive lock on ``table`` (on its own connection: the admin one must
        stay outside a transaction, where pg_stat_activity would be a frozen snapshot)."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                yield
        finally:
            await conn.close()

    async def waiting_on_locks(self) -> set[int]:
        """Backend pids of this test's connections that wait for a lock."""
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = $1 AND wait_event_type = 'Lock'",
            self.app,
        )
        return {row["pid"] for row in rows}


@pytest.fixture
async def server(postgres_dsn: str) -> AsyncIterator[Server]:
    app = f"omniq_pgtest_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(postgres_dsn)
    if parts.password is None:  # a password the server ignores (trust), so errors can hide it
        netloc = f"{parts.username or 'postgres'}:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"
        parts = parts._replace(netloc=netloc)
    query = f"{parts.query}&" if parts.query else ""
    dsn = urlunsplit(parts._replace(query=f"{query}application_name={app}"))
    admin = await asyncpg.connect(postgres_dsn)
    srv = Server(dsn, app, postgres_dsn, admin)
    try:
        yield srv
    finally:
        for name in srv.tables:
            await admin.execute(f"DROP TABLE IF EXISTS {name}")
        await admin.close()


class Proxy:
    """A TCP relay to the server that can be taken down and brought back on the same port:
    a server restart as the store sees it, without touching the shared server."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: asyncio.Server | None = None
        self._streams: list[asyncio.StreamWriter] = []
        self._pipes: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self._listener = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening and cut every relayed connection."""
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        for stream in self._streams:
            stream.close()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self._streams.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._streams += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(_pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def result(task_id: str, value: bytes = b"v") -> TaskResult:
    return TaskResult(task_id, TaskStatus.COMPLETED, value, finished_at=time.time())


def event(writer: str, seq: int) -> Event:
    return Event(EventType.COMPLETED, task_id=f"{writer}-{seq}", details={"w": writer, "s": seq})


def assert_one_line_without_password(error: StorageError) -> None:
    message = str(error)
    assert "\n" not in message and PASSWORD not in message, message


# -- without a server --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", STORES)
async def test_an_unreachable_server_is_one_line_naming_host_and_port_not_password(
    cls: type[Store],
) -> None:
    store = cls(dsn=f"postgresql://u:{PASSWORD}@127.0.0.1:1/x")
    with pytest.raises(StorageError, match=re.escape("127.0.0.1:1")) as caught:
        await store.open()
    assert_one_line_without_password(caught.value)
    await store.close()  # safe after a failed open
    with pytest.raises(StorageError, match="not open"):
        if isinstance(store, PostgreSQLResultStorage):
            await store.purge_expired(0.0)
        else:
            await store.purge(0.0)


@pytest.mark.parametrize("cls", STORES)
@pytest.mark.parametrize("table", ["x; DROP TABLE y", "1abc", "a" * 64, "", "a-b", 'q"t', "é"])
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(
    cls: type[Store], table: str
) -> None:
    with pytest.raises(StorageError, match="table name"):
        cls(table=table)


@pytest.mark.parametrize("cls", STORES)
@pytest.mark.parametrize(("low", "high"), [(2, 1), (-1, 1), (0, 0)])
def test_impossible_pool_sizes_are_refused(cls: type[Store], low: int, high: int) -> None:
    with pytest.raises(ConfigError, match="max_size"):
        cls(min_size=low, max_size=high)


# -- with the server ---------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("cls", STORES)
async def test_many_stores_opening_a_new_table_at_once_all_succeed(
    cls: type[Store], server: Server
) -> None:
    table = server.table("open")
    stores = [cls(dsn=server.dsn, table=table, max_size=1) for _ in range(8)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


@pytest.mark.postgres
async def test_concurrent_appenders_never_let_a_follower_miss_or_repeat_an_event(
    server: Server,
) -> None:
    table = server.table("events")
    writers = [PostgreSQLEventStorage(server.dsn, table, max_size=2) for _ in range(4)]
    follower = PostgreSQLEventStorage(server.dsn, table, max_size=1)
    for store in [follower, *writers]:
        await store.open()
    batches, per_batch = 60, 10

    async def write(store: PostgreSQLEventStorage, name: str) -> None:
        for b in range(batches):
            await store.append([event(name, b * per_batch + i) for i in range(per_batch)])

    # Two appenders per writer store, so more transactions are in flight than stores.
    names = [f"{w}{half}" for w in range(len(writers)) for half in "ab"]
    appending = asyncio.gather(*(write(writers[int(n[:-1])], n) for n in names))
    total = len(names) * batches * per_batch
    seen: list[StoredEvent] = []

    async def follow() -> bool:
        page = await follower.read(after=seen[-1].position if seen else 0, limit=100)
        seen.extend(page)
        return bool(page)

    while not appending.done():
        await follow()
    await appending
    while await follow():  # what committed after the last read while appending
        pass
    everything = await follower.read(limit=total + 1)
    for store in [follower, *writers]:
        await store.close()

    assert len(everything) == total
    assert seen == everything  # nothing a later commit filled in behind the follower
    by_writer: dict[str, list[int]] = {}
    for s in seen:
        by_writer.setdefault(s.event.details["w"], []).append(s.event.details["s"])
    assert by_writer == {n: list(range(batches * per_batch)) for n in names}


@pytest.mark.postgres
async def test_positions_follow_the_order_of_a_large_batch(server: Server) -> None:
    log = PostgreSQLEventStorage(server.dsn, server.table("events"))
    await log.open()
    sent = [event("a", i) for i in range(2000)]
    await log.append(sent)
    stored = await log.read(limit=5000)
    await log.close()
    assert [s.event for s in stored] == sent
    assert [s.position for s in stored] == list(range(1, 2001))


@pytest.mark.postgres
async def test_results_survive_close_and_reopen_and_are_shared_by_stores(
    server: Server,
) -> None:
    table = server.table("results")
    first = PostgreSQLResultStorage(server.dsn, table)
    second = PostgreSQLResultStorage(server.dsn, table)
    await first.open()
    await second.open()
    failed = TaskResult("b", TaskStatus.FAILED, error=TaskError("E", "m"), expires_at=2e9)
    await first.store([result("a"), failed])
    assert await second.get_many(["a", "b", "c"]) == {
        "a": result_of(await first.get("a")),
        "b": failed,
    }
    await second.store([result("a", b"second")])
    assert result_of(await first.get("a")).result == b"second"
    assert await second.delete(["b"]) == 1 and await first.get("b") is None
    await first.close()
    await second.close()

    again = PostgreSQLResultStorage(server.dsn, table)
    await again.open()
    assert result_of(await again.get("a")).result == b"second"
    await again.close()


def result_of(found: TaskResult | None) -> TaskResult:
    assert found is not None
    return found


@pytest.mark.postgres
async def test_events_survive_close_and_reopen_and_are_shared_by_stores(
    server: Server,
) -> None:
    table = server.table("events")
    first = PostgreSQLEventStorage(server.dsn, table)
    second = PostgreSQLEventStorage(server.dsn, table)
    await first.open()
    await second.open()
    await first.append([event("a", 0), event("a", 1)])
    await second.append([event("b", 0)])
    from_first, from_second = await first.read(), await second.read()
    assert from_first == from_second
    assert [s.event.task_id for s in from_first] == ["a-0", "a-1", "b-0"]
    await first.close()
    await second.close()

    again = PostgreSQLEventStorage(server.dsn, table)
    await again.open()
    await again.append([event("c", 0)])
    stored = await again.read()
    await again.close()
    assert stored[:3] == from_first
    assert stored[3].position > from_first[-1].position and stored[3].event.task_id == "c-0"


@pytest.mark.postgres
async def test_a_batch_naming_one_task_twice_keeps_the_last_result(server: Server) -> None:
    store = PostgreSQLResultStorage(server.dsn, server.table("results"))
    await store.open()
    await store.store([result("a", b"1"), result("b"), result("a", b"2")])
    assert result_of(await store.get("a")).result == b"2"
    with pytest.raises(ValueError, match="terminal"):
        await store.store([result("c"), TaskResult("d", TaskStatus.RUNNING)])
    assert await store.get_many(["c", "d"]) == {}
    await store.close()


@pytest.mark.postgres
async def test_a_damaged_result_row_is_an_error_naming_the_task(server: Server) -> None:
    table = server.table("results")
    store = PostgreSQLResultStorage(server.dsn, table)
    await store.open()
    await server.admin.execute(
        f"INSERT INTO {table} (task_id, status, finished_at) VALUES ('bad', 'RUNNING', 1)"
    )
    with pytest.raises(StorageError, match=r"'bad'.*damaged"):
        await store.get("bad")
    await store.close()


@pytest.mark.postgres
async def test_malformed_event_rows_are_skipped_and_counted(server: Server) -> None:
    table = server.table("events")
    log = PostgreSQLEventStorage(server.dsn, table)
    await log.open()
    await log.append([event("a", 0)])
    for body in ['{"event_type": "NOPE", "timestamp": 1}', "[1, 2]", '{"timestamp": 1}']:
        await server.admin.execute(
            f"INSERT INTO {table} (timestamp, event_type, body) VALUES (1, 'X', $1::jsonb)", body
        )
    await log.append([event("a", 1)])
    stored = await log.read()
    assert [s.event.task_id for s in stored] == ["a-0", "a-1"]
    assert [s.position for s in stored] == [1, 5]
    assert log.skipped == 3
    await log.close()


@pytest.fixture
async def written(
    server: Server,
) -> AsyncIterator[tuple[PostgreSQLResultStorage, PostgreSQLEventStorage]]:
    """An open result store holding task a's result and an open event log holding event
    a-0; both closed afterwards, however the test ends (open pools would leak into the
    next test)."""
    results = PostgreSQLResultStorage(server.dsn, server.table("results"))
    log = PostgreSQLEventStorage(server.dsn, server.table("events"))
    try:
        await results.open()
        await log.open()
        await results.store([result("a")])
        await log.append([event("a", 0)])
        yield results, log
    finally:
        await results.close()
        await log.close()


@pytest.mark.postgres
async def test_killed_idle_connections_are_replaced_on_the_next_call(
    server: Server, written: tuple[PostgreSQLResultStorage, PostgreSQLEventStorage]
) -> None:
    results, log = written
    assert await server.kill() >= 2

    assert result_of(await results.get("a")).result == b"v"  # retried, no error
    assert len(await log.read()) == 1
    await server.kill()
    try:  # an append is never retried (it may have committed), so it may fail once...
        await log.append([event("a", 1)])
    except StorageError as exc:
        assert_one_line_without_password(exc)
        await log.append([event("a", 1)])  # ...but the next one works
    assert [s.event.task_id for s in await log.read()] == ["a-0", "a-1"]


def deliver_termination_notice(store: Store) -> int:
    """Hand each idle pooled connection of ``store`` the message a server sends before it
    ends a session (pg_terminate_backend's FATAL 57P01), as if its end of stream had not
    arrived yet: the state a kill leaves a connection in for a moment, which asyncpg
    answers with InternalClientError. A real kill reaches that state only by chance, so the
    message is fed to the driver's protocol (a private attribute) directly."""
    fields = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"
    notice = b"E" + struct.pack("!i", len(fields) + 4) + fields
    delivered = 0
    for holder in store._pool._holders:
        conn = holder._con
        if conn is not None and not conn.is_closed() and holder._in_use is None:
            conn._protocol.data_received(notice)
            delivered += 1
    return delivered


@pytest.mark.postgres
async def test_connections_that_got_a_termination_notice_are_replaced(
    written: tuple[PostgreSQLResultStorage, PostgreSQLEventStorage],
) -> None:
    results, log = written
    assert deliver_termination_notice(results) >= 1
    assert deliver_termination_notice(log) >= 1

    assert result_of(await results.get("a")).result == b"v"  # retried, no error
    assert [s.event.task_id for s in await log.read()] == ["a-0"]  # retried too
    assert deliver_termination_notice(log) >= 1
    with pytest.raises(StorageError, match="InternalClientError") as failed:
        await log.append([event("a", 1)])  # never retried: it may have committed
    assert_one_line_without_password(failed.value)
    await log.append([event("a", 1)])  # the pool gave up the poisoned connection
    assert [s.event.task_id for s in await log.read()] == ["a-0", "a-1"]


@pytest.mark.postgres
async def test_an_append_killed_mid_statement_fails_in_one_line_then_the_next_works(
    server: Server,
) -> None:
    table = server.table("events")
    log = PostgreSQLEventStorage(server.dsn, table)
    await log.open()
    async with server.table_locked(table):
        appending = asyncio.ensure_future(log.append([event("lost", 0)]))

        async def blocked() -> bool:
            return bool(await server.waiting_on_locks())

        await until(blocked, 10, "the append to wait for the table lock")
        assert await server.kill() >= 1
        with pytest.raises(StorageError, match=table) as caught:
            await appending
    assert_one_line_without_password(caught.value)

    await log.append([event("kept", 0)])
    assert [s.event.task_id for s in await log.read()] == ["kept-0"]
    await log.close()


@pytest.mark.postgres
async def test_a_read_killed_mid_statement_is_retried_on_a_fresh_connection(
    server: Server,
) -> None:
    table = server.table("results")
    store = PostgreSQLResultStorage(server.dsn, table)
    await store.open()
    await store.store([result("a")])
    async with server.table_locked(table):
        getting = asyncio.ensure_future(store.get("a"))
        first: set[int] = set()

        async def blocked() -> bool:
            first.update(await server.waiting_on_locks())
            return bool(first)

        await until(blocked, 10, "the get to wait for the table lock")
        assert await server.kill() >= 1

        async def blocked_again() -> bool:
            return bool(await server.waiting_on_locks() - first)

        await until(blocked_again, 10, "the get to wait again on a new connection")
        assert not getting.done()
    assert result_of(await getting).task_id == "a"
    await store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("cls", STORES)
async def test_a_server_that_goes_away_is_a_one_line_error_until_it_is_back(
    cls: type[Store], server: Server
) -> None:
    target = urlsplit(server.dsn)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.up()
    dsn = urlunsplit(target._replace(netloc=f"{target.netloc.rsplit(':', 1)[0]}:{proxy.port}"))
    kind = "results" if cls is PostgreSQLResultStorage else "events"
    store = cls(dsn=dsn, table=server.table(kind))
    await store.open()

    async def write_and_read(n: int) -> int:
        if isinstance(store, PostgreSQLResultStorage):
            await store.store([result(f"t{n}")])
            return len(await store.get_many([f"t{i}" for i in range(n + 1)]))
        await store.append([event("t", n)])
        return len(await store.read())

    try:
        assert await write_and_read(0) == 1
        await proxy.down()
        with pytest.raises(StorageError, match=re.escape(f"127.0.0.1:{proxy.port}")) as caught:
            await write_and_read(1)
        assert_one_line_without_password(caught.value)
        await proxy.up()
        assert await write_and_read(1) == 2  # the pool reconnected by itself
    finally:
        await store.close()
        await proxy.down()
