"""Task results in PostgreSQL: one row per task, written in batches by upsert.

Several supervisors and producers may share one table: every write is a single statement,
and a result written twice (a retried settlement) simply replaces the first.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from omniq_mp.dsn import endpoint, redact
from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.extras import require
from omniq_mp.models import TaskStatus
from omniq_mp.pg import DEFAULT_DSN, create_pool, identifier
from omniq_mp.results.base import TaskResult, check_terminal

__all__ = ["PostgreSQLResultStorage"]

_WHAT = "PostgreSQL result storage"
_DDL_LOCK = 0x6F6D6E69  # advisory-lock namespace shared by every omniq_mp schema change

_T = TypeVar("_T")


class PostgreSQLResultStorage:
    """Results in one PostgreSQL table, keyed by task id.

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
        table: str = "omniq_results",
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
        self._pool: Any = None
        self._opening = asyncio.Lock()  # two concurrent open() calls make one pool
        t = self.table
        self._schema = (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " task_id text PRIMARY KEY, status text NOT NULL, result bytea, error jsonb,"
            " finished_at double precision NOT NULL, expires_at double precision)",
            f"CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)",
        )
        self._upsert = (
            f"INSERT INTO {t} (task_id, status, result, error, finished_at, expires_at) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[],"
            " $5::float8[], $6::float8[]) "
            "ON CONFLICT (task_id) DO UPDATE SET status = EXCLUDED.status,"
            " result = EXCLUDED.result, error = EXCLUDED.error,"
            " finished_at = EXCLUDED.finished_at, expires_at = EXCLUDED.expires_at"
        )
        # An expired result is as good as purged, even before purge_expired runs.
        self._select = (
            f"SELECT task_id, status, result, error, finished_at, expires_at FROM {t} "
            "WHERE task_id = ANY($1::text[]) AND (expires_at IS NULL OR expires_at >= $2)"
        )

    async def open(self) -> None:
        """Connect and create the table and its index if missing (idempotent).

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
            await self._run("drop", lambda c: c.execute(f"DROP TABLE IF EXISTS {self.table}"))
        finally:
            if not was_open:
                await self.close()

    async def store(self, results: Sequence[TaskResult]) -> None:
        """Upsert ``results`` in one statement; a later result for the same id wins.

        :raises ValueError: a result's status is not terminal (nothing is stored).
        """
        check_terminal(results)
        # One statement cannot update the same row twice, so only an id's last result goes.
        latest = {r.task_id: r for r in results}
        if not latest:
            return
        rows = list(latest.values())
        columns = (
            [r.task_id for r in rows],
            [TaskStatus(r.status).value for r in rows],
            [r.result for r in rows],
            [None if r.error is None else json.dumps(r.error.to_dict()) for r in rows],
            [float(r.finished_at) for r in rows],
            [None if r.expires_at is None else float(r.expires_at) for r in rows],
        )
        await self._run("store", lambda c: c.execute(self._upsert, *columns))

    async def get(self, task_id: str) -> TaskResult | None:
        """The result of ``task_id``, or None (unknown, purged or expired).

        :raises StorageError: the stored row is damaged.
        """
        return (await self.get_many([task_id])).get(task_id)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """The unexpired results among ``task_ids``, by id.

        :raises StorageError: a stored row among them is damaged (rather than reading as
            missing, which would leave a caller waiting for it for ever).
        """
        if not task_ids:
            return {}
        rows = await self._run("get", lambda c: c.fetch(self._select, list(task_ids), time.time()))
        decoded = (self._decode(row) for row in rows)
        return {result.task_id: result for result in decoded}

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Delete the results of ``task_ids``; return how many existed."""
        if not task_ids:
            return 0
        sql = f"DELETE FROM {self.table} WHERE task_id = ANY($1::text[])"
        return _count(await self._run("delete", lambda c: c.execute(sql, list(task_ids))))

    async def purge_expired(self, now: float) -> int:
        """Delete results whose ``expires_at`` is before ``now``; return how many."""
        sql = f"DELETE FROM {self.table} WHERE expires_at < $1"
        return _count(await self._run("purge", lambda c: c.execute(sql, float(now))))

    def _decode(self, row: Any) -> TaskResult:
        try:
            error = None if row["error"] is None else json.loads(row["error"])
            if error is not None and not isinstance(error, dict):
                raise TypeError("error is not a JSON object")
            return TaskResult.from_dict({**row, "error": error})
        except (ValueError, TypeError, KeyError) as exc:
            raise StorageError(
                f"{_WHAT} {self.table}: the stored result of task {row['task_id']!r} "
                f"is damaged: {exc}"
            ) from exc

    async def _run(self, op: str, call: Callable[[Any], Awaitable[_T]]) -> _T:
        # Every statement here is idempotent, so one found a dead pooled connection (the
        # server restarted, or killed it) is tried once more on a fresh one.
        pool = self._pool
        if pool is None:
            raise StorageError(f"{_WHAT} {self.table} is not open")
        asyncpg = require("asyncpg", "postgres", _WHAT)
        failures = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
        for attempt in (1, 2):
            try:
                async with pool.acquire() as conn:
                    return await call(conn)
            except failures as exc:
                if attempt == 1 and _connection_lost(asyncpg, exc):
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


def _count(status: str) -> int:
    """The row count of a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])
