"""SQLite storage: WAL, ``BEGIN IMMEDIATE`` writes, one-statement claims.

One connection per instance, in a thread of its own (:class:`SQLiteThread`): each
transaction is one plain function run there whole, so coroutines sharing the instance
never interleave statements of two transactions, and a transaction costs one hop between
the event loop and the thread however many statements it runs.
Other processes (producers, other supervisors) open their own connections: SQLite's file
locks and ``busy_timeout`` arbitrate between them, and a write that still meets a lock is
retried with jitter instead of surfacing "database is locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from omniq_mp import fastjson
from omniq_mp.crashpoints import crash_point
from omniq_mp.errors import StorageError
from omniq_mp.file_modes import FILE_MODE, create_private_file, make_private_dirs
from omniq_mp.models import Settlement, Task, TaskStatus
from omniq_mp.schedule import Schedule
from omniq_mp.sqlite_setup import (
    LOCK_RETRIES,
    is_locked,
    lock_pauses,
    open_connection,
    os_storage_error,
    storage_error,
)
from omniq_mp.sqlite_thread import SQLiteThread
from omniq_mp.storage.base import (
    RENEWAL_STEP,
    Lease,
    QueueStats,
    WorkerInfo,
    one_per_key,
    within_budget,
)
from omniq_mp.storage.group_commit import LoopGroups, Outcomes, ThreadGroups
from omniq_mp.storage.side_files import (
    SIDE_FILE_MIN,
    FiledTasks,
    SideFileMissing,
    SideFiles,
    UnreadableSideFile,
    file_payloads,
    has_large_payload,
)
from omniq_mp.storage.sqlite_codec import (
    COLUMNS,
    INSERT,
    INSERT_SCHEDULE,
    PAYLOAD,
    RESULT,
    SCHEDULE_COLUMNS,
    claim_sizes_statement,
    claim_statement,
    next_due_statement,
    quarantine_update,
    row_schedule,
    row_task,
    row_worker,
    schedule_row,
    settlement_rows,
    settlement_updates,
    task_inserts,
    task_row,
)

__all__ = ["SQLiteStorage"]

T = TypeVar("T")


class SQLiteStorage:
    """Tasks in one SQLite file.

    :param database_path: the database file; its folder is created if missing.
    :param synchronous: ``FULL`` (default) makes a returned enqueue survive power loss;
        ``NORMAL`` survives process crashes only, and commits faster.
    :param busy_timeout: seconds a statement waits for another process's lock.
    """

    def __init__(
        self, database_path: str | Path, *, synchronous: str = "FULL", busy_timeout: float = 5.0
    ) -> None:
        self.path = Path(database_path)
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout * 1000)
        self._synchronous_now = self._synchronous  # the connection's current mode
        self._thread: SQLiteThread | None = None
        # Connections of client threads that enqueue directly (enqueue_blocking).
        self._callers = threading.local()
        self._caller_conns: list[sqlite3.Connection] = []
        self._reported: set[tuple[str, Any]] = set()  # damaged rows already logged
        self._files = SideFiles.beside(self.path)  # payloads and results too large for a row
        # Enqueue calls that arrive during a commit share the next one (group_commit.py).
        self._loop_groups = LoopGroups(self._commit_group)
        self._thread_groups: tuple[int, ThreadGroups] | None = None  # (pid, groups)
        self._tidying: set[asyncio.Task[None]] = set()  # see enqueue

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open or create the database; refuse anything that is not an omniq_mp database."""
        if self._thread is not None:
            return
        _check_path(self.path)
        if _is_created(self.path):
            await self._connect()
            return
        # A new store: processes creating it at the same moment take turns, so none
        # mistakes another's half-written file for a stranger's empty one.
        lock_path = f"{self.path}-init.lock"
        try:
            lock_fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, FILE_MODE)
        except OSError as exc:
            raise os_storage_error(lock_path, exc, "create") from exc
        try:
            await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
            _refuse_empty(self.path)
            # Created 0600 before SQLite opens it, so others never get a moment to open
            # it; its -wal, -shm and -journal files then take the same mode.
            try:
                create_private_file(self.path)
            except OSError as exc:
                raise os_storage_error(self.path, exc, "create") from exc
            await self._connect()
        finally:
            os.close(lock_fd)  # closing releases the lock

    async def _connect(self) -> None:
        self._thread = SQLiteThread("omniq-sqlite")
        self._synchronous_now = self._synchronous
        try:
            await self._thread.open(
                lambda: open_connection(
                    self.path, synchronous=self._synchronous, busy_ms=self._busy_ms
                )
            )
        except sqlite3.Error as exc:
            await self.close()
            error = storage_error(self.path, exc)
            raise type(error)(f"cannot open SQLite store {error}") from exc
        schema = resources.files("omniq_mp.storage").joinpath("sqlite_schema.sql").read_text()
        try:
            await self._transaction(lambda conn: _run_script(conn, schema))
        except BaseException:
            await self.close()
            raise
        if self._files.exists():
            await self._sweep_side_files()

    async def _sweep_side_files(self) -> None:
        # Files a crash (or an interrupted enqueue) left between writing a side file and
        # committing its row. Only old ones: a younger one may be another process's,
        # about to be committed.
        rows = await self._read(
            f"SELECT {_SIDE_FILE_NAMES} FROM tasks "
            "WHERE typeof(result) = 'text' OR typeof(payload) = 'text'"
        )
        referenced = {str(name) for row in rows for name in row if name is not None}
        removed = await asyncio.to_thread(self._files.sweep, referenced, _SIDE_FILE_GRACE)
        if removed:
            logger.bind(action="side_files_swept").info(
                "{}: removed {} side file(s) no task refers to", self.path, removed
            )

    async def close(self) -> None:
        """Close the connection (idempotent), after the enqueue calls still waiting."""
        await self._loop_groups.drain()
        if self._tidying:  # side files of cancelled enqueues, now that their commits are over
            await asyncio.wait(self._tidying)
        thread, self._thread = self._thread, None
        if thread is not None:
            await thread.close()
        callers, self._caller_conns = self._caller_conns, []
        for conn in callers:
            conn.close()

    # -- transactions ------------------------------------------------------------------------

    async def _transaction(
        self, body: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> T:
        """Run ``body`` in BEGIN IMMEDIATE ... COMMIT in the connection's thread (one hop
        for the whole transaction), retrying when another process holds the write lock
        past busy_timeout.

        :param durable: False for writes that may be lost in a power cut without losing
            work (claims, lease renewals, heartbeats): their commit skips the fsync. A lost
            claim only means the task runs again, which a power cut mid-run causes anyway;
            and the next durable commit syncs the whole WAL, these frames included.
        """
        thread = self._open_thread()
        wanted = self._synchronous if durable else "NORMAL"
        for pause in lock_pauses():
            try:
                return await thread.run(self._in_transaction, body, wanted)
            except sqlite3.Error as exc:
                _raise_unless_locked(self.path, exc)
            await asyncio.sleep(pause)
        raise _stayed_locked(self.path)

    def _in_transaction(
        self, conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T], sync: str
    ) -> T:
        # In the connection's thread: nothing else runs on the connection meanwhile.
        if sync != self._synchronous_now:  # only FULL stores have anything to relax
            conn.execute(f"PRAGMA synchronous = {sync}")
            self._synchronous_now = sync
        return _commit(conn, body)

    async def _read(
        self,
        sql: str,
        params: Iterable[Any] = (),
        fetch: Callable[[sqlite3.Connection, str, Sequence[Any]], list[Any]] | None = None,
    ) -> list[Any]:
        """Rows of one query, read by ``fetch`` (default: plain ``fetchall``) in the
        store's thread; SQLite errors come out as StorageErrors of their kind."""
        try:
            return await self._open_thread().run(fetch or _fetchall, sql, tuple(params))
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from exc

    def _open_thread(self) -> SQLiteThread:
        if self._thread is None:
            raise StorageError(f"SQLite store {self.path} is not open; call open() first")
        return self._thread

    # -- the protocol ------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[Task]) -> list[str]:
        """Insert all tasks in one transaction; a task whose ``key`` matches an unfinished
        task is not inserted and that task's id is returned in its place.

        Calls made while another call's commit is under way are committed together once
        it ends, in the order they were made (group commit): a hundred coroutines
        enqueueing at once pay for a few fsyncs, not a hundred. Each call's tasks stay all
        or nothing. Payloads of ``SIDE_FILE_MIN`` bytes or more are first written to side
        files (side_files.py), which the rows name.
        """
        if not has_large_payload(tasks):
            return await self._loop_groups.enqueue(tasks)
        writing = asyncio.ensure_future(asyncio.to_thread(file_payloads, self._files, tasks))
        try:
            filed = await asyncio.shield(writing)
        except asyncio.CancelledError:  # the writing goes on: its files are never named
            writing.add_done_callback(self._discard_written)
            raise
        try:
            ids = await self._loop_groups.enqueue(filed)
        except asyncio.CancelledError:
            # Its commit may still come, with the group under way: tidy once that is over.
            tidying = asyncio.ensure_future(self._tidy(filed, after_commits=True))
            self._tidying.add(tidying)
            tidying.add_done_callback(self._tidying.discard)
            raise
        except Exception:
            await self._tidy(filed)
            raise
        await self._tidy(filed)
        return ids

    async def _tidy(self, filed: FiledTasks, after_commits: bool = False) -> None:
        """Remove the side files of ``filed`` no row names, once its enqueue is over."""
        if after_commits:
            await self._loop_groups.drain()
        with contextlib.suppress(StorageError):  # closed meanwhile: the sweep's job
            await self._open_thread().run(
                self._remove_unnamed, filed.filed_ids(), filed.names.values()
            )

    def _discard_written(self, writing: asyncio.Future[FiledTasks]) -> None:
        if not writing.cancelled() and writing.exception() is None:
            self._discard(writing.result().names.values())

    async def _commit_group(self, batches: list[Sequence[Task]]) -> Outcomes:
        try:
            return await self._transaction(_enqueue_group_body(batches))
        except sqlite3.IntegrityError as exc:  # a group of one: its call is refused
            return [_duplicate_id(exc)]

    def enqueue_blocking(self, tasks: Sequence[Task]) -> list[str]:
        """:meth:`enqueue` in the calling thread, on a connection of that thread's own.

        The synchronous client's path: a script's ``q.enqueue(...)`` then costs one commit
        and no trip through an event loop and the store's thread (two thread switches
        each way, which an idle machine pays in wake-up latency). Threads that enqueue at
        the same moment share commits, as coroutines do.
        """
        groups = self._thread_groups
        if groups is None or groups[0] != os.getpid():  # a forked child starts afresh
            groups = self._thread_groups = (os.getpid(), ThreadGroups(self._commit_blocking))
        if not has_large_payload(tasks):
            return groups[1].enqueue(tasks)
        filed = file_payloads(self._files, tasks)
        try:
            ids = groups[1].enqueue(filed)
        except Exception:
            self._tidy_blocking(filed)
            raise
        # Not after KeyboardInterrupt: another thread may still be committing the call,
        # and the sweep at the next open removes what it leaves unused.
        self._tidy_blocking(filed)
        return ids

    def _tidy_blocking(self, filed: FiledTasks) -> None:
        with contextlib.suppress(StorageError):  # closed meanwhile: the sweep's job
            conn = self._caller_connection()
            self._remove_unnamed(conn, filed.filed_ids(), filed.names.values())

    def _remove_unnamed(
        self, conn: sqlite3.Connection, ids: Sequence[str], files: Iterable[str]
    ) -> None:
        """Remove those of ``files`` (side files just written for the tasks ``ids``) that
        no row of those tasks names, once the write that could have named them is over:
        a task whose key was held, a refused call, a fenced settlement, a next run not
        stored. Read from the rows, not inferred from what the call returned: a task
        enqueued again under its own id and key gets its own id back, and a failure may
        be reported after its commit landed. If even this read fails, the files wait for
        the next sweep."""
        files = set(files)
        if not files:
            return
        named: set[str] = set()
        try:
            for chunk, marks in _in_lists(ids):
                sql = f"SELECT {_SIDE_FILE_NAMES} FROM tasks WHERE id IN ({marks})"
                named.update(n for row in _fetchall(conn, sql, chunk) for n in row if n)
        except sqlite3.Error as exc:
            logger.bind(action="side_files_left").warning(
                "{}: unused side files left for the next sweep: {}", self.path, exc
            )
            return
        self._discard(files - named)

    def _discard(self, names: Iterable[str]) -> None:
        # Called once the caller's answer is settled: a file that cannot be removed is
        # left for the next sweep, never turned into an error of a call that succeeded.
        try:
            self._files.remove(names)
        except OSError as exc:
            logger.bind(action="side_files_left").warning(
                "{}: unused side files left for the next sweep: {}", self.path, exc
            )

    def _commit_blocking(self, batches: list[Sequence[Task]]) -> Outcomes:
        conn = self._caller_connection()
        body = _enqueue_group_body(batches)
        try:
            for pause in lock_pauses():
                try:
                    return _commit(conn, body)
                except sqlite3.Error as exc:
                    _raise_unless_locked(self.path, exc)
                time.sleep(pause)
        except sqlite3.IntegrityError as exc:  # a group of one: its call is refused
            return [_duplicate_id(exc)]
        raise _stayed_locked(self.path)

    def get_blocking(self, task_id: str) -> Task | None:
        """:meth:`get` in the calling thread, on that thread's own connection, without the
        payload (as :meth:`get_outcomes`): how the synchronous client waits for a result
        without two trips through the store's thread and the event loop for every look."""
        conn = self._caller_connection()
        try:
            rows = self._rows_with_side_files(conn, f"{_SELECT_OUTCOMES} WHERE id = ?", (task_id,))
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from exc
        return row_task(rows[0]) if rows else None

    def _caller_connection(self) -> sqlite3.Connection:
        self._open_thread()  # the same "not open" error as every other method
        held: tuple[int, sqlite3.Connection] | None = getattr(self._callers, "conn", None)
        # A forked child never uses its parent's connection (SQLite forbids it).
        if held is None or held[0] != os.getpid():
            conn = open_connection(
                self.path, synchronous=self._synchronous, busy_ms=self._busy_ms,
                check_same_thread=False,  # so close() may close it from its own thread
            )  # fmt: skip
            held = (os.getpid(), conn)
            self._callers.conn = held
            self._caller_conns.append(conn)
        return held[1]

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
        """One UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING: atomic across processes.

        Queues are served in the order given; inside a queue, higher priority first, then
        earlier eta, then first enqueued. Each queue's candidates come from the partial
        index ``tasks_claimable`` (one indexed scan per queue, stopped at ``limit``).
        With ``max_bytes``, the candidates' sizes are read first in the same transaction
        (side files by their size on disk, unread) and ``n`` lowered to what fits.
        A candidate whose side file is missing is set aside as the claim reads it, and
        takes no place in the count.
        """
        if limit <= 0 or not queues:
            return []
        body = self._claim_body(queues, limit, now, lease_until, worker_id, max_bytes, min_tasks)
        return _in_claim_order(await self._transaction(body, durable=False), queues)

    def _claim_body(
        self,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        worker_id: str,
        max_bytes: int | None,
        min_tasks: int,
    ) -> Callable[[sqlite3.Connection], list[tuple[Task, int]]]:
        """The claim's work inside a transaction: the tasks claimed, each with its seq."""
        token = uuid.uuid4().hex  # one token per claim batch; a task's token is token:id
        sql = claim_statement(len(queues))

        def body(conn: sqlite3.Connection) -> list[tuple[Task, int]]:
            n = (
                limit
                if max_bytes is None
                else self._fitting(conn, queues, now, limit, max_bytes, min_tasks)
            )
            params = (token, lease_until, worker_id, now, *_candidate_params(queues, now, n))
            rows = self._rows_with_side_files(conn, sql, params)
            # Decoded inside the transaction: a row that cannot be read is set aside in the
            # same commit that claimed it, so it neither strands the rest of the batch nor
            # is claimed again.
            claimed, damaged = _decode_rows(rows)
            _quarantine(conn, damaged, now)
            return claimed

        return body

    def _fitting(
        self,
        conn: sqlite3.Connection,
        queues: Sequence[str],
        now: float,
        limit: int,
        max_bytes: int,
        min_tasks: int,
    ) -> int:
        """How many of the claim's candidates it takes (:func:`within_budget`)."""
        params = _candidate_params(queues, now, limit)
        rows = _fetchall(conn, claim_sizes_statement(len(queues)), params)
        sizes = (
            self._files.size(name) if isinstance(name, str) else int(length or 0)
            for name, length in rows
        )
        return within_budget(sizes, max_bytes, min_tasks)

    async def next_due(self, queues: Sequence[str], now: float) -> float | None:
        """The earliest ETA after ``now`` among PENDING tasks of ``queues`` (None: none);
        one index seek per queue and priority (see ``next_due_statement``)."""
        if not queues:
            return None
        [(due,)] = await self._read(next_due_statement(len(queues)), [*queues, now])
        # A REAL column may hold anything if written behind our back: only a number is a
        # time (the supervisor ignores one that is not finite).
        return float(due) if type(due) in (int, float) else None

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply outcomes in one transaction; each is fenced by its lease token.

        The fence is checked with one SELECT and the writes go out as ``executemany``
        batches, all in one call into the connection's thread. Results, and payloads of
        interval tasks' next runs, of ``SIDE_FILE_MIN`` bytes or more are first written to
        files of their own (side_files.py) and the rows refer to them.
        """
        applied, _ = await self._settle_then(settlements, None)
        return applied

    async def settle_and_claim(
        self,
        settlements: Sequence[Settlement],
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        worker_id: str,
        max_bytes: int | None = None,
        min_tasks: int = 1,
    ) -> tuple[list[bool], list[Task]]:
        """:meth:`settle`, then :meth:`claim`, in one fully synced transaction: what each
        would return. A supervisor draining short tasks settles and claims all the time,
        and the store's one thread runs one transaction at a time, so a claim waited
        behind each settle; together they pay one BEGIN, one commit and one trip into the
        thread. Either failing rolls back both."""
        if limit <= 0 or not queues:
            return await self.settle(settlements), []
        body = self._claim_body(queues, limit, now, lease_until, worker_id, max_bytes, min_tasks)
        applied, claimed = await self._settle_then(settlements, body)
        return applied, _in_claim_order(claimed or [], queues)

    async def _settle_then(
        self,
        settlements: Sequence[Settlement],
        then: Callable[[sqlite3.Connection], T] | None,
    ) -> tuple[list[bool], T | None]:
        """Settle ``settlements`` and run ``then`` after them in the same transaction."""
        files = await self._to_side_files(settlements)
        try:
            applied, after = await self._settle(settlements, files, then)
        except Exception:  # rolled back: no row names them
            await asyncio.to_thread(self._files.remove, files.values())
            raise
        # Not when cancelled: its commit may still land (the transaction runs on in the
        # store's thread), and the sweep at the next open removes what it leaves unused.
        if files:
            # Fenced attempts, results a cancel discarded and next runs not stored (a
            # cancel, a held key) leave their files unused.
            ids = list({s.task_id for s in settlements if id(s) in files})
            ids += [s.follow_up.id for s in settlements if s.follow_up and id(s.follow_up) in files]
            with contextlib.suppress(StorageError):  # closed meanwhile: the sweep's job
                await self._open_thread().run(self._remove_unnamed, ids, files.values())
        return applied, after

    async def _to_side_files(self, settlements: Sequence[Settlement]) -> dict[int, str]:
        """Write each result, and each next run's payload, of ``SIDE_FILE_MIN`` bytes or
        more to a file of its own; returns the file names by ``id()`` of their settlement
        (a result) or of the next run's task (a payload)."""
        files: dict[int, str] = {}
        try:
            for s in settlements:
                if s.result is not None and len(s.result) >= SIDE_FILE_MIN:
                    files[id(s)] = await asyncio.to_thread(self._files.write, s.result)
                if (t := s.follow_up) is not None and len(t.payload) >= SIDE_FILE_MIN:
                    files[id(t)] = await asyncio.to_thread(self._files.write, t.payload, "payload")
        except BaseException:
            await asyncio.to_thread(self._files.remove, files.values())
            raise
        return files

    async def _settle(
        self,
        settlements: Sequence[Settlement],
        files: Mapping[int, str],
        then: Callable[[sqlite3.Connection], T] | None,
    ) -> tuple[list[bool], T | None]:
        def settle(conn: sqlite3.Connection) -> list[bool]:
            tokens = _current_tokens(conn, [s.task_id for s in settlements])
            applied = []
            for s in settlements:
                # pop: a second settlement of one attempt in the same batch is stale too.
                ok = s.task_id in tokens and tokens[s.task_id] == s.lease_token
                if ok:
                    del tokens[s.task_id]
                applied.append(ok)
            chosen = [s for s, ok in zip(settlements, applied, strict=True) if ok]
            requeue, finish = settlement_rows(chosen, time.time())
            if files:  # those results are in files: the rows hold the files' names (TEXT)
                names = {s.task_id: files[id(s)] for s in chosen if id(s) in files}
                for row in finish:
                    row["result"] = names.get(row["id"], row["result"])
            limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            for statement, params in settlement_updates(requeue, finish, limit):
                conn.execute(statement, params)
            follow_ups = {s.task_id: s.follow_up for s in chosen if s.follow_up is not None}
            if follow_ups:
                # An interval task cancelled while it ran ends there: no next run.
                stopped = _cancelled(conn, list(follow_ups))
                rows = [_filed_row(t, files) for i, t in follow_ups.items() if i not in stopped]
                # A follow-up whose key another unfinished task already holds is skipped
                # (OR IGNORE), never allowed to fail the whole batch of outcomes.
                conn.executemany(INSERT.replace("INSERT", "INSERT OR IGNORE", 1), rows)
            return applied

        def body(conn: sqlite3.Connection) -> tuple[list[bool], T | None]:
            return settle(conn), None if then is None else then(conn)

        if not settlements and then is None:
            return [], None
        return await self._transaction(body)

    async def extend_leases(self, leases: Mapping[str, str], lease_until: float) -> set[str]:
        """Renew in one transaction; ids whose token no longer matches are reported lost."""

        def body(conn: sqlite3.Connection) -> set[str]:
            tokens = _current_tokens(conn, list(leases))
            held = [tid for tid, token in leases.items() if tokens.get(tid) == token]
            # Never the value already stored (a holder's clock may stand still or step
            # back): observers see a renewal only as a change (see running_leases).
            conn.executemany(
                "UPDATE tasks SET lease_until = max(?, coalesce(lease_until, 0) + ?) WHERE id = ?",
                [(lease_until, RENEWAL_STEP, tid) for tid in held],
            )
            return set(leases) - set(held)

        return await self._transaction(body, durable=False) if leases else set()

    async def expired(self, now: float, limit: int) -> list[Task]:
        """RUNNING tasks past their lease (uses the partial index tasks_leased); damaged
        rows among them are quarantined, never returned."""
        return await self._tasks(
            "WHERE status = 'RUNNING' AND lease_until < ? ORDER BY lease_until LIMIT ?",
            (now, limit),
            damaged=_QUARANTINE,
        )

    async def running_leases(self) -> list[Lease]:
        """(id, token, lease end) of every RUNNING task: a read of the partial index
        tasks_leased and three columns, never the payloads."""
        rows = await self._read(
            "SELECT id, lease_token, lease_until FROM tasks WHERE status = 'RUNNING'"
        )
        return [Lease(str(r[0]), str(r[1] or ""), r[2]) for r in rows]

    async def get(self, task_id: str) -> Task | None:
        """One task by id; a damaged row is a StorageError naming it."""
        tasks = await self._tasks("WHERE id = ?", (task_id,), damaged=_RAISE)
        return tasks[0] if tasks else None

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        """The tasks among ``task_ids`` that exist; damaged rows among them are quarantined
        (this is how a supervisor reads the tasks of leases it found abandoned, which must
        not stay RUNNING for ever), never returned."""
        return await self._many(task_ids, _SELECT_TASKS)

    async def get_outcomes(self, task_ids: Sequence[str]) -> list[Task]:
        """:meth:`get_many` with every payload left out (an empty one stands in): how
        clients waiting for results read their tasks, again at every look. Reading a
        100 MiB payload each time made ``get_result`` return 1.2 s after its task."""
        return await self._many(task_ids, _SELECT_OUTCOMES)

    async def _many(self, task_ids: Sequence[str], select: str) -> list[Task]:
        found: list[Task] = []
        for chunk, marks in _in_lists(list(task_ids)):
            where = f"WHERE id IN ({marks})"
            found += await self._tasks(where, chunk, damaged=_QUARANTINE, select=select)
        return found

    async def cancel(self, task_id: str, now: float) -> Task | None:
        """Cancel a PENDING task at once; flag a RUNNING one for its supervisor to kill."""

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE tasks SET status = 'CANCELLED', finished_at = ?, "
                "expires_at = ? + result_ttl WHERE id = ? AND status = 'PENDING'",
                (now, now, task_id),
            )
            conn.execute(
                "UPDATE tasks SET cancel_requested = 1 WHERE id = ? AND status = 'RUNNING'",
                (task_id,),
            )

        await self._transaction(body)
        return await self.get(task_id)

    async def key_holder(self, key: str) -> str | None:
        """The id of the unfinished task holding ``key``, or None."""
        rows = await self._read(_KEY_HOLDER, (key,))
        return str(rows[0][0]) if rows else None

    async def cancel_requests(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` that are RUNNING with a cancellation requested."""
        found: set[str] = set()
        for chunk, marks in _in_lists(list(task_ids)):
            rows = await self._read(
                "SELECT id FROM tasks WHERE cancel_requested = 1 AND status = 'RUNNING' "
                f"AND id IN ({marks})",
                chunk,
            )
            found.update(r[0] for r in rows)
        return found

    async def list_tasks(
        self, status: TaskStatus, queues: Sequence[str] | None, limit: int
    ) -> list[Task]:
        """Tasks in ``status``, newest first; damaged rows are skipped (and logged)."""
        where, params = "WHERE status = ?", [status.value]
        if queues is not None:
            where += f" AND queue IN ({', '.join('?' * len(queues))})"
            params += list(queues)
        return await self._tasks(
            f"{where} ORDER BY coalesce(finished_at, created_at) DESC LIMIT ?",
            [*params, limit],
            damaged=_SKIP,
        )

    async def revive(self, task_ids: Sequence[str] | None, now: float) -> list[str]:
        """Re-queue DEAD tasks (all of them when ``task_ids`` is None) or the given FAILED
        or DEAD ones, with fresh budgets; returns the ids re-queued, first enqueued first,
        leaving one unfinished task per key (:func:`~omniq_mp.storage.base.one_per_key`)."""
        if task_ids is None:
            where, params = "WHERE status = 'DEAD'", []
        else:
            where = (
                f"WHERE status IN ('DEAD', 'FAILED') AND id IN ({', '.join('?' * len(task_ids))})"
            )
            params = list(task_ids)

        def body(conn: sqlite3.Connection) -> list[str]:
            sql = f"SELECT id, unique_key FROM tasks {where} ORDER BY seq"
            found = _fetchall(conn, sql, params)
            keys = list({key for _, key in found if key is not None})
            ids = one_per_key(found, _held_keys(conn, keys) if keys else set())
            for chunk, marks in _in_lists(ids):
                conn.execute(
                    "UPDATE tasks SET status = 'PENDING', attempts = 0, crashes = 0, eta = ?, "
                    "finished_at = NULL, expires_at = NULL, cancel_requested = 0 "
                    f"WHERE id IN ({marks})",
                    [now, *chunk],
                )
            return ids

        return await self._transaction(body)

    async def purge_expired(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` finished tasks whose retention ended."""
        return await self._delete("WHERE expires_at <= ?", [now], limit)

    async def purge_finished(
        self, before: float, statuses: Sequence[TaskStatus], limit: int
    ) -> int:
        """Delete up to ``limit`` tasks in ``statuses`` that finished before ``before``."""
        marks = ", ".join("?" * len(statuses))
        return await self._delete(
            f"WHERE finished_at < ? AND status IN ({marks})",
            [before, *(s.value for s in statuses)],
            limit,
        )

    async def _delete(self, where: str, params: list[Any], limit: int) -> int:
        def body(conn: sqlite3.Connection) -> list[Any]:
            return _fetchall(
                conn,
                f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks {where} LIMIT ?) "
                f"RETURNING {_SIDE_FILE_NAMES}",
                [*params, limit],
            )

        deleted = await self._transaction(body)
        # After the commit: a crash before this line leaves files for the next sweep.
        files = [str(name) for row in deleted for name in row if name is not None]
        if files:
            await asyncio.to_thread(self._files.remove, files)
        return len(deleted)

    async def _tasks(
        self, where: str, params: Sequence[Any], *, damaged: str, select: str | None = None
    ) -> list[Task]:
        """The decodable tasks ``where`` selects (with ``select``, by default every column);
        ``damaged`` says what becomes of the rest: _RAISE (StorageError naming the row),
        _SKIP (logged once), or _QUARANTINE."""
        sql = f"{select or _SELECT_TASKS} {where}"
        rows = await self._read(sql, params, fetch=self._rows_with_side_files)
        if damaged == _RAISE:
            return [row_task(r) for r in rows]
        found, bad = _decode_rows(rows)
        if bad and damaged == _QUARANTINE:
            await self._quarantine_seqs([r[-1] for r, _ in bad])
        for r, why in bad if damaged == _SKIP else ():
            self._report(("task", r[-1]), f"skipped: {why}")
        return [task for task, _ in found]

    async def _quarantine_seqs(self, seqs: Sequence[int]) -> None:
        """Quarantine the task rows ``seqs`` that still fail to decode (read again inside
        the write transaction, so a row rewritten meanwhile is left alone)."""

        def body(conn: sqlite3.Connection) -> None:
            rows = self._rows_with_side_files(
                conn,
                f"{_SELECT_TASKS} WHERE seq IN ({', '.join('?' * len(seqs))})",
                list(seqs),
            )
            _quarantine(conn, _decode_rows(rows)[1], time.time())

        await self._transaction(body)

    def _rows_with_side_files(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[Any]
    ) -> list[Any]:
        """Task rows as ``_fetchall`` gives them, but each payload or result kept in a side
        file read back in its place (in the thread that reads the rows, never the event
        loop's). A missing file leaves its name and one that cannot be read an
        :class:`UnreadableSideFile`; the codec reports either as damage (side_files.py)."""
        rows = _fetchall(conn, sql, params)
        for i, row in enumerate(rows):
            if isinstance(row[PAYLOAD], str) or isinstance(row[RESULT], str):
                values = list(row)
                for column in (PAYLOAD, RESULT):
                    if isinstance(name := values[column], str):
                        try:
                            values[column] = self._files.read(name)
                        except SideFileMissing:
                            pass
                        except StorageError as exc:
                            values[column] = UnreadableSideFile(name, str(exc))
                rows[i] = tuple(values)
        return rows

    def _report(self, key: tuple[str, Any], message: str) -> None:
        # Once per row and connection: a damaged row is met again on every scan.
        if key not in self._reported:
            self._reported.add(key)
            logger.bind(action="storage_damaged_row").warning("{}: {}", self.path, message)

    async def stats(self, queues: Sequence[str] | None, now: float) -> QueueStats:
        """Counts by status in one grouped query."""
        where, params = "", list[Any]([now])
        if queues is not None:
            where = f"WHERE queue IN ({', '.join('?' * len(queues))})"
            params += list(queues)
        rows = await self._read(
            "SELECT status, count(*), "
            "sum(status = 'PENDING' AND eta <= ?), sum(status = 'PENDING' AND attempts > 0) "
            f"FROM tasks {where} GROUP BY status",
            params,
        )
        counts: dict[str, int] = {}
        for status, n, due, retrying in rows:
            if status not in _STATUSES:  # written behind our back: no count it belongs to
                self._report(("status", status), f"{n} task row(s) of unknown status {status!r}")
                continue
            counts[status.lower()] = n
            if status == "PENDING":
                counts.update(due=due or 0, retrying=retrying or 0)
        return QueueStats(**counts)

    async def add_schedule(self, schedule: Schedule) -> None:
        """Insert a schedule."""

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                INSERT_SCHEDULE,
                schedule_row(schedule),
            )

        await self._transaction(body)

    async def schedules(self) -> list[Schedule]:
        """Every schedule, soonest first."""
        rows = await self._read(f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY next_run")
        return [row_schedule(r) for r in rows]  # a damaged one is a StorageError naming it

    async def set_paused(self, schedule_id: str, paused: bool) -> Schedule | None:
        """Pause or resume a schedule."""

        def body(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE schedules SET paused = ? WHERE id = ?", (int(paused), schedule_id))

        await self._transaction(body)
        rows = await self._read(
            f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?", (schedule_id,)
        )
        return row_schedule(rows[0]) if rows else None

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule."""

        def body(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
            return cursor.rowcount == 1

        return await self._transaction(body)

    async def fire_schedules(
        self, now: float, next_run: Callable[[Schedule, float], float]
    ) -> list[str]:
        """Fire due schedules inside one BEGIN IMMEDIATE transaction: a second supervisor
        waits for it, then finds ``next_run`` already moved on."""

        def body(conn: sqlite3.Connection) -> list[str]:
            rows = _fetchall(
                conn,
                f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE paused = 0 AND next_run <= ?",
                (now,),
            )
            fired = []
            for schedule in self._readable_schedules(rows):
                task = schedule.task_for(schedule.next_run)
                conn.execute(INSERT, task_row(task))
                conn.execute(
                    "UPDATE schedules SET next_run = ?, last_task_id = ? WHERE id = ?",
                    (next_run(schedule, now), task.id, schedule.id),
                )
                fired.append(task.id)
            return fired

        return await self._transaction(body)

    def _readable_schedules(self, rows: Iterable[Sequence[Any]]) -> Iterator[Schedule]:
        # One damaged schedule must not stop every other schedule from firing.
        for r in rows:
            try:
                yield row_schedule(r)
            except StorageError as exc:
                self._report(("schedule", r[0]), f"skipped: {exc}")

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Upsert the supervisor's row."""
        row = (
            info.worker_id,
            info.hostname,
            info.pid,
            info.procs,
            ",".join(info.queues),
            info.started_at,
            info.heartbeat_at,
            json.dumps(dict(info.details)),
        )

        def body(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

        await self._transaction(body, durable=False)

    async def remove_worker(self, worker_id: str) -> None:
        """Delete the supervisor's row."""

        def body(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

        await self._transaction(body)

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        """Rows with a recent heartbeat."""
        rows = await self._read("SELECT * FROM workers WHERE heartbeat_at >= ?", (alive_since,))
        found = []
        for r in rows:
            try:
                found.append(row_worker(r))
            except StorageError as exc:  # one damaged heartbeat must not hide the others
                self._report(("worker", r[0]), f"skipped: {exc}")
        return found

    async def queue_names(self) -> list[str]:
        """Distinct queue names (an index-only scan of tasks_claimable would miss finished
        queues, so this reads the queue column; fine for a monitoring call)."""
        rows = await self._read("SELECT DISTINCT queue FROM tasks ORDER BY queue")
        return [str(r[0]) for r in rows]

    async def completed_since(self, queues: Sequence[str] | None, since: float) -> int:
        """Count COMPLETED tasks finished at or after ``since`` (index tasks_finished)."""
        where, params = "", list[Any]([since])
        if queues is not None:
            where = f" AND queue IN ({', '.join('?' * len(queues))})"
            params += list(queues)
        rows = await self._read(
            f"SELECT count(*) FROM tasks WHERE status = 'COMPLETED' AND finished_at >= ?{where}",
            params,
        )
        return int(rows[0][0])


def _check_path(path: Path) -> None:
    """Fail clearly on paths SQLite would misreport, and never create over a stranger's file."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"store folder {folder} exists and is not a directory")
    if path.is_dir():
        raise StorageError(f"database path {path} is a directory, not a SQLite file")
    try:
        make_private_dirs(folder)  # 0700: whoever can write the store can run code
    except OSError as exc:
        raise StorageError(f"cannot create store folder {folder}: {exc.strerror}") from exc


def _is_created(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _refuse_empty(path: Path) -> None:
    """Never create over a stranger's empty file (called under the creation lock)."""
    if path.exists() and path.stat().st_size == 0:
        raise StorageError(
            f"{path} exists but is empty (0 bytes), so it is not an omniq_mp database; "
            "remove it to start a new store"
        )


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript would COMMIT our BEGIN IMMEDIATE; run statement by statement instead.
    for statement in script.split("\n\n"):
        lines = [ln for ln in statement.splitlines() if not ln.lstrip().startswith("--")]
        if "".join(lines).strip():
            conn.execute("\n".join(lines))


_IN_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit
# The unfinished task holding a key (the partial unique index allows one).
_KEY_HOLDER = "SELECT id FROM tasks WHERE unique_key = ? AND status IN ('PENDING', 'RUNNING')"
# Task rows as row_task decodes them, seq last (it names a damaged row to quarantine).
_SELECT_TASKS = f"SELECT {COLUMNS}, seq FROM tasks"
# The same with an empty payload in place of each task's: what waiters read, at every
# look, of tasks whose payloads may be hundreds of megabytes.
_SELECT_OUTCOMES = _SELECT_TASKS.replace(" payload,", " X'' AS payload,", 1)
# Unreferenced side files younger than this are left alone by the sweep: they may be
# another process's, written a moment before its enqueue or settle commits.
_SIDE_FILE_GRACE = 3600.0
# A row's side files (NULL where the value is in the row), read without its large values:
# typeof() does not load a BLOB.
_SIDE_FILE_NAMES = (
    "CASE WHEN typeof(result) = 'text' THEN result END, "
    "CASE WHEN typeof(payload) = 'text' THEN payload END"
)
_STATUSES = frozenset(s.value for s in TaskStatus)
# What _tasks does with a row that does not decode.
_RAISE, _SKIP, _QUARANTINE = "raise", "skip", "quarantine"


def _candidate_params(queues: Sequence[str], now: float, limit: int) -> list[Any]:
    """The parameters of a claim's candidates (sqlite_codec's ``_candidates``)."""
    return [*(value for q in queues for value in (q, now, limit)), limit]


def _decode_rows(
    rows: Iterable[Sequence[Any]],
) -> tuple[list[tuple[Task, int]], list[tuple[Sequence[Any], str]]]:
    """(task, seq) of each row selected with ``COLUMNS, seq`` that decodes, and (row, what
    is wrong with it) of each that does not."""
    found, damaged = [], []
    for r in rows:
        try:
            found.append((row_task(r), r[-1]))
        except StorageError as exc:
            damaged.append((r, str(exc)))
    return found, damaged


def _quarantine(
    conn: sqlite3.Connection, damaged: Sequence[tuple[Sequence[Any], str]], now: float
) -> None:
    """Inside the caller's write transaction: make each damaged row DEAD, readable, and
    named as damaged in its error (see sqlite_codec.quarantine_update)."""
    for r, _ in damaged:
        update = quarantine_update(r, now)
        if update is not None:
            sql, params, reason = update
            conn.execute(sql, params)
            logger.bind(action="storage_damaged_row").warning(
                "task row {!r} set aside as DEAD: stored row is damaged: {}", r[0], reason
            )


def _filed_row(task: Task, files: Mapping[int, str]) -> tuple[Any, ...]:
    """The INSERT parameters of ``task``, naming its side file if its payload has one."""
    row = task_row(task)
    name = files.get(id(task))
    return row if name is None else (*row[:PAYLOAD], name, *row[PAYLOAD + 1 :])


def _enqueue_body(tasks: Sequence[Task]) -> Callable[[sqlite3.Connection], list[str]]:
    def body(conn: sqlite3.Connection) -> list[str]:
        ids: list[str] = []
        fresh: list[Task] = []
        taken: dict[str, str] = {}
        for task in tasks:
            existing = task.key and (taken.get(task.key) or _unfinished_with_key(conn, task.key))
            if existing:
                ids.append(existing)
                continue
            if task.key:
                taken[task.key] = task.id
            ids.append(task.id)
            fresh.append(task)
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        for statement, params in task_inserts(fresh, limit):
            conn.execute(statement, params)
        if isinstance(tasks, FiledTasks):  # small rows first, then the files' names
            conn.executemany("UPDATE tasks SET payload = ? WHERE id = ?", tasks.references(fresh))
        crash_point("enqueue_before_commit")  # tests: a crash here must leave no row
        return ids

    return body


def _enqueue_group_body(
    batches: Sequence[Sequence[Task]],
) -> Callable[[sqlite3.Connection], list[list[str] | BaseException]]:
    """One transaction for the tasks of several enqueue calls: each call's ids, or the
    error that refused its tasks. Alone, a call's tasks are the transaction; with others,
    each call's tasks are inserted under a savepoint, so a duplicate id fails its own call
    only."""
    if len(batches) == 1:
        alone = _enqueue_body(batches[0])
        return lambda conn: [alone(conn)]

    def body(conn: sqlite3.Connection) -> list[list[str] | BaseException]:
        outcomes: list[list[str] | BaseException] = []
        for tasks in batches:
            conn.execute("SAVEPOINT enqueue")
            try:
                outcomes.append(_enqueue_body(tasks)(conn))
            except sqlite3.IntegrityError as exc:
                conn.execute("ROLLBACK TO enqueue")
                outcomes.append(_duplicate_id(exc))
            conn.execute("RELEASE enqueue")
        return outcomes

    return body


def _duplicate_id(exc: sqlite3.IntegrityError) -> ValueError:
    return ValueError(f"a task id in this batch already exists: {exc}")


def _commit(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """``body`` inside BEGIN IMMEDIATE ... COMMIT, rolled back whole if anything fails."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT (disk full) leaves it open too
            conn.execute("ROLLBACK")
        raise
    return result


def _raise_unless_locked(path: Path, exc: sqlite3.Error) -> None:
    # A duplicate id is the caller's to report; a lock is worth another try; anything
    # else is a StorageError of its kind (full, read-only, damaged).
    if isinstance(exc, sqlite3.IntegrityError):
        raise exc
    if not is_locked(exc):
        raise storage_error(path, exc) from exc


def _stayed_locked(path: Path) -> StorageError:
    return StorageError(f"{path}: database stayed locked through {LOCK_RETRIES} tries")


def _in_claim_order(claimed: list[tuple[Task, int]], queues: Sequence[str]) -> list[Task]:
    """The tasks of a claim in claim order (RETURNING gives no order guarantee): queue by
    queue as listed, then higher priority, earlier eta, first enqueued."""
    rank = {q: i for i, q in enumerate(queues)}
    claimed.sort(key=lambda c: (rank[c[0].queue], -c[0].priority, c[0].eta, c[1]))
    return [task for task, _ in claimed]


def _fetchall(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _in_lists(values: Sequence[T]) -> Iterator[tuple[Sequence[T], str]]:
    """``values`` in slices of at most ``_IN_CHUNK``, each with the ``?, ?, ...`` of its
    ``IN (...)`` list."""
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        yield chunk, ", ".join("?" * len(chunk))


def _current_tokens(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    """Lease tokens of those ``ids`` that are RUNNING (read inside the write transaction,
    so nothing can change them before our writes)."""
    # One JSON object per chunk, not a row per task: each row fetched is a step, around
    # which sqlite3 lets go of the GIL (see settlement_updates).
    tokens: dict[str, str] = {}
    for chunk, marks in _in_lists(ids):
        [(found,)] = _fetchall(
            conn,
            "SELECT json_group_object(id, lease_token) FROM tasks WHERE status = 'RUNNING' "
            f"AND id IN ({marks})",
            chunk,
        )
        tokens.update(fastjson.loads(found))
    return tokens


def _held_keys(conn: sqlite3.Connection, keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` that an unfinished task holds."""
    head = "SELECT unique_key FROM tasks WHERE status IN ('PENDING', 'RUNNING') AND unique_key"
    return _found_in(conn, head, keys)


def _cancelled(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` that are CANCELLED."""
    return _found_in(conn, "SELECT id FROM tasks WHERE status = 'CANCELLED' AND id", ids)


def _found_in(conn: sqlite3.Connection, head: str, values: Sequence[str]) -> set[str]:
    """The first column of ``head IN (values)``, over chunks of ``values``."""
    found: set[str] = set()
    for chunk, marks in _in_lists(values):
        found.update(row[0] for row in _fetchall(conn, f"{head} IN ({marks})", chunk))
    return found


def _unfinished_with_key(conn: sqlite3.Connection, key: str) -> str | None:
    rows = _fetchall(conn, _KEY_HOLDER, (key,))
    return str(rows[0][0]) if rows else None
