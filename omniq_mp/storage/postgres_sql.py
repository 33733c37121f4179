"""The SQL of the PostgreSQL queue backend, built for one schema.

Kept apart from ``postgres.py`` so the storage class reads as transactions, not as SQL.
Every statement names its tables with the schema (``<schema>.tasks``); the schema name has
been checked by :func:`omniq_mp.pg.identifier`, which is why it may be interpolated.

Lease deadlines live on the database clock (``lease_deadline``); a caller's lease time
``x`` becomes ``DB_NOW + (x - caller_clock)``, where ``caller_clock`` is the caller's
wall clock read just before the statement is sent (see ``PostgresStorage``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from omniq_mp.storage.postgres_codec import (
    INSERT_COLUMNS,
    SCHEDULE_COLUMNS,
    WORKER_COLUMNS,
    columns,
)

__all__ = ["ANY_CONFLICT", "DB_NOW", "KEY_CONFLICT", "Statements", "channel_for"]

# Epoch seconds on the database server's clock, read when the expression is evaluated.
DB_NOW = "extract(epoch FROM clock_timestamp())::float8"

# The notification channel is an identifier: at most 63 bytes.
_CHANNEL_LIMIT = 63


def channel_for(schema: str) -> str:
    """The LISTEN/NOTIFY channel announcing new work in ``schema``.

    Lower case because an unquoted schema name is folded to lower case by the server,
    while ``pg_notify`` takes the channel as a case-sensitive string.
    """
    name = f"omniq_work_{schema.lower()}"
    if len(name) <= _CHANNEL_LIMIT:
        return name
    return "omniq_work_" + hashlib.sha1(schema.lower().encode()).hexdigest()[:32]


_UNFINISHED = "status IN ('PENDING', 'RUNNING')"
# Queue filter on parameter $2: a list of names, or NULL for every queue.
_IN_QUEUES = "($2::text[] IS NULL OR queue = ANY($2::text[]))"

# A key held by an unfinished task: the arbiter of enqueue's ON CONFLICT (it names the
# partial unique index tasks_unique_key by its columns and predicate).
KEY_CONFLICT = f"ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND {_UNFINISHED} DO NOTHING"
ANY_CONFLICT = "ON CONFLICT DO NOTHING"

# Settling an attempt. A task whose cancellation was requested ends CANCELLED whatever
# its attempt produced (a late result is discarded), so a cancel can never be undone by a
# retry or a result racing with the kill. The error is appended to the history.
_APPEND_HISTORY = (
    "history = CASE WHEN $6::jsonb IS NULL THEN history "
    "ELSE coalesce(history, '[]'::jsonb) || jsonb_build_array($6::jsonb) END"
)


@dataclass(frozen=True)
class Statements:
    """Every statement of the backend, for one schema."""

    schema: str

    @property
    def tasks(self) -> str:
        """The qualified tasks table."""
        return f"{self.schema}.tasks"

    def insert(self, conflict: str) -> str:
        """Insert a batch given as one array per column (``unnest``: one statement for
        thousands of tasks), in the batch's order so ``seq`` keeps FIFO order.

        Parameters: one array per column of INSERT_COLUMNS, then the caller's clock.
        """
        count = len(INSERT_COLUMNS)
        # JSON travels as text and is cast here, so no connection needs a jsonb codec.
        arrays = ", ".join(
            f"${i + 1}::{'text' if sqltype == 'jsonb' else sqltype}[]"
            for i, (_, sqltype) in enumerate(INSERT_COLUMNS)
        )
        names = ", ".join(name for name, _ in INSERT_COLUMNS)
        values = ", ".join(
            f"r.{name}::jsonb" if sqltype == "jsonb" else f"r.{name}"
            for name, sqltype in INSERT_COLUMNS
        )
        return (
            f"INSERT INTO {self.tasks} ({names}, lease_deadline) "
            f"SELECT {values}, {DB_NOW} + (r.lease_until - ${count + 1}::float8) "
            f"FROM unnest({arrays}) WITH ORDINALITY AS r({names}, ord) ORDER BY r.ord "
            f"{conflict} RETURNING id"
        )

    @property
    def key_holders(self) -> str:
        """``(unique_key, id)`` of unfinished tasks holding any of the keys ``$1``."""
        return (
            f"SELECT unique_key, id FROM {self.tasks} "
            f"WHERE unique_key = ANY($1::text[]) AND {_UNFINISHED}"
        )

    @property
    def claim(self) -> str:
        """The claim: ONE UPDATE over the best due PENDING tasks of the queues ``$5``.

        Each queue's candidates are one scan of the partial index ``tasks_claimable`` in
        index order, stopped at the limit; ``FOR UPDATE SKIP LOCKED`` passes over rows
        another claimer is taking, so claimers never wait for or share a task. Only those
        few candidates are then ranked across queues (first queue first). The first
        ``$9`` of them come whatever their size; a running sum of the payloads of those
        after them keeps them within ``$8`` bytes (NULL: no bound). ``octet_length``
        reads a TOASTed value's size without fetching it. Candidates left out were
        locked for this statement only: claims that meet them meanwhile pass over them.

        Parameters: token, lease_until, worker_id, now, queues, limit, caller clock,
        max_bytes, min_tasks.
        """
        order = "q.rank, c.priority DESC, c.eta, c.seq"
        return (
            f"UPDATE {self.tasks} AS t SET status = 'RUNNING', attempts = t.attempts + 1, "
            "lease_token = $1::text || ':' || t.id, lease_until = $2::float8, "
            f"lease_deadline = {DB_NOW} + ($2::float8 - $7::float8), "
            "worker_id = $3, started_at = $4 "
            "WHERE t.id IN (SELECT b.id FROM ("
            "SELECT a.id, a.place, sum(CASE WHEN a.place > $9::int THEN a.size ELSE 0 END) "
            "OVER (ORDER BY a.place) AS upto FROM ("
            "SELECT c.id, c.size, row_number() OVER (ORDER BY "
            f"{order}) AS place FROM unnest($5::text[]) WITH ORDINALITY AS q(name, rank) "
            "CROSS JOIN LATERAL ("
            f"SELECT id, priority, eta, seq, octet_length(payload) AS size FROM {self.tasks} "
            "WHERE status = 'PENDING' AND queue = q.name AND eta <= $4 "
            "ORDER BY priority DESC, eta, seq LIMIT $6 FOR UPDATE SKIP LOCKED) AS c "
            f"ORDER BY {order} LIMIT $6) AS a) AS b "
            "WHERE b.place <= $9::int OR $8::bigint IS NULL OR b.upto <= $8::bigint) "
            f"RETURNING {columns('t')}, t.seq"
        )

    @property
    def next_due(self) -> str:
        """The earliest ETA after ``$2`` among PENDING tasks of the queues ``$1``: for each
        queue, a recursive walk down its priorities in ``tasks_claimable`` takes each
        priority's first ETA after ``$2`` with one index seek (``min(eta)`` would read
        every pending entry, as the index orders by priority before eta)."""
        pending = f"FROM {self.tasks} t WHERE t.status = 'PENDING' AND t.queue = p.queue"
        return (
            "WITH RECURSIVE p(queue, priority) AS ("
            f"SELECT q.name, (SELECT t.priority FROM {self.tasks} t "
            "WHERE t.status = 'PENDING' AND t.queue = q.name "
            "ORDER BY t.priority DESC LIMIT 1) FROM unnest($1::text[]) AS q(name) "
            f"UNION ALL SELECT p.queue, (SELECT t.priority {pending} "
            "AND t.priority < p.priority ORDER BY t.priority DESC LIMIT 1) "
            "FROM p WHERE p.priority IS NOT NULL) "
            f"SELECT min((SELECT t.eta {pending} AND t.priority = p.priority "
            "AND t.eta > $2::float8 ORDER BY t.eta LIMIT 1)) FROM p WHERE p.priority IS NOT NULL"
        )

    @property
    def lock_running(self) -> str:
        """Lease tokens and cancel requests of those of ``$1`` that are RUNNING, locked
        until the settlement transaction ends so nothing changes them under it."""
        return (
            f"SELECT id, lease_token, cancel_requested FROM {self.tasks} "
            "WHERE id = ANY($1::text[]) AND status = 'RUNNING' FOR UPDATE"
        )

    @property
    def requeue(self) -> str:
        """Run again at ``$3`` (or keep the eta). Parameters: id, now, eta, uncharge,
        crashed, error."""
        return (
            f"UPDATE {self.tasks} SET "
            "status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'PENDING' END, "
            "finished_at = CASE WHEN cancel_requested THEN $2::float8 END, "
            "expires_at = CASE WHEN cancel_requested THEN $2::float8 + result_ttl END, "
            "eta = coalesce($3, eta), attempts = attempts - $4, crashes = crashes + $5, "
            f"error = coalesce($6::jsonb, error), {_APPEND_HISTORY}, "
            "lease_token = NULL, lease_until = NULL, lease_deadline = NULL, worker_id = NULL "
            "WHERE id = $1"
        )

    @property
    def finish(self) -> str:
        """End the task. Parameters: id, now, status, result, crashed, error."""
        return (
            f"UPDATE {self.tasks} SET "
            "status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE $3 END, "
            "result = CASE WHEN cancel_requested THEN NULL ELSE $4::bytea END, "
            f"crashes = crashes + $5, error = coalesce($6::jsonb, error), {_APPEND_HISTORY}, "
            "finished_at = $2::float8, expires_at = $2::float8 + result_ttl, "
            "lease_token = NULL, lease_until = NULL, lease_deadline = NULL "
            "WHERE id = $1"
        )

    @property
    def extend(self) -> str:
        """Renew the leases ``$1``/``$2`` (ids, tokens) to ``$3``; returns the ids renewed.
        Parameters: ids, tokens, lease_until, caller clock."""
        return (
            f"UPDATE {self.tasks} AS t SET lease_until = $3, "
            f"lease_deadline = {DB_NOW} + ($3::float8 - $4::float8) "
            "FROM unnest($1::text[], $2::text[]) AS l(id, token) "
            "WHERE t.id = l.id AND t.lease_token = l.token AND t.status = 'RUNNING' "
            "RETURNING t.id"
        )

    @property
    def expired(self) -> str:
        """RUNNING tasks whose deadline passed on the database clock, shifted by how far
        the caller's ``now`` is from its own clock. Parameters: now, caller clock, limit.

        The clock is read once, in a sub-select, so the index tasks_leased can serve the
        comparison (a volatile expression per row could not).
        """
        return (
            f"SELECT {self._columns} FROM {self.tasks} WHERE status = 'RUNNING' "
            f"AND lease_deadline < (SELECT {DB_NOW} + ($1::float8 - $2::float8)) "
            "ORDER BY lease_deadline LIMIT $3"
        )

    def select(self, where: str) -> str:
        """Tasks matching ``where`` (and whatever follows it)."""
        return f"SELECT {self._columns} FROM {self.tasks} {where}"

    @property
    def outcomes(self) -> str:
        """The tasks ``$1`` (ids) with an empty payload in place of theirs."""
        cols = ", ".join(
            "''::bytea AS payload" if column == "payload" else column
            for column in columns().split(", ")
        )
        return f"SELECT {cols} FROM {self.tasks} WHERE id = ANY($1::text[])"

    @property
    def cancel_requests(self) -> str:
        """Those of the ids ``$1`` that are RUNNING with a cancellation requested."""
        return (
            f"SELECT id FROM {self.tasks} WHERE id = ANY($1::text[]) "
            "AND cancel_requested AND status = 'RUNNING'"
        )

    @property
    def list_tasks(self) -> str:
        """Up to ``$3`` tasks in status ``$1`` (of the queues ``$2``; NULL: all), newest
        first."""
        return self.select(
            f"WHERE status = $1 AND {_IN_QUEUES} "
            "ORDER BY coalesce(finished_at, created_at) DESC LIMIT $3"
        )

    @property
    def queue_names(self) -> str:
        """Every queue name in use, sorted."""
        return f"SELECT DISTINCT queue FROM {self.tasks} ORDER BY queue"

    @property
    def completed_since(self) -> str:
        """How many tasks (of the queues ``$2``; NULL: all) completed at or after ``$1``."""
        return (
            f"SELECT count(*) FROM {self.tasks} WHERE status = 'COMPLETED' "
            f"AND finished_at >= $1 AND {_IN_QUEUES}"
        )

    @property
    def cancel(self) -> str:
        """Cancel ``$1`` if PENDING, flag it if RUNNING; returns the row if it changed."""
        return (
            f"UPDATE {self.tasks} SET "
            "status = CASE WHEN status = 'PENDING' THEN 'CANCELLED' ELSE status END, "
            "finished_at = CASE WHEN status = 'PENDING' THEN $2::float8 ELSE finished_at END, "
            "expires_at = CASE WHEN status = 'PENDING' THEN $2::float8 + result_ttl "
            "ELSE expires_at END, "
            "cancel_requested = cancel_requested OR status = 'RUNNING' "
            f"WHERE id = $1 AND {_UNFINISHED} RETURNING {self._columns}"
        )

    def revive_candidates(self, where: str) -> str:
        """``(id, unique_key)`` of the finished tasks matching ``where`` (on ``t``), first
        enqueued first, locked until the revive's transaction ends."""
        return f"SELECT t.id, t.unique_key FROM {self.tasks} AS t {where} ORDER BY t.seq FOR UPDATE"

    @property
    def revive(self) -> str:
        """Re-queue the tasks ``$2`` with fresh budgets, due at ``$1``."""
        return (
            f"UPDATE {self.tasks} SET status = 'PENDING', attempts = 0, crashes = 0, "
            "eta = $1, finished_at = NULL, expires_at = NULL, cancel_requested = false "
            "WHERE id = ANY($2::text[])"
        )

    def delete(self, where: str, limit_param: str) -> str:
        """Delete up to ``limit_param`` rows matching ``where``; returns how many."""
        return (
            f"WITH gone AS (DELETE FROM {self.tasks} WHERE id IN ("
            f"SELECT id FROM {self.tasks} {where} LIMIT {limit_param} FOR UPDATE SKIP LOCKED"
            ") RETURNING 1) SELECT count(*) FROM gone"
        )

    @property
    def stats(self) -> str:
        """Counts per status: total, due and retrying (PENDING only), over the queues
        ``$2`` (NULL: all). ``$1`` is now."""
        return (
            "SELECT status, count(*), "
            "count(*) FILTER (WHERE status = 'PENDING' AND eta <= $1), "
            "count(*) FILTER (WHERE status = 'PENDING' AND attempts > 0) "
            f"FROM {self.tasks} WHERE {_IN_QUEUES} GROUP BY status"
        )

    @property
    def notify(self) -> str:
        """Wake the supervisors listening on this schema's channel (sent at commit)."""
        return f"SELECT pg_notify('{channel_for(self.schema)}', '')"

    @property
    def notify_due(self) -> str:
        """:attr:`notify` with a payload ($1): the earliest ETA of the tasks announced, as
        text, so that listeners also claim when that time comes."""
        return f"SELECT pg_notify('{channel_for(self.schema)}', $1)"

    @property
    def _columns(self) -> str:
        return columns()

    # -- schedules and workers ---------------------------------------------------------------

    @property
    def insert_schedule(self) -> str:
        """Store a new schedule (parameters in SCHEDULE_COLUMNS order)."""
        marks = ", ".join(f"${i + 1}" for i in range(10))
        return f"INSERT INTO {self.schema}.schedules ({SCHEDULE_COLUMNS}) VALUES ({marks})"

    def select_schedules(self, where: str) -> str:
        """Schedules matching ``where``."""
        return f"SELECT {SCHEDULE_COLUMNS} FROM {self.schema}.schedules {where}"

    @property
    def set_paused(self) -> str:
        """Pause (``$2``) schedule ``$1``; returns it."""
        return (
            f"UPDATE {self.schema}.schedules SET paused = $2 WHERE id = $1 "
            f"RETURNING {SCHEDULE_COLUMNS}"
        )

    @property
    def remove_schedule(self) -> str:
        """Delete schedule ``$1``; returns its id."""
        return f"DELETE FROM {self.schema}.schedules WHERE id = $1 RETURNING id"

    @property
    def due_schedules(self) -> str:
        """Unpaused schedules due at ``$1``, locked. A second supervisor waits for the
        lock, then re-reads the row and finds ``next_run`` moved on: each due time fires
        once. (Skipping locked rows instead would let a supervisor run ahead and fire a
        later due time in place of the one being fired.)"""
        return self.select_schedules(
            "WHERE NOT paused AND next_run <= $1 ORDER BY next_run FOR UPDATE"
        )

    @property
    def schedule_fired(self) -> str:
        """Move schedule ``$1`` on to ``$2`` after it created task ``$3``."""
        return f"UPDATE {self.schema}.schedules SET next_run = $2, last_task_id = $3 WHERE id = $1"

    @property
    def heartbeat(self) -> str:
        """Insert or replace a supervisor's record (parameters in WORKER_COLUMNS order)."""
        updates = ", ".join(
            f"{c} = EXCLUDED.{c}" for c in WORKER_COLUMNS.split(", ") if c != "worker_id"
        )
        return (
            f"INSERT INTO {self.schema}.workers ({WORKER_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) "
            f"ON CONFLICT (worker_id) DO UPDATE SET {updates}"
        )

    @property
    def remove_worker(self) -> str:
        """Forget supervisor ``$1``."""
        return f"DELETE FROM {self.schema}.workers WHERE worker_id = $1"

    @property
    def workers(self) -> str:
        """Supervisors heard from at or after ``$1``."""
        return (
            f"SELECT {WORKER_COLUMNS} FROM {self.schema}.workers "
            "WHERE heartbeat_at >= $1 ORDER BY worker_id"
        )
