"""``omniq-mp db``: the PostgreSQL queue schema's migrations, applied or inspected.

The DSN and schema come from the settings every command builds (``omniq-mp --config``,
then ``OMNIQ_*`` variables), and ``--dsn``/``--schema`` win over both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from omniq_mp.cli_common import Dsn, NonEmptyText, handles_errors, settings_from
from omniq_mp.pg import DEFAULT_DSN
from omniq_mp.runtime import run

__all__ = ["db"]

F = TypeVar("F", bound=Callable[..., Any])


def _connection_options(fn: F) -> F:
    fn = click.option(
        "--schema",
        type=NonEmptyText(),
        default=None,
        help="Schema holding the queue tables [env OMNIQ_POSTGRES_SCHEMA; default omniq].",
    )(fn)
    return click.option(
        "--dsn",
        type=Dsn(),
        default=None,
        help="PostgreSQL address, postgresql://user:password@host:port/database "
        f"[env OMNIQ_DSN; default {DEFAULT_DSN}].",
    )(fn)


def _target(dsn: str | None, schema: str | None) -> tuple[str, str]:
    """The DSN and schema to work on: the options, over ``OMNIQ_*``, over the config file."""
    settings = settings_from(dsn=dsn, postgres_schema=schema)
    return settings.postgres_dsn, settings.postgres_schema


@click.group()
def db() -> None:
    """PostgreSQL queue schema: apply migrations, show the version."""


@db.command()
@_connection_options
@handles_errors
def upgrade(dsn: str | None, schema: str | None) -> None:
    """Apply pending migrations, then print the version."""
    from omniq_mp.storage.postgres import PostgresStorage

    url, name = _target(dsn, schema)

    async def work() -> tuple[list[int], int]:
        store = PostgresStorage(url, schema=name)
        return await store.upgrade(), await store.schema_version()

    applied, version = run(work())
    if applied:
        done = ", ".join(str(v) for v in applied)
        click.echo(f"schema {name}: applied migration {done}; now at version {version}")
    else:
        click.echo(f"schema {name}: already at version {version}")


@db.command()
@_connection_options
@handles_errors
def version(dsn: str | None, schema: str | None) -> None:
    """Print the schema's version (0: not created yet)."""
    from omniq_mp.storage.postgres import PostgresStorage
    from omniq_mp.storage.postgres_migrations import LATEST

    url, name = _target(dsn, schema)

    async def work() -> int:
        return await PostgresStorage(url, schema=name).schema_version()

    current = run(work())
    # Say what to do: a missing schema is most often a mistyped --schema or a first start.
    if current == 0:
        click.echo(f"schema {name}: version 0 (not created yet: `omniq-mp db upgrade` creates it)")
        return
    if current < LATEST:
        note = f"this omniq_mp needs {LATEST}: run `omniq-mp db upgrade`"
    elif current > LATEST:
        note = f"newer than this omniq_mp, which knows up to {LATEST}: upgrade omniq_mp"
    else:
        note = "up to date"
    click.echo(f"schema {name}: version {current} ({note})")
