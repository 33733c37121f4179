"""The file store's entries and names: tasks and schedules <-> JSON bytes, and strings <->
safe file names.

Kept apart from ``file.py`` so the storage logic reads as operations on folders, not as
field-by-field conversions. Decoding is driven by the type hints of the dataclasses, so a
field added to :class:`~omniq_mp.models.Task` is stored and type-checked without an edit
here; a field missing from an entry takes its dataclass default (an entry written before
the field existed stays readable), while a field of the wrong type marks the entry damaged.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import math
import types
import typing
from typing import Any
from urllib.parse import quote, unquote

from omniq_mp.models import Task
from omniq_mp.schedule import Schedule
from omniq_mp.storage.base import WorkerInfo

__all__ = [
    "SIDE_KINDS",
    "Corrupt",
    "InSideFile",
    "decode_schedule",
    "decode_task",
    "decode_worker",
    "encode_schedule",
    "encode_task",
    "encode_worker",
    "entry_name",
    "eta_us",
    "key_field",
    "key_name",
    "order_key",
    "unname",
]

_FORMAT = 1  # entries only ever gained optional fields, which format 1 readers skip
_PRIORITY_SPAN = 10**18  # priorities beyond +-(span - 1) share a file-name rank
_ETA_MAX = 10**20 - 1  # the widest eta (in microseconds) a 20-digit name field holds
_NAME_MAX = 200  # encoded names longer than this are hashed: most file systems stop at 255

# Fields every entry has carried since the first format. One of them missing means the
# entry is damaged (a default would invent an id, a status or a time); any other field
# missing means the entry predates that field, and it takes the dataclass default. Fields
# added to these classes later must not be listed here, so older stores stay readable.
_TASK_FIELDS = frozenset(
    {
        "func_name",
        "payload",
        "id",
        "queue",
        "priority",
        "status",
        "eta",
        "interval",
        "timeout",
        "max_retries",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "lease_token",
        "lease_until",
        "worker_id",
        "result",
        "error",
    }
)
_SCHEDULE_FIELDS = frozenset(
    {"template", "cron", "tz", "id", "next_run", "paused", "last_task_id", "created_at"}
)
_REQUIRED: dict[type, frozenset[str]] = {Task: _TASK_FIELDS, Schedule: _SCHEDULE_FIELDS}

# JSON types accepted for plain annotations. A bool is an int to isinstance, so it is
# refused explicitly wherever a number is expected (and numbers where a bool is).
_SCALARS: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
    type(None): (type(None),),
}


class Corrupt(Exception):
    """An entry that cannot be read back; the store moves it to quarantine."""


SIDE_KINDS = ("payload", "result")  # the Task fields a side file may hold


class InSideFile(bytes):
    """Stands, in a decoded task, for a payload or result kept in a side file: empty
    bytes that remember the file's name. Rewriting the entry keeps the name rather than
    copying the bytes again; the store reads the file only for callers that want it."""

    name: str

    def __new__(cls, name: str) -> InSideFile:
        marker = super().__new__(cls)
        marker.name = name
        return marker


# -- names -------------------------------------------------------------------------------------


def entry_name(text: str) -> str:
    """``text`` as one safe path component.

    quote leaves letters, digits and "_.-~"; encoding "." too rules out "..", hidden files
    and clashes with the ".json"/".tmp" suffixes. "%" alone names the empty string.
    """
    return quote(text, safe="").replace(".", "%2E") or "%"


def unname(name: str) -> str:
    """Inverse of :func:`entry_name`."""
    return "" if name == "%" else unquote(name)


def key_name(key: str) -> str:
    """The file name of a unique key's index link.

    Keys are often long (URLs, content digests); a name past the file-system limit would
    make enqueue fail, so long ones are named by their SHA-256. Encoded names never hold a
    raw "#", so the two forms cannot collide, and whoever resolves a link compares the
    task's own key, so even a digest collision could not merge two keys.
    """
    name = entry_name(key)
    if len(name) <= _NAME_MAX:
        return name
    return "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def eta_us(eta: float) -> int:
    """``eta`` in whole microseconds, clamped to what a name field holds."""
    if not eta < _ETA_MAX / 1e6:  # also catches inf and nan
        return _ETA_MAX
    return max(math.floor(eta * 1e6), 0)


def order_key(task: Task, seq: int) -> str:
    """``<P>-<E>-<S>``: inverted priority, eta, sequence; a plain sort is the claim order."""
    rank = _PRIORITY_SPAN - max(min(task.priority, _PRIORITY_SPAN - 1), 1 - _PRIORITY_SPAN)
    return f"{rank:019d}-{eta_us(task.eta):020d}-{seq:020d}"


def key_field(name: str, index: int) -> int | None:
    """Field ``index`` (1 eta, 2 seq) of a pending entry's name; None for a foreign name."""
    parts = name.split("-", 3)
    ok = len(parts) == 4 and all(p.isdigit() for p in parts[:3]) and name.endswith(".json")
    return int(parts[index]) if ok else None


# -- entries -----------------------------------------------------------------------------------


def encode_task(task: Task, seq: int, files: dict[str, str] | None = None) -> bytes:
    """A task entry: JSON with base64 bytes, so reading one never unpickles anything.

    :param files: ``{"payload" or "result": side file name}`` for values kept in side
        files: the entry names the file and holds an empty value in its place (a reader
        older than side files sees that empty value, which fails to unpickle: the task
        fails rather than run with the wrong arguments).
    """
    if files:
        task = dataclasses.replace(
            task,
            payload=b"" if "payload" in files else task.payload,
            result=None if "result" in files else task.result,
        )
    doc: dict[str, Any] = {"format": _FORMAT, "seq": seq, "task": _to_json(task)}
    if files:
        doc["files"] = files
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_task(data: bytes) -> tuple[Task, int]:
    """Inverse of :func:`encode_task`, a value kept in a side file decoded as an
    :class:`InSideFile`. :raises Corrupt: for anything else."""
    try:
        doc = json.loads(data)
        seq = _from_json(doc["seq"], int)
        task = _from_record(Task, doc["task"])
        files = doc.get("files")
        if files is not None:
            task = dataclasses.replace(task, **_side_markers(files))
        return task, seq
    # ValueError covers JSON, UTF-8, base64 and enum errors; RecursionError absurd nesting.
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise Corrupt(f"not a task entry: {type(exc).__name__}: {exc}") from exc


def _side_markers(files: Any) -> dict[str, InSideFile]:
    if not isinstance(files, dict) or not files.keys() <= set(SIDE_KINDS):
        raise TypeError(f"files is not an object of {' and '.join(SIDE_KINDS)} names")
    if not all(isinstance(name, str) for name in files.values()):
        raise TypeError("files holds a side file name that is not text")
    return {kind: InSideFile(name) for kind, name in files.items()}


def encode_schedule(schedule: Schedule) -> bytes:
    """A schedule entry, its template task stored whole (as an entry stores a task)."""
    doc = {"format": _FORMAT, "schedule": _to_json(schedule)}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_schedule(data: bytes) -> Schedule:
    """Inverse of :func:`encode_schedule`. :raises Corrupt: for anything else."""
    try:
        schedule: Schedule = _from_record(Schedule, json.loads(data)["schedule"])
        return schedule
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise Corrupt(f"not a schedule entry: {type(exc).__name__}: {exc}") from exc


def encode_worker(info: WorkerInfo) -> bytes:
    """A supervisor's heartbeat record; ``details`` must be JSON data."""
    record = dataclasses.asdict(info)
    record["details"] = dict(info.details)  # any Mapping, stored as a JSON object
    return json.dumps(record).encode()


def decode_worker(data: bytes) -> WorkerInfo:
    """Inverse of :func:`encode_worker`. :raises Corrupt: for anything else."""
    try:
        record = json.loads(data)
        # Every field type-checked, as for tasks: a heartbeat_at of the wrong type would
        # only fail later, when workers() compares it with a time.
        info: WorkerInfo = _from_record(WorkerInfo, record)
        if not isinstance(info.details, dict):  # a Mapping hint: not checked by _from_json
            raise TypeError(f"details is {type(info.details).__name__}, not an object")
        return info
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise Corrupt(f"not a worker entry: {type(exc).__name__}: {exc}") from exc


def _to_json(value: Any) -> Any:
    """Plain JSON data for a field value: bytes as base64, enums by value, dataclasses as
    objects, tuples as lists (the hints say how to turn them back)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    # Resolved once per class: the models use postponed annotations, so fields hold strings.
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _from_record(cls: type[Any], record: Any) -> Any:
    """An instance of dataclass ``cls`` from a JSON object, every field type-checked.

    Unknown keys (written by a newer version) are ignored; missing ones take the default
    unless ``_REQUIRED`` lists them for ``cls`` (or the class has none, which the
    constructor catches).
    """
    required = _REQUIRED.get(cls, frozenset())
    if not isinstance(record, dict):
        raise TypeError(f"{cls.__name__} record is {type(record).__name__}, not an object")
    values = {}
    for name, hint in _hints(cls).items():
        if name in record:
            try:
                values[name] = _from_json(record[name], hint)
            except (ValueError, TypeError) as exc:
                raise TypeError(f"field {name}: {exc}") from exc
        elif name in required:
            raise KeyError(name)
    return cls(**values)


def _from_json(value: Any, hint: Any) -> Any:
    """``value`` as read from JSON, converted to type ``hint``; TypeError if it is not one."""
    if hint in _SCALARS:
        numeric = hint in (int, float)
        if not isinstance(value, _SCALARS[hint]) or (numeric and isinstance(value, bool)):
            raise TypeError(f"{type(value).__name__} where {hint.__name__} belongs")
        return value
    if hint is bytes:
        if not isinstance(value, str):
            raise TypeError(f"{type(value).__name__} where base64 text belongs")
        return base64.b64decode(value, validate=True)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _from_record(hint, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args[-1:] == (...,):
        if not isinstance(value, list):
            raise TypeError(f"{type(value).__name__} where a list belongs")
        return tuple(_from_json(v, args[0]) for v in value)
    if origin in (typing.Union, types.UnionType):
        return _from_union(value, args)
    return value  # a type this codec does not know (a future field's): kept as JSON gave it


def _from_union(value: Any, args: tuple[Any, ...]) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        try:
            return _from_json(value, arg)
        except (ValueError, TypeError) as exc:
            errors.append(str(exc))
    raise TypeError("; ".join(errors))
