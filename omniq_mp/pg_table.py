"""One PostgreSQL table behind an asyncpg pool: what the result and event stores share.

Opening creates the table under an advisory lock (``CREATE ... IF NOT EXISTS`` is not
atomic: two sessions creating one table at once can collide on ``pg_type``). Statements
run through :meth:`PostgresTable._run`, which turns driver errors into one-line
``StorageError`` messages without the DSN's password and tries an idempotent statement
once more when its pooled connection turns out to be dead.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from omniq_mp.dsn import endpoint, redact
from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.extras import require
from omniq_mp.pg import connection_gone, create_pool, identifier, schema_name

__all__ = ["PostgresTable"]

_DDL_LOCK = 0x6F6D6E69  # advisory-lock namespace shared by every omniq_mp schema change

_T = TypeVar("_T")


class PostgresTable:
    """Base of a store kept in one table.

    Subclasses set ``what`` (names the store in errors) and return their DDL from
    :meth:`schema`.

    ``schema`` puts the table in that schema (created if missing), as the queue of a
    PostgreSQL backend keeps its own tables; without it the table goes where the
    connection's ``search_path`` says. ``table`` is the qualified name statements use,
    ``name`` the bare one (indexes are named after it, and live beside their table).

    :raises StorageError: ``table`` or ``schema`` is not a plain identifier.
    :raises ConfigError: the pool sizes are impossible.
    """

    what = "PostgreSQL storage"

    def __init__(
        self, dsn: str, table: str, *, min_size: int, max_size: int, schema: str | None = None
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigError(
                f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1, "
                f"got min_size={min_size}, max_size={max_size}"
            )
        self.dsn = dsn
        self.name = identifier(table)
        self.db_schema = None if schema is None else schema_name(schema)
        self.table = self.name if schema is None else f"{self.db_schema}.{self.name}"
        self.min_size = min_size
        self.max_size = max_size
        self._pool: Any = None
        self._opening = asyncio.Lock()  # two concurrent open() calls make one pool

    def schema(self) -> Sequence[str]:
        """The statements that create the table and its indexes if missing."""
        raise NotImplementedError

    async def open(self) -> None:
        """Connect and create the table and its indexes if missing (idempotent).

        :raises StorageError: the server cannot be reached, or the table cannot be created.
        """
        async with self._opening:
            if self._pool is None:
                self._pool = await self._create()

    async def _create(self) -> Any:
        pool = await create_pool(
            self.dsn, what=self.what, min_size=self.min_size, max_size=self.max_size
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, $2)", _DDL_LOCK, lock_key(self.table)
                )
                if self.db_schema is not None:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.db_schema}")
                for statement in self.schema():
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

    async def _run(
        self, op: str, call: Callable[[Any], Awaitable[_T]], *, retry: bool = True
    ) -> _T:
        # A pooled connection the server killed (restart, pg_terminate_backend) is only
        # found out by using it. The pool then replaces its idle connections at their next
        # use (a restart killed them all), and an idempotent statement (retry=True) is tried
        # once more on a fresh connection.
        pool = self._pool
        if pool is None:
            raise StorageError(f"{self.what} {self.table} is not open")
        asyncpg = require("asyncpg", "postgres", self.what)
        gone = connection_gone(asyncpg)
        failures = (*gone, asyncpg.PostgresError, asyncpg.InterfaceError)
        for attempt in (1, 2):
            try:
                async with pool.acquire() as conn:
                    return await call(conn)
            except failures as exc:
                # A timeout is an OSError too, but retrying it would only double the wait.
                lost = isinstance(exc, gone) and not isinstance(exc, TimeoutError)
                if lost:
                    await pool.expire_connections()
                if retry and attempt == 1 and lost:
                    continue
                raise self._error(op, exc) from exc
        raise AssertionError("unreachable")

    def _error(self, op: str, exc: BaseException) -> StorageError:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason.replace(self.dsn, redact(self.dsn))
        return StorageError(
            f"{self.what} {self.table} at {endpoint(self.dsn, 5432)}: {op} failed: "
            f"{type(exc).__name__}: {reason}"
        )


def lock_key(name: str) -> int:
    """A signed 32-bit advisory-lock key for ``name``."""
    return zlib.crc32(name.encode()) - (1 << 31)


def row_count(status: str) -> int:
    """The row count of a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])
