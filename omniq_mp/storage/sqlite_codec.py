"""Rows of the ``tasks`` table <-> :class:`~omniq_mp.models.Task`, and the SQL that uses them.

Kept apart from ``sqlite.py`` so the storage logic reads as transactions, not as column
lists. Column order is defined once, in ``COLUMNS``.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from typing import Any

from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskError, TaskStatus
from omniq_mp.schedule import Schedule

__all__ = [
    "COLUMNS",
    "FINISH",
    "INSERT",
    "INSERT_SCHEDULE",
    "REQUEUE",
    "SCHEDULE_COLUMNS",
    "claim_statement",
    "row_schedule",
    "row_task",
    "schedule_row",
    "settlement_rows",
    "task_row",
]

# (column, Task field) in table order; the two names differ only where SQL reads better.
_MAPPING = (
    ("id", "id"),
    ("func_name", "func_name"),
    ("payload", "payload"),
    ("queue", "queue"),
    ("priority", "priority"),
    ("status", "status"),
    ("eta", "eta"),
    ("interval", "interval"),
    ("timeout", "timeout"),
    ("max_retries", "max_retries"),
    ("attempts", "attempts"),
    ("created_at", "created_at"),
    ("started_at", "started_at"),
    ("finished_at", "finished_at"),
    ("lease_token", "lease_token"),
    ("lease_until", "lease_until"),
    ("worker_id", "worker_id"),
    ("result", "result"),
    ("error", "error"),
    ("unique_key", "key"),
    ("max_memory", "max_memory"),
    ("result_ttl", "result_ttl"),
    ("expires_at", "expires_at"),
    ("cancel_requested", "cancel_requested"),
    ("crashes", "crashes"),
    ("history", "history"),
)
COLUMNS = ", ".join(column for column, _ in _MAPPING)
_FIELDS = [field for _, field in _MAPPING]
_GET_FIELDS = operator.attrgetter(*_FIELDS)
_STATUS, _ERROR = _FIELDS.index("status"), _FIELDS.index("error")
_CANCEL, _HISTORY = _FIELDS.index("cancel_requested"), _FIELDS.index("history")
INSERT = f"INSERT INTO tasks ({COLUMNS}) VALUES ({', '.join('?' * len(_MAPPING))})"

# Settling an attempt. A task whose cancellation was requested ends CANCELLED whatever
# its attempt produced (a late result is discarded), so a cancel can never be undone by a
# retry or a result racing with the kill. The error is appended to the history as JSON.
_APPEND_HISTORY = (
    "history = CASE WHEN :error IS NULL THEN history "
    "ELSE json_insert(coalesce(history, '[]'), '$[#]', json(:error)) END"
)
REQUEUE = (
    "UPDATE tasks SET "
    "status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'PENDING' END, "
    "finished_at = CASE WHEN cancel_requested THEN :now END, "
    "expires_at = CASE WHEN cancel_requested THEN :now + result_ttl END, "
    "eta = coalesce(:eta, eta), attempts = attempts - :uncharge, "
    "crashes = crashes + :crashed, error = coalesce(:error, error), "
    f"{_APPEND_HISTORY}, lease_token = NULL, lease_until = NULL, worker_id = NULL "
    "WHERE id = :id"
)
FINISH = (
    "UPDATE tasks SET "
    "status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE :status END, "
    "result = CASE WHEN cancel_requested THEN NULL ELSE :result END, "
    "crashes = crashes + :crashed, error = coalesce(:error, error), "
    f"{_APPEND_HISTORY}, finished_at = :now, expires_at = :now + result_ttl, "
    "lease_token = NULL, lease_until = NULL WHERE id = :id"
)


def claim_statement(queue_count: int) -> str:
    """The claim: one UPDATE over the best due tasks of ``queue_count`` queues, in order.

    Parameters: token, lease_until, worker_id, now, then (queue, now, limit) per queue, then
    limit. Each queue's candidates are one scan of the partial index ``tasks_claimable``
    stopped at ``limit``; only those few rows are sorted across queues.
    """
    candidates = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, {rank} AS rank, priority, eta, seq FROM tasks "
        "WHERE status = 'PENDING' AND queue = ? AND eta <= ? "
        "ORDER BY priority DESC, eta, seq LIMIT ?)"
        for rank in range(queue_count)
    )
    return (
        "UPDATE tasks SET status = 'RUNNING', attempts = attempts + 1, "
        "lease_token = ? || ':' || id, lease_until = ?, worker_id = ?, started_at = ? "
        f"WHERE id IN (SELECT id FROM ({candidates}) "
        "ORDER BY rank, priority DESC, eta, seq LIMIT ?) "
        f"RETURNING {COLUMNS}, seq"
    )


def settlement_rows(
    chosen: Sequence[Settlement], now: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parameters for REQUEUE and FINISH, one dict per settlement."""
    requeue, finish = [], []
    for s in chosen:
        params = {
            "id": s.task_id,
            "now": s.finished_at if s.finished_at is not None else now,
            "crashed": int(s.crashed),
            "error": json.dumps(s.error.to_dict()) if s.error is not None else None,
        }
        if s.status is TaskStatus.PENDING:
            requeue.append({**params, "eta": s.eta, "uncharge": int(s.uncharge)})
        else:
            finish.append({**params, "status": s.status.value, "result": s.result})
    return requeue, finish


def task_row(t: Task) -> tuple[Any, ...]:
    """The INSERT parameters of a task."""
    # One C-level attrgetter call, then fix up the few columns that need encoding: this
    # runs once per enqueued task, so it is kept off the per-field Python path.
    row = list(_GET_FIELDS(t))
    row[_STATUS] = t.status.value
    row[_CANCEL] = int(t.cancel_requested)
    if t.error is not None:
        row[_ERROR] = json.dumps(t.error.to_dict())
    row[_HISTORY] = json.dumps([e.to_dict() for e in t.history]) if t.history else None
    return tuple(row)


def row_task(row: Sequence[Any]) -> Task:
    """A task from a row selected with ``COLUMNS``; a malformed row is a StorageError."""
    values = {field: value for (_, field), value in zip(_MAPPING, row, strict=False)}
    try:
        values["payload"] = bytes(values["payload"])
        values["status"] = TaskStatus(values["status"])
        if values["result"] is not None:
            values["result"] = bytes(values["result"])
        if values["error"]:
            values["error"] = TaskError.from_dict(json.loads(values["error"]))
        history = json.loads(values["history"]) if values["history"] else []
        values["history"] = tuple(TaskError.from_dict(e) for e in history)
        values["cancel_requested"] = bool(values["cancel_requested"])
        return Task(**values)
    except (ValueError, TypeError, KeyError) as exc:
        raise StorageError(f"task row {row[0]!r} is malformed: {exc}") from exc


SCHEDULE_COLUMNS = (
    "id, func_name, payload, options, cron, tz, next_run, paused, last_task_id, created_at"
)


INSERT_SCHEDULE = f"INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ({', '.join('?' * 10)})"


def schedule_row(s: Schedule) -> tuple[Any, ...]:
    """The INSERT parameters of a schedule."""
    return (
        s.id,
        s.template.func_name,
        s.template.payload,
        json.dumps(s.template_options()),
        s.cron,
        s.tz,
        s.next_run,
        int(s.paused),
        s.last_task_id,
        s.created_at,
    )


def row_schedule(r: Sequence[Any]) -> Schedule:
    """A schedule from a row selected with ``SCHEDULE_COLUMNS``."""
    try:
        template = Schedule.template_from(r[1], bytes(r[2]), json.loads(r[3]))
        return Schedule(template, r[4], r[5], r[0], r[6], bool(r[7]), r[8], r[9])
    except (ValueError, TypeError) as exc:
        raise StorageError(f"schedule row {r[0]!r} is malformed: {exc}") from exc
