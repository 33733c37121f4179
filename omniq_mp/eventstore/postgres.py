"""Events in PostgreSQL: one table whose identity column is the position.

Ordering guarantee. A follower resumes with ``read(after=last_seen)``, so an event must
never become visible after one with a higher position. A plain sequence breaks that with
concurrent writers: transaction A draws 10, B draws 11 and commits first, a follower reads
11, and 10 is skipped forever once A commits. Instead of making readers guess which
positions are still in flight, ``append`` takes a transaction-scoped advisory lock (one
per table) before it draws any position, and PostgreSQL releases it only after the commit
is visible. Writers therefore draw and publish positions strictly in turn, so whatever a
reader sees is a prefix of everything that will ever be committed (a failed append may
leave a number unused, but nothing later fills it). The cost is that appends to one table
are serialised; each is a single short statement carrying a whole batch.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from omniq_mp.dsn import endpoint, redact
from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.extras import require
from omniq_mp.pg import DEFAULT_DSN, create_pool, identifier

__all__ = ["PostgreSQLEventStorage"]

_WHAT = "PostgreSQL event storage"
_DDL_LOCK = 0x6F6D6E69  # advisory-lock namespace shared by every omniq_mp schema change
_APPEND_LOCK = 0x6F6D6E65  # advisory-lock namespace of appends, one key per table

_T = TypeVar("_T")


class PostgreSQLEventStorage:
    """An event log in one PostgreSQL table, shared by any number of processes.

    :param dsn: ``postgresql://user:password@host:port/database``; the password never
        appears in errors.
    :param table: the table's name (letters, digits and underscores; created by ``open``).
    :param min_size: connections the pool keeps open.
    :param max_size: connections the pool opens at most.
    :raises StorageError: ``table`` is not a plain identifier.
    :raises ConfigError: the pool sizes are impossible.
    """

    def __init__(
        self,
        dsn: str = DEFAULT_DSN,
        table: str = "omniq_events",
        *,
        min_size: int = 1,
        max_size: int = 4,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigError(
                f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1, "
                f"got min_size={min_size}, max_size={max_size}"
            )
        self.dsn = dsn
        self.table = identifier(table)
        self.min_size = min_size
        self.max_size = max_size
        self.skipped = 0  # malformed rows passed over by read()
        self._pool: Any = None
        self._opening = asyncio.Lock()  # two concurrent open() calls make one pool
        t = self.table
        self._schema = (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " timestamp double precision NOT NULL, event_type text NOT NULL, task_id text,"
            " body jsonb NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {t}_task ON {t} (task_id, position)",
            f"CREATE INDEX IF NOT EXISTS {t}_time ON {t} (timestamp)",
        )
        # The lock sits in the FROM list, so no row (and no position) exists before it is
        # held; rows leave unnest in list order, so positions follow the batch's order.
        self._append = (
            f"INSERT INTO {t} (timestamp, event_type, task_id, body) "
            "SELECT u.ts, u.event_type, u.task_id, u.body "
            "FROM (SELECT pg_advisory_xact_lock($5::int, $6::int)) AS serialised, "
            "unnest($1::float8[], $2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY"
            " AS u(ts, event_type, task_id, body, n) "
            "ORDER BY u.n"
        )

    async def open(self) -> None:
        """Connect and create the table and its indexes if missing (idempotent).

        :raises StorageError: the server cannot be reached, or the table cannot be created.
        """
        async with self._opening:
            if self._pool is None:
                self._pool = await self._create()

    async def _create(self) -> Any:
        pool = await create_pool(
            self.dsn, what=_WHAT, min_size=self.min_size, max_size=self.max_size
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                # CREATE ... IF NOT EXISTS is not atomic: two sessions creating the same
                # table at once can collide on pg_type's unique index. Serialise them.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, $2)", _DDL_LOCK, _key(self.table)
                )
                for statement in self._schema:
                    await conn.execute(statement)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, Exception):
                raise self._error("open", exc) from exc
            raise
        return pool

    async def close(self) -> None:
        """Close the pool (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def drop(self) -> None:
        """Drop the table (tests and teardown); an open store stays open."""
        was_open = self._pool is not None
        await self.open()
        try:
            await self._run(
                "drop", lambda c: c.execute(f"DROP TABLE IF EXISTS {self.table}"), retry=True
            )
        finally:
            if not was_open:
                await self.close()

    async def append(self, events: Sequence[Event]) -> None:
        """Insert ``events`` in one statement, positions increasing in list order.

        Not retried when the connection dies mid-statement: the batch may have been
        committed, and a second insert would store it twice.
        """
        if not events:
            return
        columns = (
            [float(e.timestamp) for e in events],
            [e.event_type.value for e in events],
            [e.task_id for e in events],
            [json.dumps(e.to_dict()) for e in events],
            _APPEND_LOCK,
            _key(self.table),
        )
        await self._run("append", lambda c: c.execute(self._append, *columns), retry=False)

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        task_id: str | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[StoredEvent]:
        """Events after ``after``, oldest first; a malformed row is skipped and counted in
        ``skipped``."""
        if limit <= 0 or (types is not None and not types):
            return []
        where, params = ["position > $1"], list[Any]([after])
        if task_id is not None:
            params.append(task_id)
            where.append(f"task_id = ${len(params)}")
        if types is not None:
            params.append([t.value for t in types])
            where.append(f"event_type = ANY(${len(params)}::text[])")
        params.append(limit)
        sql = (
            f"SELECT position, body FROM {self.table} WHERE {' AND '.join(where)} "
            f"ORDER BY position LIMIT ${len(params)}"
        )
        rows = await self._run("read", lambda c: c.fetch(sql, *params), retry=True)
        decoded = [_decode(row["position"], row["body"]) for row in rows]
        self.skipped += sum(s is None for s in decoded)
        return [s for s in decoded if s is not None]

    async def purge(self, before: float) -> int:
        """Delete events whose timestamp is before ``before``; return how many."""
        sql = f"DELETE FROM {self.table} WHERE timestamp < $1"
        status = await self._run("purge", lambda c: c.execute(sql, float(before)), retry=True)
        return int(status.rsplit(" ", 1)[-1])

    async def _run(self, op: str, call: Callable[[Any], Awaitable[_T]], *, retry: bool) -> _T:
        # A pooled connection the server killed (restart, pg_terminate_backend) is only
        # found out by using it; an idempotent statement is then tried once more on a
        # fresh connection, and the pool replaces the dead one either way.
        pool = self._pool
        if pool is None:
            raise StorageError(f"{_WHAT} {self.table} is not open")
        asyncpg = require("asyncpg", "postgres", _WHAT)
        failures = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
        for attempt in (1, 2):
            try:
                async with pool.acquire() as conn:
                    return await call(conn)
            except failures as exc:
                if retry and attempt == 1 and _connection_lost(asyncpg, exc):
                    continue
                raise self._error(op, exc) from exc
        raise AssertionError("unreachable")

    def _error(self, op: str, exc: BaseException) -> StorageError:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason.replace(self.dsn, redact(self.dsn))
        return StorageError(
            f"{_WHAT} {self.table} at {endpoint(self.dsn, 5432)}: {op} failed: "
            f"{type(exc).__name__}: {reason}"
        )


def _decode(position: int, body: str) -> StoredEvent | None:
    try:
        return StoredEvent(position, Event.from_dict(json.loads(body)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _connection_lost(asyncpg: Any, exc: BaseException) -> bool:
    """True when ``exc`` says the connection died, not that the statement was refused or
    ran out of time (retrying a timeout would only double the wait)."""
    lost = (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.CrashShutdownError,
    )
    return isinstance(exc, lost) and not isinstance(exc, TimeoutError)


def _key(name: str) -> int:
    """A signed 32-bit advisory-lock key for ``name``."""
    return zlib.crc32(name.encode()) - (1 << 31)
