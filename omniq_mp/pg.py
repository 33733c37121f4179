"""PostgreSQL connections shared by the queue, result and event backends (asyncpg)."""

from __future__ import annotations

import re
from typing import Any

from omniq_mp.dsn import endpoint, redact
from omniq_mp.errors import StorageError
from omniq_mp.extras import require

__all__ = ["DEFAULT_DSN", "create_pool", "identifier", "is_identifier"]

DEFAULT_DSN = "postgresql://postgres@localhost:5432/postgres"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def is_identifier(name: object) -> bool:
    """Whether ``name`` is a plain SQL identifier: letters, digits and underscores, at
    most 63, not starting with a digit (names are interpolated into statements, so
    anything else is refused rather than quoted)."""
    return isinstance(name, str) and _IDENTIFIER.fullmatch(name) is not None


def identifier(name: str, what: str = "table name") -> str:
    """``name`` if it is a plain SQL identifier (see :func:`is_identifier`)."""
    if not is_identifier(name):
        raise StorageError(
            f"{what} must be letters, digits and underscores (at most 63), got {name!r}"
        )
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
