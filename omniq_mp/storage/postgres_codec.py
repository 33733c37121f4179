"""Rows of the PostgreSQL tables <-> :class:`Task`, :class:`Schedule` and :class:`WorkerInfo`.

Column order is defined once, in ``_MAPPING``. JSON values (errors, history, schedule
options, worker details) travel as text and are cast to ``jsonb`` in SQL, so no
connection needs a custom type codec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskError, TaskStatus
from omniq_mp.schedule import Schedule
from omniq_mp.storage.base import WorkerInfo

__all__ = [
    "INSERT_COLUMNS",
    "SCHEDULE_COLUMNS",
    "WORKER_COLUMNS",
    "columns",
    "insert_batches",
    "record_schedule",
    "record_task",
    "record_worker",
    "schedule_values",
    "settlement_params",
    "task_arrays",
    "worker_values",
]

# (column, Task field, SQL type) in table order. ``interval`` is a reserved word in SQL,
# hence ``repeat_interval``.
_MAPPING = (
    ("id", "id", "text"),
    ("func_name", "func_name", "text"),
    ("payload", "payload", "bytea"),
    ("queue", "queue", "text"),
    ("priority", "priority", "bigint"),
    ("status", "status", "text"),
    ("eta", "eta", "float8"),
    ("repeat_interval", "interval", "float8"),
    ("timeout", "timeout", "float8"),
    ("max_retries", "max_retries", "integer"),
    ("attempts", "attempts", "integer"),
    ("created_at", "created_at", "float8"),
    ("started_at", "started_at", "float8"),
    ("finished_at", "finished_at", "float8"),
    ("lease_token", "lease_token", "text"),
    ("lease_until", "lease_until", "float8"),
    ("worker_id", "worker_id", "text"),
    ("result", "result", "bytea"),
    ("error", "error", "jsonb"),
    ("unique_key", "key", "text"),
    ("max_memory", "max_memory", "bigint"),
    ("result_ttl", "result_ttl", "float8"),
    ("expires_at", "expires_at", "float8"),
    ("cancel_requested", "cancel_requested", "boolean"),
    ("crashes", "crashes", "integer"),
    ("history", "history", "jsonb"),
)
INSERT_COLUMNS: tuple[tuple[str, str], ...] = tuple((c, t) for c, _, t in _MAPPING)

# One unnest insert carries at most this many tasks or payload bytes (a bytea[] parameter
# must stay far below PostgreSQL's 1 GB message limit); bigger batches take several
# statements inside the same transaction.
_CHUNK_TASKS = 5_000
_CHUNK_BYTES = 64 * 2**20


def columns(alias: str = "") -> str:
    """The task columns, in ``_MAPPING`` order, optionally qualified by a table alias."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{column}" for column, _, _ in _MAPPING)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def task_arrays(tasks: Sequence[Task]) -> list[list[Any]]:
    """The tasks as one list per column (the parameters of the ``unnest`` insert)."""
    arrays: list[list[Any]] = [[] for _ in _MAPPING]
    for task in tasks:
        values = {name: getattr(task, name) for _, name, _ in _MAPPING}
        values["status"] = task.status.value
        values["error"] = _json(task.error.to_dict()) if task.error is not None else None
        values["history"] = _json([e.to_dict() for e in task.history]) if task.history else None
        for array, (_, name, _) in zip(arrays, _MAPPING, strict=True):
            array.append(values[name])
    return arrays


def record_task(record: Mapping[str, Any]) -> Task:
    """A task from a row selected with :func:`columns`; a malformed row is a StorageError."""
    values = {name: record[column] for column, name, _ in _MAPPING}
    try:
        values["status"] = TaskStatus(values["status"])
        if values["error"] is not None:
            values["error"] = TaskError.from_dict(json.loads(values["error"]))
        history = json.loads(values["history"]) if values["history"] is not None else []
        values["history"] = tuple(TaskError.from_dict(e) for e in history)
        return Task(**values)
    except (ValueError, TypeError, KeyError) as exc:
        raise StorageError(f"task row {record['id']!r} is malformed: {exc}") from exc


def settlement_params(
    chosen: Sequence[Settlement], now: float
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Parameters of the requeue and finish statements, one tuple per settlement."""
    requeue, finish = [], []
    for s in chosen:
        when = s.finished_at if s.finished_at is not None else now
        error = _json(s.error.to_dict()) if s.error is not None else None
        if s.status is TaskStatus.PENDING:
            requeue.append((s.task_id, when, s.eta, int(s.uncharge), int(s.crashed), error))
        else:
            finish.append((s.task_id, when, s.status.value, s.result, int(s.crashed), error))
    return requeue, finish


SCHEDULE_COLUMNS = (
    "id, func_name, payload, options, cron, tz, next_run, paused, last_task_id, created_at"
)


def schedule_values(s: Schedule) -> tuple[Any, ...]:
    """The INSERT parameters of a schedule, in SCHEDULE_COLUMNS order."""
    return (
        s.id,
        s.template.func_name,
        s.template.payload,
        json.dumps(s.template_options()),
        s.cron,
        s.tz,
        s.next_run,
        s.paused,
        s.last_task_id,
        s.created_at,
    )


def record_schedule(r: Mapping[str, Any]) -> Schedule:
    """A schedule from a row selected with SCHEDULE_COLUMNS."""
    try:
        template = Schedule.template_from(r["func_name"], r["payload"], json.loads(r["options"]))
        return Schedule(
            template,
            r["cron"],
            r["tz"],
            r["id"],
            r["next_run"],
            r["paused"],
            r["last_task_id"],
            r["created_at"],
        )
    except (ValueError, TypeError) as exc:
        raise StorageError(f"schedule row {r['id']!r} is malformed: {exc}") from exc


WORKER_COLUMNS = "worker_id, hostname, pid, procs, queues, started_at, heartbeat_at, details"


def worker_values(info: WorkerInfo) -> tuple[Any, ...]:
    """The upsert parameters of a heartbeat, in WORKER_COLUMNS order."""
    return (
        info.worker_id,
        info.hostname,
        info.pid,
        info.procs,
        list(info.queues),
        info.started_at,
        info.heartbeat_at,
        json.dumps(dict(info.details)),
    )


def record_worker(r: Mapping[str, Any]) -> WorkerInfo:
    """A supervisor's record from a row selected with WORKER_COLUMNS."""
    return WorkerInfo(
        r["worker_id"],
        r["hostname"],
        r["pid"],
        r["procs"],
        tuple(r["queues"]),
        r["started_at"],
        r["heartbeat_at"],
        json.loads(r["details"]),
    )


def insert_batches(tasks: Sequence[Task]) -> list[list[Task]]:
    """``tasks`` cut into insert batches bounded by count and payload bytes."""
    chunks: list[list[Task]] = [[]]
    size = 0
    for task in tasks:
        weight = len(task.payload) + len(task.result or b"")
        if chunks[-1] and (len(chunks[-1]) >= _CHUNK_TASKS or size + weight > _CHUNK_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(task)
        size += weight
    return chunks
