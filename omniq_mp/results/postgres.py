"""Task results in PostgreSQL: one row per task, written in batches by upsert.

Several supervisors and producers may share one table: every write is a single statement,
and a result written twice (a retried settlement) simply replaces the first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from omniq_mp.errors import StorageError
from omniq_mp.models import TaskStatus
from omniq_mp.pg import DEFAULT_DSN
from omniq_mp.pg_table import PostgresTable, row_count
from omniq_mp.results.base import TaskResult, check_terminal

__all__ = ["PostgreSQLResultStorage"]

_WHAT = "PostgreSQL result storage"


class PostgreSQLResultStorage(PostgresTable):
    """Results in one PostgreSQL table, keyed by task id.

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
        table: str = "omniq_results",
        *,
        min_size: int = 1,
        max_size: int = 4,
        schema: str | None = None,
    ) -> None:
        super().__init__(dsn, table, min_size=min_size, max_size=max_size, schema=schema)
        t = self.table
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

    def schema(self) -> tuple[str, ...]:
        """The results table, keyed by task id, and an index for purging."""
        t = self.table
        return (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " task_id text PRIMARY KEY, status text NOT NULL, result bytea, error jsonb,"
            " finished_at double precision NOT NULL, expires_at double precision)",
            f"CREATE INDEX IF NOT EXISTS {self.name}_expires_at ON {t} (expires_at)",
        )

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
        return row_count(await self._run("delete", lambda c: c.execute(sql, list(task_ids))))

    async def purge_expired(self, now: float) -> int:
        """Delete results whose ``expires_at`` is before ``now``; return how many."""
        sql = f"DELETE FROM {self.table} WHERE expires_at < $1"
        return row_count(await self._run("purge", lambda c: c.execute(sql, float(now))))

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
