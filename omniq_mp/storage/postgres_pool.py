"""An asyncpg pool whose failures surface as one-line StorageErrors.

A lost connection (server restart, ``pg_terminate_backend``, network cut) fails the call
that was using it; the pool then replaces every idle connection at its next use, so the
next call works again as soon as the server is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from omniq_mp.dsn import endpoint, redact
from omniq_mp.errors import StorageError
from omniq_mp.extras import require
from omniq_mp.pg import connection_gone, create_pool

__all__ = ["GuardedPool"]

_CLOSE_TIMEOUT = 10.0


class GuardedPool:
    """Connections to ``dsn`` for ``what`` (named in errors with host and port only).

    :param min_size: connections kept open.
    :param max_size: connections at most.
    """

    def __init__(self, dsn: str, what: str, *, min_size: int, max_size: int) -> None:
        self._dsn = dsn
        self._what = what
        self._min_size = min_size
        self._max_size = max_size
        self._pool: Any = None
        pg = require("asyncpg", "postgres", what)
        # Failures meaning the connection (or the server) is gone: after one, every pooled
        # connection is suspect (a server restart kills them all).
        self._lost: tuple[type[BaseException], ...] = (
            *connection_gone(pg),
            pg.InterfaceError,
            pg.exceptions.OperatorInterventionError,  # a cancel, an idle-session timeout
        )
        self._errors: tuple[type[BaseException], ...] = (*self._lost, pg.PostgresError)
        self.unique_violation: type[BaseException] = pg.UniqueViolationError

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._pool is not None

    async def open(self) -> None:
        """Connect ``min_size`` connections; StorageError naming host:port if impossible."""
        if self._pool is None:
            self._pool = await self._new_pool(self._min_size, self._max_size)

    async def close(self) -> None:
        """Close every connection (idempotent); a stuck one is dropped after 10 s."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        failures: tuple[type[BaseException], ...] = (TimeoutError, *self._errors)
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
        except failures:
            pool.terminate()  # a connection stuck on a dead server must not block shutdown

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection of the open pool, failures translated."""
        if self._pool is None:
            raise StorageError(f"{self._what} is not open; call open() first")
        async with self._guard(self._pool) as conn:
            yield conn

    @asynccontextmanager
    async def any_connection(self) -> AsyncIterator[Any]:
        """A connection of the open pool, or of a short-lived one when not open (for
        administrative calls such as a CLI's ``db version``)."""
        if self._pool is not None:
            async with self._guard(self._pool) as conn:
                yield conn
            return
        pool = await self._new_pool(1, 1)
        try:
            async with self._guard(pool) as conn:
                yield conn
        finally:
            pool.terminate()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows of one statement."""
        async with self.connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def _new_pool(self, min_size: int, max_size: int) -> Any:
        return await create_pool(self._dsn, what=self._what, min_size=min_size, max_size=max_size)

    @asynccontextmanager
    async def _guard(self, pool: Any) -> AsyncIterator[Any]:
        try:
            async with pool.acquire() as conn:
                yield conn
        except self._errors as exc:
            if isinstance(exc, self._lost):
                # Replace the idle connections at their next use instead of letting each
                # one fail a call of its own.
                await pool.expire_connections()
            raise StorageError(self._reason(exc)) from exc

    def _reason(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, self._lost):
            text = f"connection lost ({text})"
        where = endpoint(self._dsn, 5432)
        return f"{self._what} at {where}: {text.replace(self._dsn, redact(self._dsn))}"
