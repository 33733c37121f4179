"""File storage: one JSON file per task, renamed from folder to folder as its state changes.

::

    <base_dir>/
      .lock                              flock'ed around every operation, by every process
      seq                                the last FIFO sequence number handed out
      pending/<queue>/<P>-<E>-<S>-<id>.json
                                         P inverted priority, E eta in microseconds, S the
                                         sequence: a plain name sort is the claim order
      running/<id>.json
      done/<id>.json                     COMPLETED, FAILED, CANCELLED and DEAD tasks
      workers/<worker_id>.json           supervisor heartbeats
      schedules/<schedule_id>.json       cron schedules, each with its template task
      ids/<id> -> ../pending/<queue>/<P>-<E>-<S>-<id>.json   a pending task by id (a
                                         symlink; running and done ones are found by name)
      keys/<key>/<id>                    an empty file per unfinished task holding a
                                         unique key: normally one (a revived task can
                                         share its key with a newer one)
      quarantine/<x>-<name>, <x>-<name>.reason   entries that could not be read
      large/<hex>.payload, <hex>.result  payloads and results of 1 MiB or more, named by
                                         their entry (side_files.py)

Every write goes to ``<name>.tmp``, is fsync'ed and renamed over the old entry, and the
folder is fsync'ed: readers see the old entry or the new one, never half of one. A state
change renames the entry to ``running/<id>.json``, rewrites it there with its new status,
then renames it into its new folder: a task is always in exactly one file, and a crash
leaves at worst an entry in ``running/`` whose status says it belongs elsewhere, which
open(), expired() and every scan move on. Names (queues, ids, keys) are percent-encoded so
any string is a safe file name (a key too long for one goes by its SHA-256). Entries are
JSON with base64 bytes: nothing here unpickles. The indexes (``ids/``, ``keys/``) are
hints: one naming nothing, or a task that no longer matches, finds nothing, so a crash
between writing an index entry and the entry it names is harmless.

Large values live in side files because an entry is rewritten whole at every change of
state: a 100 MiB argument inline was encoded, written and fsync'ed again at its claim and
at its settlement, and read again by every scan (``stats`` too), so running ``len`` on it
took 8 s. A side file is written once, fsync'ed before the entry naming it appears, and
never copied again; a change that drops a name (a purge, a result replaced) removes the
file only once the entry without it is durable. An operation that writes a side file
first leaves ``large/.sweep``, and removes it only once every file it wrote is named
by an entry on disk (fsync'ed); an unlink of a file no entry names any more is marked
the same way. A crash or a failure in between leaves the mark,
and the next open, under the lock (so no write is in flight), removes the files no entry
names. A missing side file sends its entry to quarantine with the side files it names
that remain; one that cannot be read sets its task aside as DEAD, still naming the file,
for a claim and for lease recovery (so it cannot stop either, and a retry runs the task
whole once the file reads again), and fails the other reads with a StorageError.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import itertools
import math
import os
import stat
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from loguru import logger

from omniq_mp.crashpoints import crash_point
from omniq_mp.errors import StorageError, StorageFullError
from omniq_mp.file_modes import FILE_MODE, make_private_dirs
from omniq_mp.models import ErrorKind, Settlement, Task, TaskError, TaskStatus
from omniq_mp.schedule import Schedule
from omniq_mp.storage.base import (
    RENEWAL_STEP,
    ClaimBudget,
    Lease,
    QueueStats,
    WorkerInfo,
    one_per_key,
)
from omniq_mp.storage.file_codec import (
    SIDE_KINDS,
    Corrupt,
    InSideFile,
    decode_schedule,
    decode_task,
    decode_worker,
    encode_schedule,
    encode_task,
    encode_worker,
    entry_name,
    eta_us,
    key_field,
    key_name,
    order_key,
    unname,
)
from omniq_mp.storage.memory import count_tasks
from omniq_mp.storage.side_files import SIDE_FILE_MIN, SideFileMissing, SideFiles

__all__ = ["FileStorage"]

T = TypeVar("T")
R = TypeVar("R")
_Entry = tuple[Path, Task, int]  # where an entry is, its task, its FIFO sequence number
_TMP = ".tmp"
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # StorageFullError, as for SQLite
_FOLDERS = (
    "pending",
    "running",
    "done",
    "workers",
    "schedules",
    "ids",
    "keys",
    "quarantine",
    "large",
)
_SWEEP = ".sweep"  # in large/: a side file may be named by no entry (see the docstring)
_LINK = "a symbolic link (links in the store are never followed)"
_TERMINAL = tuple(s for s in TaskStatus if s.is_terminal)  # the statuses kept in done/
_REVIVABLE = (TaskStatus.DEAD, TaskStatus.FAILED)


class FileStorage:
    """Tasks as JSON files in one folder tree, shared safely by several processes.

    :param base_dir: the store's folder; created with its parents by :meth:`open`. What
        the store creates is private to its user (folders 0700, files 0600): whoever can
        write it can run code in the workers.
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

    async def enqueue(self, tasks: Sequence[Task]) -> list[str]:
        """Store all new tasks or none; :return: one id per task, the id of the unfinished
        task already holding its ``key`` where there is one (that task is not inserted).

        :raises ValueError: when a task's id is already stored or repeats in the batch.
        :raises StorageFullError: when the disk runs out of room; no task of the batch is
            stored (a partial temp file may stay until the next :meth:`open`).
        """
        batch = list(tasks)
        return await self._run(lambda t: t.insert(batch))

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        worker_id: str,
        max_bytes: int | None = None,
        min_tasks: int = 1,
    ) -> list[Task]:
        """Lease up to ``limit`` due PENDING tasks of ``queues``, in claim order: queues in
        the order given, then priority, eta and FIFO within a queue.

        :param now: decides which tasks are due. :param worker_id: recorded on each task.
        :param max_bytes: payloads brought in at most beyond the first ``min_tasks``
            tasks, which come whatever their size.
        """
        names = tuple(queues)
        return await self._run(
            lambda t: t.claim(names, limit, now, lease_until, worker_id, max_bytes, min_tasks)
        )

    async def next_due(self, queues: Sequence[str], now: float) -> float | None:
        """The earliest ETA after ``now`` among PENDING tasks of ``queues`` (None: none),
        read from the entries' names (rounded down to the microsecond)."""
        names = tuple(queues)
        return await self._run(lambda t: t.next_due(names, now))

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

    async def running_leases(self) -> list[Lease]:
        """The lease of every RUNNING task (entries of ``running/``)."""
        return await self._run(lambda t: t.leases())

    async def get(self, task_id: str) -> Task | None:
        """The task in whatever state it is, or None. :param task_id: the task's id."""
        return await self._run(lambda t: t.get(task_id))

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        """The tasks among ``task_ids`` that exist; one whose side file cannot be read is
        set aside as DEAD, not returned (this is how a supervisor reads the tasks of
        leases it found abandoned: one such file must not stop that recovery)."""
        ids = list(task_ids)
        return await self._run(
            lambda t: [task for i in ids if (task := t.get(i, set_aside=True)) is not None]
        )

    async def get_outcomes(self, task_ids: Sequence[str]) -> list[Task]:
        """:meth:`get_many` with every payload left out (an empty one stands in): how
        clients waiting for results read their tasks, at every look."""
        ids = list(task_ids)
        return await self._run(lambda t: [task for i in ids if (task := t.outcome(i)) is not None])

    async def cancel(self, task_id: str, now: float) -> Task | None:
        """Cancel a PENDING task (``now`` is its ``finished_at``) or flag a RUNNING one for
        its supervisor to kill; :return: the task as it now is, None if unknown."""
        return await self._run(lambda t: t.cancel(task_id, now))

    async def key_holder(self, key: str) -> str | None:
        """The id of the first enqueued unfinished task holding ``key``, or None."""
        return await self._run(lambda t: t.holder(key))

    async def cancel_requests(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` that are RUNNING with a cancellation requested."""
        ids = list(task_ids)
        return await self._run(lambda t: t.cancel_requests(ids))

    async def list_tasks(
        self, status: TaskStatus, queues: Sequence[str] | None, limit: int
    ) -> list[Task]:
        """Up to ``limit`` tasks in ``status`` (of ``queues``; None: all), most recently
        finished (or, unfinished, created) first. Reads every entry of that status."""
        names = None if queues is None else tuple(queues)
        return await self._run(lambda t: t.list_tasks(status, names, limit))

    async def revive(self, task_ids: Sequence[str] | None, now: float) -> list[str]:
        """Re-queue the given DEAD or FAILED tasks (None: every DEAD one) due at ``now``,
        with fresh attempt and crash budgets; :return: the ids re-queued."""
        ids = None if task_ids is None else list(task_ids)
        return await self._run(lambda t: t.revive(ids, now))

    async def purge_expired(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` finished tasks whose ``expires_at`` is at or before
        ``now``; :return: how many were deleted."""
        return await self._run(
            lambda t: t.purge(
                (e for e in t.scan(_TERMINAL, None) if _expired(e[1], now)),
                limit,
            )
        )

    async def purge_finished(
        self, before: float, statuses: Sequence[TaskStatus], limit: int
    ) -> int:
        """Delete up to ``limit`` tasks in ``statuses`` that finished before ``before``;
        :return: how many were deleted."""
        wanted = tuple(statuses)
        return await self._run(
            lambda t: t.purge(
                (e for e in t.scan(wanted, None) if _finished_before(e[1], before)),
                limit,
            )
        )

    async def stats(self, queues: Sequence[str] | None, now: float) -> QueueStats:
        """Counts by status over ``queues`` (None: all); reads every entry once."""
        names = None if queues is None else tuple(queues)
        return await self._run(lambda t: t.stats(names, now))

    async def add_schedule(self, schedule: Schedule) -> None:
        """Store a schedule (replacing one with the same id, as MemoryStorage does)."""
        data = encode_schedule(schedule)
        await self._run(lambda t: t.write(t.at("schedules", schedule.id), data))

    async def schedules(self) -> list[Schedule]:
        """Every schedule, paused ones included, soonest ``next_run`` first."""
        return await self._run(lambda t: t.schedules())

    async def set_paused(self, schedule_id: str, paused: bool) -> Schedule | None:
        """Pause or resume a schedule; :return: it as it now is, None if unknown."""
        return await self._run(lambda t: t.set_paused(schedule_id, paused))

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule; :return: False if it was unknown."""
        return await self._run(lambda t: t.remove_schedule(schedule_id))

    async def fire_schedules(
        self, now: float, next_run: Callable[[Schedule, float], float]
    ) -> list[str]:
        """For each unpaused schedule due at ``now``, insert its task (eta: the due time)
        and move it to ``next_run(schedule, now)``, all under the store's lock, so two
        supervisors never fire one due time twice; :return: the new task ids.

        The task is written before the schedule moves on: a crash between the two fires
        that due time again on the next call rather than losing it.
        """
        return await self._run(lambda t: t.fire_schedules(now, next_run))

    async def queue_names(self) -> list[str]:
        """Queues holding at least one task (any status), sorted; reads every entry."""
        return await self._run(lambda t: t.queue_names())

    async def completed_since(self, queues: Sequence[str] | None, since: float) -> int:
        """COMPLETED tasks (of ``queues``; None: all) finished at or after ``since``;
        reads every finished entry."""
        names = None if queues is None else tuple(queues)
        return await self._run(lambda t: t.completed_since(names, since))

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record a supervisor's beat. :param info: replaces the supervisor's last record."""
        data = encode_worker(info)
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
        for name in _FOLDERS:  # also adds folders a newer version introduced to older stores
            make_private_dirs(base / name)
    except FileExistsError as exc:  # mkdir's way of saying "a file has this name"
        raise StorageError(f"{exc.filename} exists and is not a directory") from exc
    except OSError as exc:
        raise StorageError(f"cannot create file store {base}: {exc.strerror}") from exc


def _locked(base: Path, op: Callable[[_Tree], T]) -> T:
    # A fresh descriptor per operation: flock excludes other descriptors, including other
    # threads of this process, while two threads sharing one descriptor would both pass.
    try:
        fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tree = _Tree(base)
            try:
                result = op(tree)
                tree.unmark()  # every side file it wrote is named by a durable entry
                return result
            finally:
                tree.sync()
        finally:
            os.close(fd)  # also releases the flock
    except OSError as exc:
        if exc.errno in _NO_ROOM:  # every write is staged first: nothing half-written shows
            raise StorageFullError(f"file store {base}: no room to write: {exc.strerror}") from exc
        raise StorageError(f"file store {base}: {exc}") from exc


class _Tree:
    """One locked operation on the folder tree; remembers which folders to fsync at its end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.dirty: set[Path] = set()
        self.side = SideFiles(base / "large")
        self.written: list[str] = []  # side files this operation wrote
        self.marked = False  # this operation left large/.sweep

    # -- paths and file primitives -----------------------------------------------------------

    def at(self, folder: str, name: str) -> Path:
        return self.base / folder / f"{entry_name(name)}.json"

    def home(self, task: Task, seq: int) -> Path:
        """Where an entry with this content belongs."""
        if task.status is TaskStatus.PENDING:
            key = f"{order_key(task, seq)}-{entry_name(task.id)}.json"
            return self.base / "pending" / entry_name(task.queue) / key
        return self.at("running" if task.status is TaskStatus.RUNNING else "done", task.id)

    def id_link(self, task_id: str) -> Path:
        return self.base / "ids" / entry_name(task_id)

    def key_folder(self, key: str) -> Path:
        return self.base / "keys" / key_name(key)

    def stage(self, path: Path, data: bytes) -> Path:
        """Write ``data`` durably beside ``path``; return the temp file."""
        self.mkdir(path.parent)
        tmp = path.with_name(path.name + _TMP)
        # O_NOFOLLOW: a link planted under the temp name must not be written through.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with os.fdopen(os.open(tmp, flags, FILE_MODE), "wb") as f:
            f.write(data)
            f.flush()
            crash_point("file_before_fsync")  # tests: the entry must stay invisible
            os.fsync(f.fileno())
        return tmp

    def write(self, path: Path, data: bytes) -> None:
        self.move(self.stage(path, data), path)

    def mkdir(self, folder: Path) -> None:
        if not folder.is_dir():  # a queue's first task creates its folder
            make_private_dirs(folder)
            self.dirty.add(folder.parent)

    def move(self, src: Path, dst: Path) -> None:
        self.mkdir(dst.parent)
        crash_point("file_before_rename")  # tests: the old entry or the new, never half
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
        """Point the id index at a pending entry, replacing any old link atomically (a
        symlink holds its target in the inode: no data block to fsync)."""
        link = self.id_link(task_id)
        tmp = link.with_name(link.name + _TMP)
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, link.parent), tmp)
        self.move(tmp, link)

    def quarantine(self, path: Path, reason: str) -> None:
        if any(self.side.names()):  # the entry may have named some: the next open sweeps
            self.mark()
            self.marked = False  # left for that open, not removed at this operation's end
        dst = self.quarantined(path.parent, path.name)
        self.move(path, dst)
        self.write(dst.with_name(dst.name + ".reason"), f"{path}: {reason}\n".encode())

    def quarantined(self, folder: Path, name: str) -> Path:
        """Where an entry (or side file) ``name`` of ``folder`` goes in quarantine."""
        return self.base / "quarantine" / f"{uuid.uuid4().hex[:8]}-{folder.name}-{name}"

    def read(self, path: Path, decode: Callable[[bytes], R]) -> R | None:
        """The decoded entry at ``path``; None if it is gone or unreadable (quarantined).

        A link is never followed, whatever it points at: an entry is a regular file of the
        store's own, and a link could make a task of bytes from anywhere (or block on a
        FIFO). Links, folders and other non-files are quarantined like damaged entries.
        """
        try:
            return decode(_read_regular(path))
        except FileNotFoundError:
            return None
        except (Corrupt, IsADirectoryError) as exc:
            self.quarantine(path, str(exc) or type(exc).__name__)
            return None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link
                raise
            self.quarantine(path, _LINK)
            return None

    # -- side files --------------------------------------------------------------------------

    def encode(self, task: Task, seq: int) -> bytes:
        """The entry for ``task``: a value already in a side file stays there, a new one of
        ``SIDE_FILE_MIN`` bytes or more is written to a side file of its own first."""
        files = {}
        for kind in SIDE_KINDS:
            value = getattr(task, kind)
            if isinstance(value, InSideFile):
                files[kind] = value.name
            elif value is not None and len(value) >= SIDE_FILE_MIN:
                self.mark()
                files[kind] = self.side.write(value, kind)
                self.written.append(files[kind])
        return encode_task(task, seq, files)

    def mark(self) -> None:
        """Leave large/.sweep before a side file can end up named by no entry (written
        for an entry not yet in place, or about to be unlinked): a crash or a failure in
        between then leaves the mark, and the next open sweeps."""
        marker = self.side.folder / _SWEEP
        if not marker.exists():
            self.mkdir(marker.parent)
            marker.touch(FILE_MODE)
            self.dirty.add(marker.parent)  # a side file's write also fsyncs the folder
            self.marked = True

    def unmark(self) -> None:
        """Remove this operation's mark, once the entries naming what it wrote are
        durable (a power cut must not keep the unlink and lose those)."""
        if self.marked:
            self.sync()
            self.remove(self.side.folder / _SWEEP)
            self.marked = False

    def with_files(
        self, entry: _Entry, kinds: Collection[str] = SIDE_KINDS, set_aside: bool = False
    ) -> Task | None:
        """The task of ``entry`` with the side files of ``kinds`` read in and the values of
        other kinds left empty, or None when it was set aside:

        - a missing file is damage: the entry goes to quarantine, with the side files it
          names that are still there;
        - a file that cannot be read (no permission, an I/O error) raises StorageError,
          unless ``set_aside``: then the task becomes DEAD, still naming the file, so a
          retry runs it whole once the file reads again, and one file cannot stop the
          claims or the lease recovery of a supervisor.
        """
        task = entry[1]
        payload, result = task.payload, task.result
        try:
            if "payload" not in kinds:
                payload = b""
            elif isinstance(payload, InSideFile):
                payload = self.side.read(payload.name)
            if "result" not in kinds:
                result = None
            elif isinstance(result, InSideFile):
                result = self.side.read(result.name)
        except SideFileMissing as exc:
            self.quarantine_with_files(entry, str(exc))
            return None
        except StorageError as exc:
            if not set_aside:
                raise
            self.set_aside(entry, exc)
            return None
        if payload is task.payload and result is task.result:
            return task
        return dataclasses.replace(task, payload=payload, result=result)

    def payload_size(self, task: Task) -> int | None:
        """Bytes of the task's payload; of its side file, without reading it, if it has one
        (None: the file is missing, and reading the task sets it aside)."""
        payload = task.payload
        return self.side.size(payload.name) if isinstance(payload, InSideFile) else len(payload)

    def quarantine_with_files(self, entry: _Entry, reason: str) -> None:
        """Move a damaged entry to quarantine with the side files it names that remain."""
        for name in _side_names(entry[1]):
            if self.side.owns(name) and os.path.lexists(self.side.folder / name):
                self.move(self.side.folder / name, self.quarantined(self.side.folder, name))
        self.quarantine(entry[0], reason)

    def set_aside(self, entry: _Entry, exc: StorageError) -> None:
        """Make the task DEAD for a side file that cannot be read, still naming it."""
        path, task, seq = entry
        error = TaskError(
            "StorageError", str(exc), is_retryable=False, kind=ErrorKind.SERIALIZATION.value
        )
        dead = _finished(dataclasses.replace(task, error=error), TaskStatus.DEAD, time.time())
        self.transition(path, dead, seq, was=task)
        logger.bind(action="storage_damaged_row", task_id=task.id).warning(
            "task {} set aside as DEAD: {}", task.id, exc
        )

    def drop_files(self, names: Collection[str]) -> None:
        """Delete side files no entry names any more, once the entries that stopped
        naming them are durable: a power cut must not keep the unlink and lose those."""
        if names:
            self.mark()  # a crash between the two still gets them swept
            self.sync()
            self.side.remove(names)
            self.dirty.add(self.side.folder)

    # -- entries -----------------------------------------------------------------------------

    def entries(self, folder: Path) -> Iterator[_Entry]:
        for name in sorted(_json_names(folder)):
            entry = self.read(folder / name, decode_task)
            if entry is not None:
                yield folder / name, *entry

    def pending_names(self, queues: Sequence[str] | None) -> Iterator[tuple[Path, str]]:
        for folder in self.queue_folders(queues):
            yield from ((folder, name) for name in _json_names(folder))

    def queue_folders(self, queues: Sequence[str] | None) -> list[Path]:
        """The folders of ``queues`` (None: all) under pending/, in that order; a link in
        place of one is quarantined, not followed (its entries are not the store's)."""
        root = self.base / "pending"
        if queues is None:
            candidates = list(root.iterdir())
        else:
            candidates = [root / entry_name(q) for q in dict.fromkeys(queues)]
        folders = []
        for folder in candidates:
            if folder.is_symlink():
                self.quarantine(folder, _LINK)
            elif folder.is_dir():
                folders.append(folder)
        return folders

    def transition(self, path: Path, task: Task, seq: int, was: Task) -> None:
        """Give the entry (``was`` as read) its new state and folder, always by way of
        ``running/<id>.json``: whatever step a crash interrupts, the leftover is where
        open() and expired() look."""
        stop = self.at("running", task.id)
        if path != stop:
            self.move(path, stop)
        self.write(stop, self.encode(task, seq))
        self.place(stop, task, seq)
        self.drop_files(_side_names(was) - _side_names(task))

    def place(self, path: Path, task: Task, seq: int) -> None:
        dst = self.home(task, seq)
        if task.status is TaskStatus.PENDING:
            self.link(task.id, dst)  # before the move: a link to nothing finds nothing
        if dst != path:
            self.move(path, dst)
        if task.status is not TaskStatus.PENDING:
            self.remove(self.id_link(task.id))
        if task.status.is_terminal:
            self.drop_key(task)  # only tidies: a finished holder frees its key anyway

    def find(self, task_id: str) -> _Entry | None:
        """A task's entry in any state (under the lock, no move is half done elsewhere)."""
        path = self.at("running", task_id)
        if not path.exists():
            path = self.at("done", task_id)
        link = self.id_link(task_id)
        if not path.exists() and os.path.lexists(link):
            path = Path(os.path.normpath(link.parent / os.readlink(link)))
            # The index is only a hint: one that leads out of pending/<queue>/ finds
            # nothing, so no file outside the store is ever read, moved or quarantined.
            if path.parent.parent != Path(os.path.normpath(self.base / "pending")):
                return None
        entry = self.read(path, decode_task)
        return None if entry is None else (path, *entry)

    def running_entries(self) -> list[_Entry]:
        """Entries of RUNNING tasks; moves on any entry a crash left in ``running/``."""
        found = []
        for path, task, seq in self.entries(self.base / "running"):
            if path != self.home(task, seq):
                self.place(path, task, seq)  # a crash stopped this entry's move halfway
            elif task.status is TaskStatus.RUNNING:
                found.append((path, task, seq))
        return found

    def scan(
        self, statuses: Collection[TaskStatus], queues: Sequence[str] | None
    ) -> Iterator[_Entry]:
        """Every entry in ``statuses`` (of ``queues``; None: all), reading only the folders
        that hold those statuses. Callers may delete the entry just yielded."""
        running = self.running_entries()  # first: it moves half-moved entries to be seen
        parts: list[Iterable[_Entry]] = []
        if TaskStatus.RUNNING in statuses:
            parts.append(running)
        if TaskStatus.PENDING in statuses:
            parts.append(self.pending_entries(queues))
        if any(s.is_terminal for s in statuses):
            parts.append(self.entries(self.base / "done"))
        for path, task, seq in itertools.chain(*parts):
            if task.status in statuses and (queues is None or task.queue in queues):
                yield path, task, seq

    def pending_entries(self, queues: Sequence[str] | None) -> Iterator[_Entry]:
        for folder, name in self.pending_names(queues):
            entry = self.read(folder / name, decode_task)
            if entry is not None:
                yield folder / name, *entry

    def next_seq(self, count: int) -> int:
        """Reserve ``count`` FIFO numbers; return the first."""
        path = self.base / "seq"
        try:
            last = int(path.read_text())
        except FileNotFoundError:
            last = 0
        except ValueError:  # a damaged counter: go on above every number in use
            last = max((key_field(n, 2) or 0 for _, n in self.pending_names(None)), default=0)
        self.write(path, str(last + count).encode())
        return last + 1

    # -- unique keys -------------------------------------------------------------------------

    def holder(self, key: str, finishing: str | None = None) -> str | None:
        """The id of the first enqueued unfinished task holding ``key``, or None.

        Members of ``keys/<key>/`` are only hints: the task named must still exist, carry
        this key and be unfinished; members that fail this (left by a crash) are tidied
        away. ``finishing`` is a task this operation settles to a terminal status: its key
        is already free.
        """
        folder = self.key_folder(key)
        best: tuple[int, str] | None = None
        for name in _names(folder):
            task_id = unname(name)
            found = self.find(task_id)
            if found is None or found[1].key != key or found[1].status.is_terminal:
                self.unlist(folder / name)
            elif task_id != finishing and (best is None or found[2] < best[0]):
                best = (found[2], task_id)
        return None if best is None else best[1]

    def point_key(self, task: Task) -> None:
        """List an unfinished task as a holder of its key (an empty file: creating one is
        atomic, and the folder's fsync makes it durable)."""
        if task.key:
            folder = self.key_folder(task.key)
            self.mkdir(folder)
            (folder / entry_name(task.id)).touch(FILE_MODE)
            self.dirty.add(folder)

    def drop_key(self, task: Task) -> None:
        """Unlist a task that finished or was deleted from its key's holders."""
        if task.key:
            self.unlist(self.key_folder(task.key) / entry_name(task.id))

    def unlist(self, member: Path) -> None:
        folder = member.parent
        member.unlink(missing_ok=True)
        try:
            folder.rmdir()  # the key's last holder: keys/ keeps only keys in use
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            self.dirty.add(folder)  # other holders remain: make the unlink durable
            return
        self.dirty.discard(folder)  # gone: nothing left to fsync there
        self.dirty.add(folder.parent)

    # -- operations --------------------------------------------------------------------------

    def recover(self) -> None:
        """Remove temp files of crashed writers; finish moves a crash interrupted."""
        folders = [self.base / f for f in _FOLDERS]
        # Not through a linked queue folder: its temp files are not ours to delete.
        folders += [p for p in folders[0].iterdir() if p.is_dir() and not p.is_symlink()]
        for folder in folders:
            for name in os.listdir(folder):
                if name.endswith(_TMP) and not (folder / name).is_dir():
                    self.remove(folder / name)
        if (self.base / f"seq{_TMP}").is_file():  # base_dir may hold others' files: only ours
            self.remove(self.base / f"seq{_TMP}")
        self.running_entries()
        if (self.side.folder / _SWEEP).exists():
            self.sweep()

    def sweep(self) -> None:
        """Delete the side files no entry names (left by a crash or a failed write). An
        entry that cannot be read leaves the mark for the next open, deleting nothing:
        the names it holds are unknown, and the store still opens."""
        named: set[str] = set()
        try:
            for _, task, _ in self.scan(tuple(TaskStatus), None):
                named |= _side_names(task)
        except OSError as exc:
            logger.bind(action="side_files_not_swept").warning(
                "file store {}: side files not swept, an entry cannot be read: {}", self.base, exc
            )
            return
        # Under the store's lock no write is in flight, so a file of any age may go.
        removed = self.side.sweep(named, min_age=-math.inf)
        self.dirty.add(self.side.folder)
        self.sync()  # the unlinks are durable before the mark that asks for them goes
        self.remove(self.side.folder / _SWEEP)
        if removed:
            logger.bind(action="side_files_swept").info(
                "file store {}: removed {} side files no entry names", self.base, removed
            )

    def insert(self, tasks: Sequence[Task], finishing: str | None = None) -> list[str]:
        """Store the tasks whose key is free, all or nothing; one id per task (the key
        holder's where the key was taken, the first of the batch winning within it)."""
        clash = next((t.id for t in tasks if self.find(t.id) is not None), None)
        if clash is not None:
            raise ValueError(f"task id {clash} already exists")
        ids, fresh, taken = [], [], dict[str, str]()
        for task in tasks:
            existing = task.key and (taken.get(task.key) or self.holder(task.key, finishing))
            if existing:
                ids.append(existing)
                continue
            if task.key and not task.status.is_terminal:  # a finished task holds no key
                taken[task.key] = task.id
            ids.append(task.id)
            fresh.append(task)
        if len({t.id for t in fresh}) < len(fresh):
            raise ValueError("a task id appears twice in one enqueue")
        self.store(fresh)
        return ids

    def store(self, tasks: Sequence[Task]) -> None:
        """Stage every entry and its links, then rename the entries into place."""
        staged: list[tuple[Path, Path]] = []
        first_file = len(self.written)
        try:
            for seq, task in enumerate(tasks, self.next_seq(len(tasks)) if tasks else 0):
                path = self.home(task, seq)
                staged.append((self.stage(path, self.encode(task, seq)), path))
                # Links to entries not yet there find nothing, so they are safe to leave
                # behind if this batch fails.
                if task.status is TaskStatus.PENDING:
                    self.link(task.id, path)
                if not task.status.is_terminal:
                    self.point_key(task)
            self.sync()  # the links are durable before any entry they point at appears
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            self.side.remove(self.written[first_file:])  # no entry names them yet
            raise
        for tmp, path in staged:
            self.move(tmp, path)

    def claim(
        self,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        worker_id: str,
        max_bytes: int | None = None,
        min_tasks: int = 1,
    ) -> list[Task]:
        claimed: list[Task] = []
        budget = ClaimBudget(max_bytes, min_tasks)
        for path in self.due_paths(queues, now) if limit > 0 else ():
            entry = self.read(path, decode_task)
            if entry is None:
                continue
            task, seq = entry
            if task.status is not TaskStatus.PENDING:
                self.place(path, task, seq)  # a crash stopped this entry's move halfway
            elif task.eta <= now:
                size = self.payload_size(task)
                if not budget.fits(size):
                    break  # the first that does not fit ends the claim: order is kept
                # First: never RUNNING without its payload.
                whole = self.with_files((path, task, seq), set_aside=True)
                if whole is None:
                    continue
                running = dataclasses.replace(
                    task,
                    status=TaskStatus.RUNNING,
                    started_at=now,
                    attempts=task.attempts + 1,
                    lease_token=uuid.uuid4().hex,
                    lease_until=lease_until,
                    worker_id=worker_id,
                )
                self.transition(path, running, seq, was=task)
                claimed.append(
                    dataclasses.replace(running, payload=whole.payload, result=whole.result)
                )
                budget.take(size)  # only once claimed: one set aside takes no place
                if len(claimed) >= limit:
                    break
        return claimed

    def next_due(self, queues: Sequence[str], now: float) -> float | None:
        horizon = eta_us(now)
        etas = (
            eta
            for folder in self.queue_folders(queues)
            for name in _json_names(folder)
            if (eta := key_field(name, 1)) is not None and eta > horizon
        )
        earliest = min(etas, default=None)
        return None if earliest is None else earliest / 1e6

    def due_paths(self, queues: Sequence[str], now: float) -> Iterator[Path]:
        """Pending entries whose name says they are due, in claim order: every candidate of
        a queue before any of the next, so later queues only get what earlier ones leave."""
        horizon = eta_us(now)
        for folder in self.queue_folders(queues):
            for name in sorted(_json_names(folder)):  # listed first: claims move entries out
                eta = key_field(name, 1)
                if eta is None:
                    self.quarantine(folder / name, "file name is not <P>-<E>-<S>-<id>.json")
                elif eta <= horizon:  # names round the eta down: the exact test comes later
                    yield folder / name

    def settle(self, s: Settlement) -> bool:
        path = self.at("running", s.task_id)
        entry = self.read(path, decode_task)
        if entry is None or not _holds(entry[0], s.lease_token):
            return False
        task, seq = entry
        settled = _settled(task, s, time.time())
        # The follow-up first: a crash now repeats the next run, never loses it. The settled
        # task is finished as far as keys go (as if settled first), so a follow-up carrying
        # its key is inserted, not merged into it. One whose id is taken is skipped, as
        # SQLite does: it must not fail the outcomes settled before it in this batch.
        # An interval task cancelled while it ran ends there: no next run.
        stopped = settled.status is TaskStatus.CANCELLED
        if s.follow_up is not None and not stopped and self.find(s.follow_up.id) is None:
            done = task.id if settled.status.is_terminal else None
            self.insert([s.follow_up], finishing=done)
        self.transition(path, settled, seq, was=task)
        return True

    def extend(self, leases: Mapping[str, str], lease_until: float) -> set[str]:
        lost = set()
        for task_id, token in leases.items():
            path = self.at("running", task_id)
            entry = self.read(path, decode_task)
            if entry is None or not _holds(entry[0], token):
                lost.add(task_id)
            else:
                # Strictly later than before, whatever the holder's clock says: observers
                # recognise a renewal by the change (see running_leases).
                until = max(lease_until, (entry[0].lease_until or 0) + RENEWAL_STEP)
                task = dataclasses.replace(entry[0], lease_until=until)
                self.write(path, self.encode(task, entry[1]))
        return lost

    def leases(self) -> list[Lease]:
        entries = self.running_entries()
        return [Lease(t.id, t.lease_token or "", t.lease_until) for _, t, _ in entries]

    def expired(self, now: float, limit: int) -> list[Task]:
        found = [e for e in self.running_entries() if (e[1].lease_until or 0) < now]
        found.sort(key=lambda e: e[1].lease_until or 0)
        return self.whole(found[: max(limit, 0)], set_aside=True)

    def whole(self, entries: Iterable[_Entry], set_aside: bool = False) -> list[Task]:
        """The tasks of ``entries`` with their side files read in (see :meth:`with_files`;
        those set aside are left out)."""
        found = (self.with_files(e, set_aside=set_aside) for e in entries)
        return [task for task in found if task is not None]

    def get(self, task_id: str, set_aside: bool = False) -> Task | None:
        found = self.find(task_id)
        return None if found is None else self.with_files(found, set_aside=set_aside)

    def outcome(self, task_id: str) -> Task | None:
        """The task without its payload (an empty one stands in)."""
        found = self.find(task_id)
        return None if found is None else self.with_files(found, ("result",))

    def cancel(self, task_id: str, now: float) -> Task | None:
        found = self.find(task_id)
        if found is None:
            return None
        whole = self.with_files(found)  # first: a damaged entry is set aside, not cancelled
        if whole is None:
            return None
        path, task, seq = found
        if task.status is TaskStatus.PENDING:
            cancelled = _finished(task, TaskStatus.CANCELLED, now)
            self.transition(path, cancelled, seq, was=task)
        elif task.status is TaskStatus.RUNNING and not task.cancel_requested:
            # Stays RUNNING, in place: its supervisor polls cancel_requests() and kills it.
            cancelled = dataclasses.replace(task, cancel_requested=True)
            self.write(path, self.encode(cancelled, seq))
        else:
            return whole
        return dataclasses.replace(cancelled, payload=whole.payload, result=whole.result)

    def cancel_requests(self, task_ids: Sequence[str]) -> set[str]:
        found = set()
        for task_id in dict.fromkeys(task_ids):
            entry = self.read(self.at("running", task_id), decode_task)
            if entry is not None and entry[0].status is TaskStatus.RUNNING:
                if entry[0].cancel_requested:
                    found.add(task_id)
        return found

    def list_tasks(
        self, status: TaskStatus, queues: Sequence[str] | None, limit: int
    ) -> list[Task]:
        entries = sorted(self.scan((status,), queues), key=lambda e: e[2])
        # Sorting by seq first makes ties come out in enqueue order, as in MemoryStorage.
        entries.sort(key=lambda e: e[1].finished_at or e[1].created_at, reverse=True)
        return self.whole(entries[: max(limit, 0)])

    def revive(self, task_ids: Sequence[str] | None, now: float) -> list[str]:
        found: Iterable[_Entry]
        if task_ids is None:
            found = self.scan((TaskStatus.DEAD,), None)
        else:
            found = (e for tid in dict.fromkeys(task_ids) if (e := self.find(tid)) is not None)
        entries = sorted((e for e in found if e[1].status in _REVIVABLE), key=lambda e: e[2])
        keys = {task.key for _, task, _ in entries if task.key}
        held = {key for key in keys if self.holder(key) is not None}
        allowed = set(one_per_key(((task.id, task.key) for _, task, _ in entries), held))
        revived = []
        for path, task, seq in entries:
            if task.id not in allowed:
                continue
            fresh = dataclasses.replace(
                task,
                status=TaskStatus.PENDING,
                attempts=0,
                crashes=0,
                eta=now,
                finished_at=None,
                expires_at=None,
                cancel_requested=False,
            )
            self.point_key(fresh)
            # Keeps seq: its FIFO place is that of its first enqueue.
            self.transition(path, fresh, seq, was=task)
            revived.append(task.id)
        return revived

    def purge(self, entries: Iterable[_Entry], limit: int) -> int:
        """Delete up to ``limit`` of ``entries`` (and their index links), first enqueued
        first, as MemoryStorage does; this reads them all before deleting any."""
        deleted, files = 0, set[str]()
        for path, task, _ in sorted(entries, key=lambda e: e[2])[: max(limit, 0)]:
            self.remove(path)
            self.remove(self.id_link(task.id))  # after the entry: a link to nothing is inert
            self.drop_key(task)
            files |= _side_names(task)
            deleted += 1
        self.drop_files(files)
        return deleted

    def stats(self, queues: Sequence[str] | None, now: float) -> QueueStats:
        tasks = [task for _, task, _ in self.scan(tuple(TaskStatus), queues)]
        return count_tasks(tasks, now)

    def queue_names(self) -> list[str]:
        return sorted({task.queue for _, task, _ in self.scan(tuple(TaskStatus), None)})

    def completed_since(self, queues: Sequence[str] | None, since: float) -> int:
        return sum(
            task.finished_at is not None and task.finished_at >= since
            for _, task, _ in self.scan((TaskStatus.COMPLETED,), queues)
        )

    def schedules(self) -> list[Schedule]:
        folder = self.base / "schedules"
        found = [self.read(folder / name, decode_schedule) for name in _json_names(folder)]
        return sorted((s for s in found if s is not None), key=lambda s: (s.next_run, s.id))

    def set_paused(self, schedule_id: str, paused: bool) -> Schedule | None:
        path = self.at("schedules", schedule_id)
        schedule = self.read(path, decode_schedule)
        if schedule is not None and schedule.paused != paused:
            schedule = dataclasses.replace(schedule, paused=paused)
            self.write(path, encode_schedule(schedule))
        return schedule

    def remove_schedule(self, schedule_id: str) -> bool:
        path = self.at("schedules", schedule_id)
        if not path.exists():
            return False
        self.remove(path)
        return True

    def fire_schedules(self, now: float, next_run: Callable[[Schedule, float], float]) -> list[str]:
        fired = []
        for schedule in self.schedules():
            if schedule.paused or schedule.next_run > now:
                continue
            task = schedule.task_for(schedule.next_run)
            self.insert([task])
            moved = dataclasses.replace(
                schedule, next_run=next_run(schedule, now), last_task_id=task.id
            )
            self.write(self.at("schedules", schedule.id), encode_schedule(moved))
            fired.append(task.id)
        return fired

    def workers(self, alive_since: float) -> list[WorkerInfo]:
        folder = self.base / "workers"
        infos = [self.read(folder / name, decode_worker) for name in sorted(_json_names(folder))]
        return [w for w in infos if w is not None and w.heartbeat_at >= alive_since]


def _read_regular(path: Path) -> bytes:
    """The bytes of the regular file at ``path``, never through a link.

    :raises OSError: ELOOP for a link; IsADirectoryError for a folder.
    :raises Corrupt: for another kind of file (a FIFO, a socket, a device).
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for files.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "a folder, not an entry", str(path))
        if not stat.S_ISREG(mode):
            raise Corrupt("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _json_names(folder: Path) -> list[str]:
    return [n for n in _names(folder) if n.endswith(".json")]


def _side_names(task: Task) -> set[str]:
    """The side files the entry of ``task`` (as read) names."""
    return {v.name for v in (task.payload, task.result) if isinstance(v, InSideFile)}


def _holds(task: Task, token: str) -> bool:
    return task.status is TaskStatus.RUNNING and task.lease_token == token


def _expired(task: Task, now: float) -> bool:
    return task.expires_at is not None and task.expires_at <= now


def _finished_before(task: Task, before: float) -> bool:
    return task.finished_at is not None and task.finished_at < before


def _finished(task: Task, status: TaskStatus, now: float) -> Task:
    """``task`` ended in ``status`` at ``now``, its retention clock started."""
    expires = None if task.result_ttl is None else now + task.result_ttl
    return dataclasses.replace(task, status=status, finished_at=now, expires_at=expires)


def _settled(task: Task, s: Settlement, now: float) -> Task:
    """The task after settlement ``s`` (the rules of MemoryStorage); ``now`` stands in for
    a missing ``s.finished_at``."""
    task = dataclasses.replace(
        task, lease_token=None, lease_until=None, crashes=task.crashes + int(s.crashed)
    )
    if s.error is not None:
        task = dataclasses.replace(task, error=s.error, history=(*task.history, s.error))
    end = s.finished_at if s.finished_at is not None else now
    if task.cancel_requested:  # a cancel wins over any outcome; a late result is dropped
        return _finished(dataclasses.replace(task, result=None), TaskStatus.CANCELLED, end)
    if s.status is TaskStatus.PENDING:
        return dataclasses.replace(
            task,
            status=TaskStatus.PENDING,
            attempts=task.attempts - int(s.uncharge),
            eta=s.eta if s.eta is not None else task.eta,
            worker_id=None,
        )
    return _finished(dataclasses.replace(task, result=s.result), s.status, end)
