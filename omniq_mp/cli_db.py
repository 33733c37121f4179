"""``omniq-mp db``: the PostgreSQL queue schema's migrations, applied or inspected."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from omniq_mp.errors import OmniqError
from omniq_mp.pg import DEFAULT_DSN
from omniq_mp.runtime import run

__all__ = ["db"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _connection_options(fn: F) -> F:
    fn = click.option(
        "--schema",
        default="omniq",
        show_default=True,
        help="Schema holding the queue tables.",
    )(fn)
    return click.option(
        "--dsn",
        default=lambda: os.environ.get("OMNIQ_DSN", DEFAULT_DSN),
        show_default="env OMNIQ_DSN, else " + DEFAULT_DSN,
        help="PostgreSQL address, postgresql://user:password@host:port/database.",
    )(fn)


def _run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` on a fresh loop; expected failures become one line and exit code 1."""
    try:
        return run(work())
    except OmniqError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def db() -> None:
    """PostgreSQL queue schema: apply migrations, show the version."""


@db.command()
@_connection_options
def upgrade(dsn: str, schema: str) -> None:
    """Apply pending migrations, then print the version."""
    from omniq_mp.storage.postgres import PostgresStorage

    async def work() -> tuple[list[int], int]:
        store = PostgresStorage(dsn, schema=schema)
        return await store.upgrade(), await store.schema_version()

    applied, version = _run(work)
    if applied:
        done = ", ".join(str(v) for v in applied)
        click.echo(f"schema {schema}: applied migration {done}; now at version {version}")
    else:
        click.echo(f"schema {schema}: already at version {version}")


@db.command()
@_connection_options
def version(dsn: str, schema: str) -> None:
    """Print the schema's version (0: not created yet)."""
    from omniq_mp.storage.postgres import PostgresStorage
    from omniq_mp.storage.postgres_migrations import LATEST

    async def work() -> int:
        return await PostgresStorage(dsn, schema=schema).schema_version()

    current = _run(work)
    note = "up to date" if current == LATEST else f"this omniq_mp knows up to {LATEST}"
    click.echo(f"schema {schema}: version {current} ({note})")
