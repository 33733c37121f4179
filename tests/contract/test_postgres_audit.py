"""PostgreSQL queue backend, as a user who outgrew one machine meets it: what a waiting
client costs the network, and how schema names that PostgreSQL cannot take are refused."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner

from omniq_mp import AsyncOmniQ, Settings
from omniq_mp.cli_db import db
from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskStatus, create_task
from omniq_mp.payload_size import LargePayloadWarning
from omniq_mp.storage.postgres import PostgresStorage
from omniq_mp.storage.postgres_migrations import LATEST
from tests.contract.conftest import MakeStore
from tests.waiting import until

pytestmark = pytest.mark.postgres
asyncpg = pytest.importorskip("asyncpg")

PAYLOAD = 4 * 2**20


class Counted:
    """Bytes the server sent through a :func:`counting_proxy`."""

    def __init__(self) -> None:
        self.from_server = 0


@asynccontextmanager
async def counting_proxy(dsn: str) -> AsyncIterator[tuple[str, Counted]]:
    """A loopback TCP relay to the server of ``dsn``: yields the DSN that goes through it
    and the count of bytes the server has sent back (what crosses the network between a
    client host and the database)."""
    target = urlsplit(dsn)
    counted = Counted()
    relays: set[asyncio.Task[None]] = set()

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await src.read(65536):
                if count:
                    counted.from_server += len(data)
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(target.hostname, target.port or 5432)
        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(relay(reader, writer))
        relays.add(task)
        task.add_done_callback(relays.discard)

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    user = f"{target.username}@" if target.username else ""
    proxied = urlunsplit(target._replace(netloc=f"{user}127.0.0.1:{port}"))
    try:
        yield proxied, counted
    finally:
        server.close()
        for task in list(relays):
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        await server.wait_closed()


def big_task(payload: bytes, task_id: str | None = None) -> Task:
    task = create_task("math.sqrt", eta=time.time() - 1)
    return dataclasses.replace(task, payload=payload, id=task_id or task.id)


# -- a waiting client ----------------------------------------------------------------------


async def test_outcomes_are_read_without_their_payloads(
    make_store: MakeStore, postgres_dsn: str
) -> None:
    # A client's ResultWatcher reads the tasks it waits on at every sweep. Sending a
    # large payload each time made get_result see a finished 100 MiB task some 20 s late
    # (and the server send 100 MiB per sweep).
    supervisor = await make_store()
    task = big_task(os.urandom(PAYLOAD))  # incompressible, as the wire is
    await supervisor.enqueue([task])
    [running] = await supervisor.claim(["default"], 1, time.time(), time.time() + 60, "w")
    async with counting_proxy(postgres_dsn) as (dsn, counted):
        client = PostgresStorage(dsn, schema=supervisor.schema)
        await client.open()
        try:
            before = counted.from_server
            for _ in range(10):
                [seen] = await client.get_outcomes([task.id])
                assert (seen.status, seen.payload) == (TaskStatus.RUNNING, b"")
            assert counted.from_server - before < PAYLOAD // 4
            settled = Settlement(
                task.id, running.lease_token or "", TaskStatus.COMPLETED, result=b"done"
            )
            assert await supervisor.settle([settled]) == [True]
            [finished] = await client.get_outcomes([task.id, "no-such-task"])
            assert dataclasses.replace(finished, payload=task.payload) == await supervisor.get(
                task.id
            )
        finally:
            await client.close()


async def test_a_client_waiting_for_a_result_is_not_sent_the_payload(
    postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    supervisor = AsyncOmniQ(
        Settings(base_dir=tmp_path, backend="postgres", dsn=postgres_dsn, postgres_schema=schema)
    )
    try:
        async with counting_proxy(postgres_dsn) as (dsn, counted):
            client = AsyncOmniQ(
                Settings(base_dir=tmp_path, backend="postgres", dsn=dsn, postgres_schema=schema)
            )
            try:
                with pytest.warns(LargePayloadWarning):  # the point of the test
                    task_id = await client.enqueue(len, os.urandom(PAYLOAD))
                async with supervisor.worker_pool(concurrency=1) as workers:
                    waiting = asyncio.ensure_future(client.get_result(task_id, timeout=60))
                    assert await workers.process_tasks(limit=1) == 1
                    assert await waiting == PAYLOAD
                assert counted.from_server < PAYLOAD // 4
            finally:
                await client.close()
    finally:
        await supervisor.close()
        await PostgresStorage(postgres_dsn, schema=schema).drop()


# -- schema and table names ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["user", "Order", "select"])
def test_db_commands_refuse_a_reserved_word_as_schema_name_in_one_line(
    postgres_dsn: str, name: str
) -> None:
    # Unquoted in every statement, a reserved word made each one a syntax error.
    for command in ("version", "upgrade"):
        result = CliRunner().invoke(db, [command, "--dsn", postgres_dsn, "--schema", name])
        assert result.exit_code == 2, result.output  # a usage error
        last = result.output.strip().splitlines()[-1]
        assert last == f"Error: postgres_schema is a reserved word in PostgreSQL, got {name!r}"
    with pytest.raises(StorageError, match=f"schema name {name!r} is a reserved word"):
        PostgresStorage(postgres_dsn, schema=name)


@pytest.mark.parametrize("name", ["information_schema", "pg_catalog", "PG_audit"])
def test_the_servers_own_schemas_are_refused(postgres_dsn: str, name: str) -> None:
    # `db upgrade --schema information_schema` created the queue's tables in there.
    result = CliRunner().invoke(db, ["version", "--dsn", postgres_dsn, "--schema", name])
    assert result.exit_code == 2, result.output
    assert "reserved for PostgreSQL's own schemas" in result.output
    with pytest.raises(StorageError, match="reserved for PostgreSQL's own schemas"):
        PostgresStorage(postgres_dsn, schema=name)


def test_a_result_or_event_table_named_by_a_reserved_word_is_refused(postgres_dsn: str) -> None:
    from omniq_mp.eventstore.postgres import PostgreSQLEventStorage
    from omniq_mp.results.postgres import PostgreSQLResultStorage

    for make in (PostgreSQLResultStorage, PostgreSQLEventStorage):
        with pytest.raises(StorageError, match="'order' is a reserved word"):
            make(postgres_dsn, table="order")


async def test_names_that_only_look_like_keywords_still_work(
    postgres_dsn: str, schema: str
) -> None:
    # Non-reserved keywords may name a schema; mixed case folds to lower, as in psql.
    for name in ("bigint", "queue", "Jobs"):
        assert PostgresStorage(postgres_dsn, schema=name).schema == name
    mixed = PostgresStorage(postgres_dsn, schema=schema.upper())
    try:
        await mixed.open()
        assert await PostgresStorage(postgres_dsn, schema=schema).schema_version() == LATEST
    finally:
        await mixed.drop()
        await mixed.close()


# -- db version ----------------------------------------------------------------------------


def test_db_version_of_a_missing_schema_says_how_to_create_it(
    postgres_dsn: str, schema: str
) -> None:
    # It said "version 0 (this omniq_mp knows up to 1)": no hint at a mistyped --schema.
    result = CliRunner().invoke(db, ["version", "--dsn", postgres_dsn, "--schema", schema])
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"schema {schema}: version 0 (not created yet: `omniq-mp db upgrade` creates it)\n"
    )
    assert asyncio.run(PostgresStorage(postgres_dsn, schema=schema).schema_version()) == 0


async def test_db_version_of_a_newer_schema_says_to_upgrade_omniq_mp(
    make_store: MakeStore, postgres_dsn: str, schema: str
) -> None:
    await make_store()
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(
            f"INSERT INTO {schema}.schema_version (version, name) VALUES ($1, 'future')",
            LATEST + 1,
        )
    finally:
        await admin.close()
    args = ["version", "--dsn", postgres_dsn, "--schema", schema]
    result = await asyncio.to_thread(CliRunner().invoke, db, args)
    assert result.exit_code == 0, result.output
    assert "newer than this omniq_mp" in result.output and "upgrade omniq_mp" in result.output


async def test_queues_in_two_schemas_keep_their_own_events_and_results(
    postgres_dsn: str, tmp_path: Path
) -> None:
    # The event and result tables lived in the database's public schema, shared by every
    # queue: `omniq-mp events` of one queue listed another's tasks.
    schemas = [f"audit_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    clients = [
        AsyncOmniQ(
            Settings(
                base_dir=tmp_path,
                backend="postgres",
                dsn=postgres_dsn,
                postgres_schema=schema,
                result_storage_type="postgres",
            )
        )
        for schema in schemas
    ]
    try:
        ids = []
        for q in clients:
            task_id = await q.enqueue(abs, -1)
            async with q.worker_pool(concurrency=1) as workers:
                assert await workers.process_tasks(limit=1) == 1
            assert await q.get_result(task_id, timeout=30) == 1
            ids.append(task_id)
        for q, mine, theirs in zip(clients, ids, reversed(ids), strict=True):
            seen = {stored.event.task_id async for stored in q.events()} - {None}
            assert seen == {mine}
            # The copy to the result store is made in the background, after the outcome.
            await until(stored(q, mine), 30, f"the result of {mine} in its result store")
            assert await q.get_stored_result(theirs) is None
    finally:
        for q, schema in zip(clients, schemas, strict=True):
            await q.close()
            await PostgresStorage(postgres_dsn, schema=schema).drop()


def stored(q: AsyncOmniQ, task_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await q.get_stored_result(task_id) is not None

    return check
