"""File storage: one JSON file per task, renamed from folder to folder as its state changes.

::

    <base_dir>/
      .lock                              flock'ed around every operation, by every process
      seq                                the last FIFO sequence number handed out
      pending/<queue>/<P>-<E>-<S>-<id>.json
                                         P inverted priority, E eta in microseconds, S the
                                         sequence: a plain name sort is the claim order
      running/<id>.json
      done/<id>.json                     COMPLETED, FAILED and CANCELLED tasks
      workers/<worker_id>.json           supervisor heartbeats
      ids/<id> -> ../pending/<queue>/<P>-<E>-<S>-<id>.json   a pending task by id (a
                                         symlink; running and done ones are found by name)
      quarantine/<x>-<name>, <x>-<name>.reason   entries that could not be read

Every write goes to ``<name>.tmp``, is fsync'ed and renamed over the old entry, and the
folder is fsync'ed: readers see the old entry or the new one, never half of one. A state
change renames the entry to ``running/<id>.json``, rewrites it there with its new status,
then renames it into its new folder: a task is always in exactly one file, and a crash
leaves at worst an entry in ``running/`` whose status says it belongs elsewhere, which
open(), expired() and stats() move on. Names (queues, ids) are percent-encoded so any
string is a safe file name. Entries are JSON with base64 bytes: nothing here unpickles.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import fcntl
import json
import math
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskError, TaskStatus
from omniq_mp.storage.base import QueueStats, WorkerInfo
from omniq_mp.storage.memory import count_tasks

__all__ = ["FileStorage"]

T = TypeVar("T")
R = TypeVar("R")
_TMP = ".tmp"
_FOLDERS = ("pending", "running", "done", "workers", "ids", "quarantine")
_PRIORITY_SPAN = 10**18  # priorities beyond +-(span - 1) share a file-name rank
_ETA_MAX = 10**20 - 1  # the widest eta (in microseconds) a 20-digit name field holds
# JSON types of Task fields by annotation; TaskStatus and TaskError are checked on decoding.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "bytes": (str,),  # base64 text
    "int": (int,),
    "float": (int, float),
    "None": (type(None),),
}


class FileStorage:
    """Tasks as JSON files in one folder tree, shared safely by several processes.

    :param base_dir: the store's folder; created with its parents by :meth:`open`.
    """

    def __init__(self, base_dir: str | Path) -> None:
        self.base_dir = Path(base_dir)
        self._opened = False

    async def open(self) -> None:
        """Create the tree, drop temp files of crashed writers, finish interrupted moves.

        :raises StorageError: when ``base_dir``, a parent or a store folder is a file.
        """
        await asyncio.to_thread(_make_tree, self.base_dir)
        self._opened = True
        await self._run(lambda t: t.recover())

    async def close(self) -> None:
        """Mark the store closed; nothing is held between operations. Safe to call twice."""
        self._opened = False

    async def _run(self, op: Callable[[_Tree], T]) -> T:
        if not self._opened:
            raise StorageError(f"file store {self.base_dir} is not open; call open() first")
        return await asyncio.to_thread(_locked, self.base_dir, op)

    async def enqueue(self, tasks: Sequence[Task]) -> None:
        """Store all tasks or none. :param tasks: new tasks with ids not yet stored."""
        batch = list(tasks)
        await self._run(lambda t: t.insert(batch))

    async def claim(
        self, queues: Sequence[str], limit: int, now: float, lease_until: float, worker_id: str
    ) -> list[Task]:
        """Lease up to ``limit`` due PENDING tasks of ``queues``, in claim order.

        :param now: decides which tasks are due. :param worker_id: recorded on each task.
        """
        names = tuple(queues)
        return await self._run(lambda t: t.claim(names, limit, now, lease_until, worker_id))

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply outcomes; :return: False where the lease token no longer holds."""
        batch = list(settlements)
        return await self._run(lambda t: [t.settle(s) for s in batch])

    async def extend_leases(self, leases: Mapping[str, str], lease_until: float) -> set[str]:
        """Renew ``{task_id: token}`` leases; :return: the ids whose lease was lost."""
        held = dict(leases)
        return await self._run(lambda t: t.extend(held, lease_until))

    async def expired(self, now: float, limit: int) -> list[Task]:
        """RUNNING tasks whose lease ended before ``now``, earliest lease end first."""
        return await self._run(lambda t: t.expired(now, limit))

    async def get(self, task_id: str) -> Task | None:
        """The task in whatever state it is, or None. :param task_id: the task's id."""
        return await self._run(lambda t: t.get(task_id))

    async def cancel(self, task_id: str, now: float) -> Task | None:
        """Cancel a PENDING task; return it as it now is. :param now: its ``finished_at``."""
        return await self._run(lambda t: t.cancel(task_id, now))

    async def stats(self, queues: Sequence[str] | None, now: float) -> QueueStats:
        """Counts by status over ``queues`` (None: all); reads every entry once."""
        names = None if queues is None else tuple(queues)
        return await self._run(lambda t: t.stats(names, now))

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record a supervisor's beat. :param info: replaces the supervisor's last record."""
        data = json.dumps(dataclasses.asdict(info)).encode()
        await self._run(lambda t: t.write(t.at("workers", info.worker_id), data))

    async def remove_worker(self, worker_id: str) -> None:
        """Forget a supervisor. :param worker_id: unknown ids are ignored."""
        await self._run(lambda t: t.remove(t.at("workers", worker_id)))

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        """Supervisors whose last heartbeat is at or after ``alive_since``."""
        return await self._run(lambda t: t.workers(alive_since))


def _make_tree(base: Path) -> None:
    for folder in (base, *base.parents):  # the nearest existing ancestor must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise StorageError(f"file store folder {folder} exists and is not a directory")
            break
    try:
        for name in _FOLDERS:
            (base / name).mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # mkdir's way of saying "a file has this name"
        raise StorageError(f"{exc.filename} exists and is not a directory") from exc
    except OSError as exc:
        raise StorageError(f"cannot create file store {base}: {exc.strerror}") from exc


def _locked(base: Path, op: Callable[[_Tree], T]) -> T:
    # A fresh descriptor per operation: flock excludes other descriptors, including other
    # threads of this process, while two threads sharing one descriptor would both pass.
    try:
        fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tree = _Tree(base)
            try:
                return op(tree)
            finally:
                tree.sync()
        finally:
            os.close(fd)  # also releases the flock
    except OSError as exc:
        raise StorageError(f"file store {base}: {exc}") from exc


class _Corrupt(Exception):
    """An entry that cannot be read back; it is moved to quarantine."""


class _Tree:
    """One locked operation on the folder tree; remembers which folders to fsync at its end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.dirty: set[Path] = set()

    # -- paths and file primitives -----------------------------------------------------------

    def at(self, folder: str, name: str) -> Path:
        return self.base / folder / f"{_name(name)}.json"

    def home(self, task: Task, seq: int) -> Path:
        """Where an entry with this content belongs."""
        if task.status is TaskStatus.PENDING:
            key = f"{_order_key(task, seq)}-{_name(task.id)}.json"
            return self.base / "pending" / _name(task.queue) / key
        return self.at("running" if task.status is TaskStatus.RUNNING else "done", task.id)

    def stage(self, path: Path, data: bytes) -> Path:
        """Write ``data`` durably beside ``path``; return the temp file."""
        self.mkdir(path.parent)
        tmp = path.with_name(path.name + _TMP)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def write(self, path: Path, data: bytes) -> None:
        self.move(self.stage(path, data), path)

    def mkdir(self, folder: Path) -> None:
        if not folder.is_dir():  # a queue's first task creates its folder
            folder.mkdir(parents=True)
            self.dirty.add(folder.parent)

    def move(self, src: Path, dst: Path) -> None:
        self.mkdir(dst.parent)
        os.replace(src, dst)
        self.dirty |= {src.parent, dst.parent}

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.dirty.add(path.parent)

    def sync(self) -> None:
        """fsync touched folders, so renames and unlinks survive a power cut."""
        for folder in self.dirty:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.dirty.clear()

    def link(self, task_id: str, target: Path) -> None:
        """Point the id index at a pending entry (a symlink: no data block to fsync)."""
        link = self.base / "ids" / _name(task_id)
        tmp = link.with_name(link.name + _TMP)
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, link.parent), tmp)
        self.move(tmp, link)

    def quarantine(self, path: Path, reason: str) -> None:
        dst = self.base / "quarantine" / f"{uuid.uuid4().hex[:8]}-{path.parent.name}-{path.name}"
        self.move(path, dst)
        self.write(dst.with_name(dst.name + ".reason"), f"{path}: {reason}\n".encode())

    def read(self, path: Path, decode: Callable[[bytes], R]) -> R | None:
        """The decoded entry at ``path``; None if it is gone or unreadable (quarantined)."""
        try:
            return decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except (_Corrupt, IsADirectoryError) as exc:
            self.quarantine(path, str(exc) or type(exc).__name__)
            return None

    # -- entries -----------------------------------------------------------------------------

    def entries(self, folder: Path) -> Iterator[tuple[Path, Task, int]]:
        for name in sorted(_json_names(folder)):
            entry = self.read(folder / name, _decode)
            if entry is not None:
                yield folder / name, *entry

    def pending_names(self, queues: Sequence[str] | None) -> Iterator[tuple[Path, str]]:
        root = self.base / "pending"
        if queues is None:
            folders = [p for p in root.iterdir() if p.is_dir()]
        else:
            folders = [root / _name(q) for q in dict.fromkeys(queues)]
        for folder in folders:
            yield from ((folder, name) for name in _json_names(folder))

    def transition(self, path: Path, task: Task, seq: int) -> None:
        """Give the entry its new state and folder, always by way of ``running/<id>.json``:
        whatever step a crash interrupts, the leftover is where open() and expired() look."""
        stop = self.at("running", task.id)
        if path != stop:
            self.move(path, stop)
        self.write(stop, _encode(task, seq))
        self.place(stop, task, seq)

    def place(self, path: Path, task: Task, seq: int) -> None:
        dst = self.home(task, seq)
        if task.status is TaskStatus.PENDING:
            self.link(task.id, dst)  # before the move: a link to nothing finds nothing
        if dst != path:
            self.move(path, dst)
        if task.status is not TaskStatus.PENDING:
            self.remove(self.base / "ids" / _name(task.id))

    def find(self, task_id: str) -> tuple[Path, Task, int] | None:
        """A task's entry in any state (under the lock, no move is half done elsewhere)."""
        path = self.at("running", task_id)
        if not path.exists():
            path = self.at("done", task_id)
        link = self.base / "ids" / _name(task_id)
        if not path.exists() and os.path.lexists(link):
            path = Path(os.path.normpath(link.parent / os.readlink(link)))
        entry = self.read(path, _decode)
        return None if entry is None else (path, *entry)

    def running_tasks(self) -> list[Task]:
        found = []
        for path, task, seq in self.entries(self.base / "running"):
            if path != self.home(task, seq):
                self.place(path, task, seq)  # a crash stopped this entry's move halfway
            elif task.status is TaskStatus.RUNNING:
                found.append(task)
        return found

    def next_seq(self, count: int) -> int:
        """Reserve ``count`` FIFO numbers; return the first."""
        path = self.base / "seq"
        try:
            last = int(path.read_text())
        except FileNotFoundError:
            last = 0
        except ValueError:  # a damaged counter: go on above every number in use
            last = max((_key_field(n, 2) or 0 for _, n in self.pending_names(None)), default=0)
        self.write(path, str(last + count).encode())
        return last + 1

    # -- operations --------------------------------------------------------------------------

    def recover(self) -> None:
        """Remove temp files of crashed writers; finish moves a crash interrupted."""
        folders = [self.base / f for f in _FOLDERS]
        folders += [p for p in folders[0].iterdir() if p.is_dir()]
        for folder in folders:
            for name in os.listdir(folder):
                if name.endswith(_TMP) and not (folder / name).is_dir():
                    self.remove(folder / name)
        if (self.base / f"seq{_TMP}").is_file():  # base_dir may hold others' files: only ours
            self.remove(self.base / f"seq{_TMP}")
        self.running_tasks()

    def insert(self, tasks: Sequence[Task]) -> None:
        """All or nothing: stage every entry, then rename them all into place."""
        ids = [t.id for t in tasks]
        clash = next((i for i in ids if self.find(i) is not None), None)
        if clash is not None:
            raise ValueError(f"task id {clash} already exists")
        if len(set(ids)) < len(ids):
            raise ValueError("a task id appears twice in one enqueue")
        staged: list[tuple[Path, Path]] = []
        try:
            for seq, task in enumerate(tasks, self.next_seq(len(tasks)) if tasks else 0):
                path = self.home(task, seq)
                staged.append((self.stage(path, _encode(task, seq)), path))
                self.link(task.id, path)  # a link to nothing finds nothing: safe to leave
            self.sync()  # the links are durable before any entry they point at appears
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, path in staged:
            self.move(tmp, path)

    def claim(
        self, queues: Sequence[str], limit: int, now: float, lease_until: float, worker_id: str
    ) -> list[Task]:
        claimed: list[Task] = []
        for path in self.due_paths(queues, now) if limit > 0 else []:
            entry = self.read(path, _decode)
            if entry is None:
                continue
            task, seq = entry
            if task.status is not TaskStatus.PENDING:
                self.place(path, task, seq)  # a crash stopped this entry's move halfway
            elif task.eta <= now:
                task = dataclasses.replace(task, status=TaskStatus.RUNNING, started_at=now)
                task.attempts, task.lease_token = task.attempts + 1, uuid.uuid4().hex
                task.lease_until, task.worker_id = lease_until, worker_id
                self.transition(path, task, seq)
                claimed.append(task)
            if len(claimed) >= limit:
                break
        return claimed

    def due_paths(self, queues: Sequence[str], now: float) -> list[Path]:
        """Pending entries whose name says they are due, in claim order across queues."""
        horizon, found = _eta_us(now), []
        for folder, name in self.pending_names(queues):
            eta = _key_field(name, 1)
            if eta is None:
                self.quarantine(folder / name, "file name is not <P>-<E>-<S>-<id>.json")
            elif eta <= horizon:  # names round the eta down: the exact test comes later
                found.append((name, folder / name))
        return [path for _, path in sorted(found)]

    def settle(self, s: Settlement) -> bool:
        path = self.at("running", s.task_id)
        entry = self.read(path, _decode)
        if entry is None or not _holds(entry[0], s.lease_token):
            return False
        if s.follow_up is not None:  # first: a crash now repeats the next run, never loses it
            self.insert([s.follow_up])
        self.transition(path, _settled(entry[0], s), entry[1])
        return True

    def extend(self, leases: Mapping[str, str], lease_until: float) -> set[str]:
        lost = set()
        for task_id, token in leases.items():
            path = self.at("running", task_id)
            entry = self.read(path, _decode)
            if entry is None or not _holds(entry[0], token):
                lost.add(task_id)
            else:
                task = dataclasses.replace(entry[0], lease_until=lease_until)
                self.write(path, _encode(task, entry[1]))
        return lost

    def expired(self, now: float, limit: int) -> list[Task]:
        found = [t for t in self.running_tasks() if (t.lease_until or 0) < now]
        found.sort(key=lambda t: t.lease_until or 0)
        return found[: max(limit, 0)]

    def get(self, task_id: str) -> Task | None:
        found = self.find(task_id)
        return None if found is None else found[1]

    def cancel(self, task_id: str, now: float) -> Task | None:
        found = self.find(task_id)
        if found is None:
            return None
        path, task, seq = found
        if task.status is TaskStatus.PENDING:
            task = dataclasses.replace(task, status=TaskStatus.CANCELLED, finished_at=now)
            self.transition(path, task, seq)
        return task

    def stats(self, queues: Sequence[str] | None, now: float) -> QueueStats:
        tasks = self.running_tasks()  # first: it moves half-moved entries to be counted
        for folder, name in self.pending_names(queues):
            entry = self.read(folder / name, _decode)
            tasks += [] if entry is None else [entry[0]]
        tasks += [task for _, task, _ in self.entries(self.base / "done")]
        return count_tasks([t for t in tasks if queues is None or t.queue in queues], now)

    def workers(self, alive_since: float) -> list[WorkerInfo]:
        folder = self.base / "workers"
        infos = [self.read(folder / name, _decode_worker) for name in sorted(_json_names(folder))]
        return [w for w in infos if w is not None and w.heartbeat_at >= alive_since]


def _name(text: str) -> str:
    # quote leaves letters, digits and "_.-~"; encoding "." too rules out "..", hidden
    # files and clashes with the ".json"/".tmp" suffixes. "%" alone names the empty string.
    return quote(text, safe="").replace(".", "%2E") or "%"


def _eta_us(eta: float) -> int:
    if not eta < _ETA_MAX / 1e6:  # also catches inf and nan
        return _ETA_MAX
    return max(math.floor(eta * 1e6), 0)


def _order_key(task: Task, seq: int) -> str:
    rank = _PRIORITY_SPAN - max(min(task.priority, _PRIORITY_SPAN - 1), 1 - _PRIORITY_SPAN)
    return f"{rank:019d}-{_eta_us(task.eta):020d}-{seq:020d}"


def _key_field(name: str, index: int) -> int | None:
    """Field ``index`` (1 eta, 2 seq) of a pending entry's name; None for a foreign name."""
    parts = name.split("-", 3)
    ok = len(parts) == 4 and all(p.isdigit() for p in parts[:3]) and name.endswith(".json")
    return int(parts[index]) if ok else None


def _json_names(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if n.endswith(".json")]
    except FileNotFoundError:
        return []


def _holds(task: Task, token: str) -> bool:
    return task.status is TaskStatus.RUNNING and task.lease_token == token


def _settled(task: Task, s: Settlement) -> Task:
    """The task after settlement ``s`` (the rules of MemoryStorage)."""
    task = dataclasses.replace(
        task,
        status=s.status,
        lease_token=None,
        lease_until=None,
        attempts=max(0, task.attempts - 1) if s.uncharge else task.attempts,
        error=s.error if s.error is not None else task.error,
    )
    if s.status is TaskStatus.PENDING:
        eta = s.eta if s.eta is not None else task.eta
        return dataclasses.replace(task, eta=eta, worker_id=None)
    return dataclasses.replace(task, result=s.result, finished_at=s.finished_at)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)


def _encode(task: Task, seq: int) -> bytes:
    record: dict[str, Any] = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    record.update(
        status=task.status.value,
        payload=_b64(task.payload),
        result=_b64(task.result),
        error=None if task.error is None else task.error.to_dict(),
    )
    return json.dumps({"format": 1, "seq": seq, "task": record}, separators=(",", ":")).encode()


def _expected(annotation: str) -> tuple[type, ...]:
    # A field type added to Task later and unknown here is accepted as anything.
    parts = [p.strip() for p in annotation.split("|")]
    return tuple(t for p in parts for t in _JSON_TYPES.get(p, (object,)))


_FIELD_TYPES = {f.name: _expected(str(f.type)) for f in dataclasses.fields(Task)}


def _decode(data: bytes) -> tuple[Task, int]:
    try:
        doc = json.loads(data)
        record, seq = dict(doc["task"]), doc["seq"]
        for name, types in _FIELD_TYPES.items():
            if not isinstance(record[name], types):
                raise TypeError(f"field {name} is {type(record[name]).__name__}")
        if not isinstance(seq, int):
            raise TypeError("seq is not an integer")
        record.update(
            status=TaskStatus(record["status"]),
            payload=_unb64(record["payload"]),
            result=_unb64(record["result"]),
            error=None if record["error"] is None else TaskError.from_dict(record["error"]),
        )
        return Task(**{name: record[name] for name in _FIELD_TYPES}), seq
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON, base64, enum too
        raise _Corrupt(f"not a task entry: {type(exc).__name__}: {exc}") from exc


def _decode_worker(data: bytes) -> WorkerInfo:
    try:
        record = json.loads(data)
        record["queues"] = tuple(record["queues"])
        return WorkerInfo(**record)
    except (ValueError, KeyError, TypeError) as exc:
        raise _Corrupt(f"not a worker entry: {type(exc).__name__}: {exc}") from exc
