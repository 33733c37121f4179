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

import json
from collections.abc import Sequence
from typing import Any

from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.pg import DEFAULT_DSN
from omniq_mp.pg_table import PostgresTable, lock_key, row_count

__all__ = ["PostgreSQLEventStorage"]

_WHAT = "PostgreSQL event storage"
_APPEND_LOCK = 0x6F6D6E65  # advisory-lock namespace of appends, one key per table


class PostgreSQLEventStorage(PostgresTable):
    """An event log in one PostgreSQL table, shared by any number of processes.

    :param dsn: ``postgresql://user:password@host:port/database``; the password never
        appears in errors.
    :param table: the table's name (letters, digits and underscores; created by ``open``).
    :param min_size: connections the pool keeps open.
    :param max_size: connections the pool opens at most.
    :param schema: the schema holding the table (created if missing); by default the
        first of the connection's ``search_path``. Settings name the queue's schema, so
        queues in different schemas of one database keep their own.
    :raises StorageError: ``table`` is not a plain identifier.
    :raises ConfigError: the pool sizes are impossible.
    """

    what = _WHAT

    def __init__(
        self,
        dsn: str = DEFAULT_DSN,
        table: str = "omniq_events",
        *,
        min_size: int = 1,
        max_size: int = 4,
        schema: str | None = None,
    ) -> None:
        super().__init__(dsn, table, min_size=min_size, max_size=max_size, schema=schema)
        self.skipped = 0  # malformed rows passed over by read()
        t = self.table
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

    def schema(self) -> tuple[str, ...]:
        """The log table (its identity column is the position) and its indexes."""
        t = self.table
        return (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " timestamp double precision NOT NULL, event_type text NOT NULL, task_id text,"
            " body jsonb NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {self.name}_task ON {t} (task_id, position)",
            f"CREATE INDEX IF NOT EXISTS {self.name}_time ON {t} (timestamp)",
        )

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
            [e.to_json() for e in events],
            _APPEND_LOCK,
            lock_key(self.table),
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
        return row_count(status)


def _decode(position: int, body: str) -> StoredEvent | None:
    try:
        return StoredEvent(position, Event.from_dict(json.loads(body)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
