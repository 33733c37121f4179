"""PostgreSQL connections shared by the queue, result and event backends (asyncpg)."""

from __future__ import annotations

import re
from typing import Any

from omniq_mp.dsn import endpoint, redact
from omniq_mp.errors import StorageError
from omniq_mp.extras import require

__all__ = [
    "DEFAULT_DSN",
    "connection_gone",
    "create_pool",
    "identifier",
    "is_identifier",
    "schema_name",
    "schema_problem",
]

DEFAULT_DSN = "postgresql://postgres@localhost:5432/postgres"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# The keywords PostgreSQL never takes as an unquoted table or schema name (categories R
# and T of ``pg_get_keywords()``). Names are interpolated unquoted, so one of these made
# every statement a syntax error ("syntax error at or near "user"") instead of a refusal.
_RESERVED = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization binary both case cast
    check collate collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp current_user
    default deferrable desc distinct do else end except false fetch for foreign freeze from
    full grant group having ilike in initially inner intersect into is isnull join lateral
    leading left like limit localtime localtimestamp natural not notnull null offset on only
    or order outer overlaps placing primary references returning right select session_user
    similar some symmetric table tablesample then to trailing true union unique user using
    variadic verbose when where window with
    """.split()
)


def is_identifier(name: object) -> bool:
    """Whether ``name`` is a plain SQL identifier: letters, digits and underscores, at
    most 63, not starting with a digit (names are interpolated into statements, so
    anything else is refused rather than quoted)."""
    return isinstance(name, str) and _IDENTIFIER.fullmatch(name) is not None


def identifier(name: str, what: str = "table name") -> str:
    """``name`` if it is a plain SQL identifier (see :func:`is_identifier`) that is not a
    reserved word."""
    problem = _identifier_problem(name)
    if problem is not None:
        raise StorageError(f"{what} {name!r} {problem}; choose another")
    return name


def schema_problem(name: object) -> str | None:
    """Why ``name`` cannot hold omniq_mp's tables, or None: it must be an
    :func:`identifier`, and not one of the server's own schemas (``information_schema``,
    ``pg_*``), where ``db upgrade`` would otherwise create the queue's tables beside the
    system catalog."""
    problem = _identifier_problem(name)
    if problem is None and isinstance(name, str):
        folded = name.lower()  # the server folds unquoted names to lower case
        if folded == "information_schema" or folded.startswith("pg_"):
            return "is reserved for PostgreSQL's own schemas"
    return problem


def _identifier_problem(name: object) -> str | None:
    if not isinstance(name, str) or not is_identifier(name):
        return "must be letters, digits and underscores (at most 63, not starting with a digit)"
    if name.lower() in _RESERVED:  # the server folds unquoted names to lower case
        return "is a reserved word in PostgreSQL"
    return None


def connection_gone(asyncpg: Any) -> tuple[type[BaseException], ...]:
    """The driver's errors that mean a connection died (server restart, shutdown,
    ``pg_terminate_backend``, network cut), as opposed to a statement refused or timed
    out. Check ``TimeoutError`` first where that matters: it is an ``OSError``.

    ``InternalClientError`` is among them: when the server's termination notice reaches an
    idle connection before its end of stream does, asyncpg refuses the next statement with
    "cannot switch to state ...; another operation (2) is in progress".
    """
    return (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.CrashShutdownError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.InternalClientError,
    )


def schema_name(name: str) -> str:
    """``name`` if it can hold omniq_mp's tables (see :func:`schema_problem`)."""
    problem = schema_problem(name)
    if problem is not None:
        raise StorageError(f"schema name {name!r} {problem}; choose another")
    return name


async def create_pool(dsn: str, *, what: str, min_size: int = 1, max_size: int = 10) -> Any:
    """An asyncpg pool on ``dsn``.

    :param what: names the user of the pool in errors, e.g. "PostgreSQL result storage".
    :raises StorageError: one line naming host and port (never the password) when the
        server cannot be reached or refuses the login.
    """
    asyncpg = require("asyncpg", "postgres", what)
    try:
        return await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, command_timeout=60
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = str(exc).replace(dsn, redact(dsn)) or type(exc).__name__
        raise StorageError(
            f"{what}: cannot connect to PostgreSQL at {endpoint(dsn, 5432)}: {reason}"
        ) from None
