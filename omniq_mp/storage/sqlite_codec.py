"""Rows of the ``tasks`` table <-> :class:`~omniq_mp.models.Task`, and the SQL that uses them.

Kept apart from ``sqlite.py`` so the storage logic reads as transactions, not as column
lists. Column order is defined once, in ``COLUMNS``.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from omniq_mp.errors import StorageError
from omniq_mp.models import ErrorKind, Settlement, Task, TaskError, TaskStatus
from omniq_mp.schedule import Schedule
from omniq_mp.storage.base import WorkerInfo
from omniq_mp.storage.side_files import UnreadableSideFile

__all__ = [
    "COLUMNS",
    "FINISH",
    "INSERT",
    "INSERT_SCHEDULE",
    "PAYLOAD",
    "REQUEUE",
    "RESULT",
    "SCHEDULE_COLUMNS",
    "claim_statement",
    "next_due_statement",
    "quarantine_update",
    "row_schedule",
    "row_task",
    "row_worker",
    "schedule_row",
    "settlement_rows",
    "settlement_updates",
    "task_inserts",
    "task_row",
]

# What SQLite may hand back for a column: SQLite does not enforce column types, so a row
# changed behind the library's back can hold anything, and each value is checked on read.
_TEXT: tuple[type, ...] = (str,)
_INT: tuple[type, ...] = (int,)
_REAL: tuple[type, ...] = (int, float)  # REAL columns read back as float; an int is a number too
_BLOB: tuple[type, ...] = (bytes,)
_NULL: tuple[type, ...] = (type(None),)

# (column, Task field, accepted types) in table order; the two names differ only where SQL
# reads better.
_MAPPING: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("id", "id", _TEXT),
    ("func_name", "func_name", _TEXT),
    ("payload", "payload", _BLOB),
    ("queue", "queue", _TEXT),
    ("priority", "priority", _INT),
    ("status", "status", _TEXT),
    ("eta", "eta", _REAL),
    ("interval", "interval", _REAL + _NULL),
    ("timeout", "timeout", _REAL + _NULL),
    ("max_retries", "max_retries", _INT),
    ("attempts", "attempts", _INT),
    ("created_at", "created_at", _REAL),
    ("started_at", "started_at", _REAL + _NULL),
    ("finished_at", "finished_at", _REAL + _NULL),
    ("lease_token", "lease_token", _TEXT + _NULL),
    ("lease_until", "lease_until", _REAL + _NULL),
    ("worker_id", "worker_id", _TEXT + _NULL),
    ("result", "result", _BLOB + _NULL),
    ("error", "error", _TEXT + _NULL),
    ("unique_key", "key", _TEXT + _NULL),
    ("max_memory", "max_memory", _INT + _NULL),
    ("result_ttl", "result_ttl", _REAL + _NULL),
    ("expires_at", "expires_at", _REAL + _NULL),
    ("cancel_requested", "cancel_requested", _INT),
    ("crashes", "crashes", _INT),
    ("history", "history", _TEXT + _NULL),
)
COLUMNS = ", ".join(column for column, _, _ in _MAPPING)
_FIELDS = [field for _, field, _ in _MAPPING]
_GET_FIELDS = operator.attrgetter(*_FIELDS)
_STATUS, _ERROR = _FIELDS.index("status"), _FIELDS.index("error")
_CANCEL, _HISTORY = _FIELDS.index("cancel_requested"), _FIELDS.index("history")
PAYLOAD = _FIELDS.index("payload")  # the payload column's place in a row
_COLUMN_PLACE = {column: i for i, (column, _, _) in enumerate(_MAPPING)}
RESULT = _FIELDS.index("result")  # the result column's place in a row
_INSERT_ALL = f"INSERT INTO tasks ({COLUMNS})"
INSERT = f"{_INSERT_ALL} VALUES ({', '.join('?' * len(_MAPPING))})"

# A task that has never run holds these fields' column defaults (0 or NULL): inserting it
# binds the other 14 columns instead of all 26, which makes a batch of enqueues about half
# again as fast.
_NEVER_RUN = {
    "attempts": 0,
    "started_at": None,
    "finished_at": None,
    "lease_token": None,
    "lease_until": None,
    "worker_id": None,
    "result": None,
    "error": None,
    "expires_at": None,
    "cancel_requested": False,
    "crashes": 0,
    "history": (),
}
_NEVER_RUN_VALUES = tuple(_NEVER_RUN.values())
_GET_RUN_FIELDS = operator.attrgetter(*_NEVER_RUN)
# Options most tasks leave unset. A batch in which one is None throughout writes NULL in
# the statement instead of binding None per row: sqlite3 looks for an adapter for every
# bound None (and bytes), which made binding the Nones of five options cost about a third
# of a batched insert.
_OPTIONAL = ("interval", "timeout", "key", "max_memory", "result_ttl")
_GET_OPTIONAL = operator.attrgetter(*_OPTIONAL)
_ALL_UNSET = (None,) * len(_OPTIONAL)
_GET_STATUS = operator.attrgetter("status")

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


def settlement_updates(
    requeue: Sequence[dict[str, Any]],
    finish: Sequence[dict[str, Any]],
    max_variables: int = 999,
) -> Iterator[tuple[str, Sequence[Any] | Mapping[str, Any]]]:
    """Statements and parameters applying :func:`settlement_rows`' output, each as few
    statements as the parameter limit allows: ``(sql, params)`` for ``execute``.

    One UPDATE ... FROM (VALUES ...) per chunk, not one UPDATE per row: sqlite3 lets go
    of the GIL around every statement step, and in a supervisor whose loop thread is
    busy, taking it back costs a thread wake-up each (about 50 µs here), which made
    settling a batch cost more per row than the fsync that ends it. SQLite before 3.33
    has no UPDATE ... FROM: one statement per row there.
    """
    for template, rows in ((REQUEUE, requeue), (FINISH, finish)):
        if not rows:
            continue
        names = _parameter_names(template)
        if sqlite3.sqlite_version_info < (3, 33):
            for row in rows:
                yield template, row
            continue
        per_statement = max(1, min(_ROWS_PER_INSERT, max_variables // len(names)))
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            params = [row[name] for row in chunk for name in names]
            yield _many_updates(template, len(chunk)), params


@functools.lru_cache(maxsize=4)
def _parameter_names(template: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(re.findall(r":(\w+)", template)))


@functools.lru_cache(maxsize=32)
def _many_updates(template: str, count: int) -> str:
    # The template's ":name" parameters become columns "p_name" of a VALUES table joined
    # on the id (prefixed, so none is ambiguous with a column of tasks).
    names = _parameter_names(template)
    body = re.sub(r":(\w+)", r"v.p_\1", template).replace(" WHERE ", " FROM v WHERE ", 1)
    row = f"({', '.join('?' * len(names))})"
    columns = ", ".join(f"p_{name}" for name in names)
    return f"WITH v({columns}) AS (VALUES {', '.join([row] * count)}) {body}"


_CLAIM_SET = (
    "UPDATE tasks SET status = 'RUNNING', attempts = attempts + 1, "
    "lease_token = ? || ':' || id, lease_until = ?, worker_id = ?, started_at = ?"
)


def _candidates(select: str, names: str, queue_count: int) -> str:
    """``select`` (naming its columns ``names``) of the best due PENDING tasks of
    ``queue_count`` queues, in claim order: queues in the order given, then priority, eta
    and FIFO. Parameters: (queue, now, limit) per queue, then limit. Each queue's
    candidates are one scan of the partial index ``tasks_claimable`` stopped at ``limit``;
    only those few rows are sorted across queues.

    One queue (the common case) needs no ranking across queues: its candidates are the
    index scan itself (the per-queue limit and the total both go to its LIMIT). Without
    the UNION ALL and the outer sort, SQLite spends about 30% less per claimed row (10.9
    against 15.7 µs here).
    """
    due = "WHERE status = 'PENDING' AND queue = ? AND eta <= ? ORDER BY priority DESC, eta, seq"
    if queue_count == 1:
        return f"SELECT {select} FROM tasks {due} LIMIT min(?, ?)"
    per_queue = " UNION ALL ".join(
        f"SELECT * FROM (SELECT {select}, {rank} AS rank, priority, eta, seq FROM tasks "
        f"{due} LIMIT ?)"
        for rank in range(queue_count)
    )
    return f"SELECT {names} FROM ({per_queue}) ORDER BY rank, priority DESC, eta, seq LIMIT ?"


def claim_statement(queue_count: int) -> str:
    """The claim: one UPDATE over the best due tasks of ``queue_count`` queues, in order
    (:func:`_candidates`). Parameters: token, lease_until, worker_id, now, then those of
    the candidates."""
    candidates = _candidates("id", "id", queue_count)
    return f"{_CLAIM_SET} WHERE id IN ({candidates}) RETURNING {COLUMNS}, seq"


def claim_sizes_statement(queue_count: int) -> str:
    """What a claim bounded in bytes needs to know first: for the candidates
    :func:`claim_statement` would take, in its order, each payload's side file name (NULL
    when the payload is in the row) and its length in the row. ``length()`` and
    ``typeof()`` read a BLOB's size from the record header, not the BLOB.

    Parameters: those of the candidates; run in the claim's transaction, so the claim
    that follows finds the same candidates.
    """
    sizes = "CASE WHEN typeof(payload) = 'text' THEN payload END AS file, length(payload) AS size"
    return _candidates(sizes, "file, size", queue_count)


def next_due_statement(queue_count: int) -> str:
    """The earliest ETA after a time among PENDING tasks of ``queue_count`` queues.

    Parameters: the queues, then the time. ``tasks_claimable`` orders each queue by
    priority before eta, so the earliest eta is the least of each priority's first one
    after the time: a recursive walk from one priority to the next lower one finds those
    with one index seek each, where ``min(eta)`` would read every pending entry.
    """
    queues = ", ".join(["(?)"] * queue_count)
    pending = "FROM tasks t WHERE t.status = 'PENDING' AND t.queue = p.queue"
    return (
        f"WITH RECURSIVE q(queue) AS (VALUES {queues}), "
        "p(queue, priority) AS ("
        f"SELECT q.queue, (SELECT t.priority FROM tasks t WHERE t.status = 'PENDING' "
        "AND t.queue = q.queue ORDER BY t.priority DESC LIMIT 1) FROM q "
        f"UNION ALL SELECT p.queue, (SELECT t.priority {pending} "
        "AND t.priority < p.priority ORDER BY t.priority DESC LIMIT 1) "
        "FROM p WHERE p.priority IS NOT NULL) "
        f"SELECT min((SELECT t.eta {pending} AND t.priority = p.priority AND t.eta > ? "
        "ORDER BY t.eta LIMIT 1)) FROM p WHERE p.priority IS NOT NULL"
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


def task_inserts(
    tasks: Sequence[Task], max_variables: int = 999
) -> Iterator[tuple[str, list[Any]]]:
    """INSERT statements and their parameters that store ``tasks``, in order.

    Up to ``_ROWS_PER_INSERT`` rows go in each statement, fewer when their parameters
    would pass ``max_variables`` (the connection's SQLITE_LIMIT_VARIABLE_NUMBER: 32,766
    since SQLite 3.32, 999 before). SQLite then stores them in one step, which costs it
    a quarter less per row than a statement per row.
    """
    rows: list[Sequence[Any]]
    # map() over C-level getters, not generators: a single enqueue comes this way too.
    never_run = all(map(_NEVER_RUN_VALUES.__eq__, map(_GET_RUN_FIELDS, tasks)))
    if never_run and all(map(TaskStatus.PENDING.__eq__, map(_GET_STATUS, tasks))):
        options = set(map(_GET_OPTIONAL, tasks))  # one tuple when the batch shares options
        unset = (
            tuple(map(operator.is_, options.pop(), _ALL_UNSET))
            if len(options) == 1
            else tuple(all(o[i] is None for o in options) for i in range(len(_OPTIONAL)))
        )
        head, row, get = _new_task_insert(unset)
        rows = list(map(get, tasks))
    else:
        head, row = _INSERT_ALL, f"({', '.join('?' * len(_FIELDS))})"
        rows = [task_row(t) for t in tasks]
    width = row.count("?")
    per_statement = max(1, min(_ROWS_PER_INSERT, max_variables // width))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        yield _many_rows(head, row, len(chunk)), list(itertools.chain.from_iterable(chunk))


_ROWS_PER_INSERT = 500  # past this, longer statements gain nothing measurable


@functools.lru_cache(maxsize=16)
def _many_rows(head: str, row: str, count: int) -> str:
    return f"{head} VALUES {', '.join([row] * count)}"


@functools.lru_cache(maxsize=32)
def _new_task_insert(
    unset: tuple[bool, ...],
) -> tuple[str, str, Callable[[Task], tuple[Any, ...]]]:
    """(INSERT head, one row's VALUES, the bound fields' getter) for PENDING tasks that
    have never run and leave the options flagged in ``unset`` (one flag per name of
    ``_OPTIONAL``) None: those columns and the never-run ones keep their defaults (NULL,
    0), and the status is written in the statement."""
    left_out = {name for name, flag in zip(_OPTIONAL, unset, strict=True) if flag}
    columns, values, bound = [], [], []
    for column, name, _ in _MAPPING:
        if name in _NEVER_RUN or name in left_out:
            continue
        columns.append(column)
        if name == "status":
            values.append(f"'{TaskStatus.PENDING.value}'")
        else:
            values.append("?")
            bound.append(name)
    head = f"INSERT INTO tasks ({', '.join(columns)})"
    return head, f"({', '.join(values)})", operator.attrgetter(*bound)


def row_task(row: Sequence[Any]) -> Task:
    """A task from a row selected with ``COLUMNS``; a malformed row is a StorageError."""
    values, problems = _decode(row)
    if problems:
        raise StorageError(f"task row {row[0]!r} is malformed: {'; '.join(problems.values())}")
    try:
        return Task(**values)
    except (ValueError, TypeError) as exc:  # a row with too few columns
        raise StorageError(f"task row {row[0]!r} is malformed: {exc}") from exc


def _decode(row: Sequence[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each column's Task value, and what is wrong with the columns that have none."""
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for (column, name, kinds), value in zip(_MAPPING, row, strict=False):
        # Most columns hold a value of an expected type as is: an exact type check (the
        # sqlite3 module returns exact int, float, str, bytes or None, never a bool)
        # keeps them off the slower checked path, which claims pay once per column.
        if type(value) in kinds and name not in _CONVERTED:
            values[name] = value
            continue
        try:
            values[name] = _column_value(name, kinds, value)
        # ValueError covers JSON and enum errors; RecursionError absurdly nested JSON.
        except (ValueError, TypeError, RecursionError) as exc:
            problems[column] = f"{column}: {exc}"
    return values, problems


_CONVERTED = frozenset({"status", "error", "history", "cancel_requested"})


def _expect(value: Any, kinds: tuple[type, ...], column: str = "") -> None:
    """Raise TypeError unless ``value`` is of one of ``kinds`` (a bool is not a number)."""
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = " or ".join("NULL" if k is type(None) else k.__name__ for k in kinds)
        where = f"{column}: " if column else ""
        raise TypeError(f"{where}{type(value).__name__} where {names} belongs")


def _column_value(name: str, kinds: tuple[type, ...], value: Any) -> Any:
    if name in ("payload", "result") and isinstance(value, str):
        # The name of a side file (side_files.py) that does not exist; one that does was
        # replaced by its bytes before the row got here.
        raise ValueError(f"its side file {value!r} is missing")
    if isinstance(value, UnreadableSideFile):
        raise ValueError(f"{value.reason} (the row keeps it: retry the task once it reads)")
    # Checked before any conversion: bytes(n) of an INTEGER in a BLOB column would make
    # n zero bytes, and text in a number column would only fail later, in a sort.
    _expect(value, kinds)
    if name == "status":
        return TaskStatus(value)
    if name == "error":
        return TaskError.from_dict(json.loads(value)) if value else None
    if name == "history":
        history = json.loads(value) if value else []
        if not isinstance(history, list):
            raise TypeError(f"a JSON {type(history).__name__}, not a list of errors")
        return tuple(TaskError.from_dict(e) for e in history)
    if name == "cancel_requested":
        return bool(value)
    return value


# What a damaged column is set to when its row is quarantined (the rest become NULL): the
# row must read back, so `omniq-mp dead` can show it with the reason it was set aside.
_NEUTRAL: dict[str, Any] = {
    "func_name": "?",
    "payload": b"",
    "queue": "default",
    "priority": 0,
    "eta": 0.0,
    "max_retries": 0,
    "attempts": 0,
    "created_at": 0.0,
    "cancel_requested": 0,
    "crashes": 0,
}


def quarantine_update(row: Sequence[Any], now: float) -> tuple[str, dict[str, Any], str] | None:
    """The UPDATE (statement, parameters, and the reason in words) that sets aside the
    damaged task row ``row``, selected with ``COLUMNS, seq``: DEAD, never claimed again, its
    damaged columns replaced so that it reads back, and an error (also appended to its
    history) naming what was damaged. None when the row decodes after all (it was
    rewritten since it was read)."""
    values, problems = _decode(row)
    if not problems:
        return None
    seq = row[-1]
    reason = "; ".join(problems.values())
    error = TaskError(
        "StorageError",
        f"stored row is damaged: {reason}",
        is_retryable=False,
        max_retries=0,
        kind=ErrorKind.SERIALIZATION.value,
    )
    history = values.get("history", ())
    params: dict[str, Any] = {
        "seq": seq,
        "now": now,
        "error": json.dumps(error.to_dict()),
        "history": json.dumps([e.to_dict() for e in (*history, error)]),
    }
    fixes = ""
    for column in problems:
        if column in ("status", "error", "history"):
            continue  # set below in any case
        if isinstance(row[_COLUMN_PLACE[column]], UnreadableSideFile):
            continue  # the file is there: keep naming it, for a retry
        neutral = f"damaged-row-{seq}" if column == "id" else _NEUTRAL.get(column)
        params[f"fix_{column}"] = neutral
        fixes += f", {column} = :fix_{column}"
    sql = (
        "UPDATE tasks SET status = 'DEAD', error = :error, history = :history, "
        "finished_at = :now, expires_at = NULL, lease_token = NULL, lease_until = NULL, "
        f"cancel_requested = 0{fixes} WHERE seq = :seq"
    )
    return sql, params, reason


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


_SCHEDULE_NAMES = SCHEDULE_COLUMNS.split(", ")
_SCHEDULE_KINDS = (_TEXT, _TEXT, _BLOB, _TEXT, _TEXT, _TEXT, _REAL, _INT, _TEXT + _NULL, _REAL)


def row_schedule(r: Sequence[Any]) -> Schedule:
    """A schedule from a row selected with ``SCHEDULE_COLUMNS``; a malformed row is a
    StorageError naming the schedule."""
    try:
        for column, kinds, value in zip(_SCHEDULE_NAMES, _SCHEDULE_KINDS, r, strict=False):
            _expect(value, kinds, column)
        template = Schedule.template_from(r[1], r[2], json.loads(r[3]))
        return Schedule(template, r[4], r[5], r[0], r[6], bool(r[7]), r[8], r[9])
    except (ValueError, TypeError, IndexError, RecursionError) as exc:
        raise StorageError(f"schedule row {r[0]!r} is malformed: {exc}") from exc


def row_worker(r: Sequence[Any]) -> WorkerInfo:
    """A heartbeat from a ``workers`` row (``SELECT *``); a malformed row is a StorageError
    naming the supervisor."""
    try:
        for column, kinds, value in zip(_WORKER_COLUMNS, _WORKER_KINDS, r, strict=True):
            _expect(value, kinds, column)
        details = json.loads(r[7])
        if not isinstance(details, dict):
            raise TypeError(f"details: a JSON {type(details).__name__}, not an object")
        return WorkerInfo(r[0], r[1], r[2], r[3], tuple(r[4].split(",")), r[5], r[6], details)
    except (ValueError, TypeError, RecursionError) as exc:
        raise StorageError(f"worker row {r[0]!r} is malformed: {exc}") from exc


_WORKER_COLUMNS = ("worker_id", "hostname", "pid", "procs", "queues", "started_at",
                   "heartbeat_at", "details")  # fmt: skip
_WORKER_KINDS = (_TEXT, _TEXT, _INT, _INT, _TEXT, _REAL, _REAL, _TEXT)
