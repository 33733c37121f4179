"""Versioned schema migrations of the PostgreSQL queue backend.

Each migration is applied once, in order, and recorded in ``<schema>.schema_version``.
The runner holds a transaction-level advisory lock on the schema's name, so several
supervisors starting at once apply each migration exactly once (the others wait, then see
it recorded); a reader that only checks the version takes the lock shared. A database whose
version is newer than this code knows is refused: old code must not write rows whose
meaning has changed.

To change the schema, append a ``Migration`` with the next version; never edit one that has
shipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omniq_mp.errors import StorageError

__all__ = ["LATEST", "MIGRATIONS", "Migration", "check", "current_version", "migrate"]


@dataclass(frozen=True)
class Migration:
    """One schema change; ``{schema}`` in ``sql`` stands for the schema name."""

    version: int
    name: str
    sql: str


_INITIAL = """
CREATE TABLE {schema}.tasks (
    seq              bigint GENERATED ALWAYS AS IDENTITY,  -- FIFO tie-break
    id               text PRIMARY KEY,
    func_name        text NOT NULL,
    payload          bytea NOT NULL,
    queue            text NOT NULL,
    priority         bigint NOT NULL DEFAULT 0,
    status           text NOT NULL CHECK (status IN
                         ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED', 'DEAD')),
    eta              float8 NOT NULL,           -- the producer's wall clock
    repeat_interval  float8,
    timeout          float8,
    max_retries      integer NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    created_at       float8 NOT NULL,
    started_at       float8,
    finished_at      float8,
    lease_token      text,
    lease_until      float8,                    -- as the claimer's clock gave it
    lease_deadline   float8,                    -- the same moment on this server's clock
    worker_id        text,
    result           bytea,
    error            jsonb,
    unique_key       text,                      -- one unfinished task per key
    max_memory       bigint,
    result_ttl       float8,
    expires_at       float8,
    cancel_requested boolean NOT NULL DEFAULT false,
    crashes          integer NOT NULL DEFAULT 0,
    history          jsonb                      -- every failed attempt's error
);

-- Partial indexes stay as small as the backlog: the claim reads only PENDING rows, in
-- exactly this order, per queue.
CREATE INDEX tasks_claimable ON {schema}.tasks (queue, priority DESC, eta, seq)
    WHERE status = 'PENDING';

CREATE INDEX tasks_leased ON {schema}.tasks (lease_deadline) WHERE status = 'RUNNING';

CREATE UNIQUE INDEX tasks_unique_key ON {schema}.tasks (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'RUNNING');

CREATE INDEX tasks_finished ON {schema}.tasks (status, finished_at)
    WHERE finished_at IS NOT NULL;

CREATE INDEX tasks_expiring ON {schema}.tasks (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE {schema}.workers (
    worker_id    text PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    procs        integer NOT NULL,
    queues       text[] NOT NULL,
    started_at   float8 NOT NULL,
    heartbeat_at float8 NOT NULL,
    details      jsonb NOT NULL DEFAULT '{{}}'::jsonb
);

CREATE TABLE {schema}.schedules (
    id           text PRIMARY KEY,
    func_name    text NOT NULL,
    payload      bytea NOT NULL,
    options      jsonb NOT NULL,
    cron         text NOT NULL,
    tz           text NOT NULL,
    next_run     float8 NOT NULL,
    paused       boolean NOT NULL DEFAULT false,
    last_task_id text,
    created_at   float8 NOT NULL
);

CREATE INDEX schedules_due ON {schema}.schedules (next_run) WHERE NOT paused;
"""

MIGRATIONS: tuple[Migration, ...] = (Migration(1, "initial", _INITIAL),)
LATEST = MIGRATIONS[-1].version

# pg_advisory_xact_lock(int4, int4): this constant ("omnq") plus a hash of the schema name.
_LOCK_CLASS = 0x6F6D6E71


async def current_version(conn: Any, schema: str) -> int:
    """The schema's recorded version; 0 when it has none (not created yet)."""
    table = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_version")
    if table is None:
        return 0
    version = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version")
    return int(version)


def _refuse_newer(schema: str, version: int) -> None:
    if version > LATEST:
        raise StorageError(
            f"PostgreSQL schema {schema} is at version {version}, newer than this omniq_mp "
            f"knows (up to {LATEST}); upgrade omniq_mp"
        )


async def check(conn: Any, schema: str) -> int:
    """The schema's version, which must be exactly LATEST; StorageError otherwise."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared($1, hashtext($2))", _LOCK_CLASS, schema.lower()
        )
        version = await current_version(conn, schema)
    _refuse_newer(schema, version)
    if version < LATEST:
        raise StorageError(
            f"PostgreSQL schema {schema} is at version {version}, this omniq_mp needs "
            f"{LATEST}: run `omniq-mp db upgrade`"
        )
    return version


async def migrate(conn: Any, schema: str) -> list[int]:
    """Apply the migrations ``schema`` lacks, in one transaction; return their versions."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_CLASS, schema.lower()
        )
        version = await current_version(conn, schema)
        _refuse_newer(schema, version)
        pending = [m for m in MIGRATIONS if m.version > version]
        if not pending:
            return []
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_version ("
            "version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in pending:
            await conn.execute(migration.sql.format(schema=schema))
            await conn.execute(
                f"INSERT INTO {schema}.schema_version (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        return [m.version for m in pending]
