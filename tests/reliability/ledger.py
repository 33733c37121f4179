"""The oracle ledger: test tasks that write down every execution, and its parser.

Every task here takes a ``key`` (the test's name for the task, known before enqueue) and
appends to the file named by ``$OMNIQ_LEDGER`` one line per event, each with one
``write()`` on an ``O_APPEND`` descriptor (atomic for lines this short, so lines of
concurrent workers never interleave):

    <key> <attempt> <pid> start <monotonic ns>
    <key> <attempt> <pid> end <monotonic ns>
    <key> <attempt> <pid> died <last seen alive ns> <seen dead ns>     (DeathWatch)

``attempt`` is the execution's ordinal for that key (1, 2, ...), taken atomically by
creating ``<ledger>.marks/<key>.<n>`` with ``O_EXCL``: two executions racing each other
get different numbers, so a concurrent duplicate shows up as two attempts, never one.
``end`` is written in a ``finally``: an attempt that raises ends; one whose process dies
(a kill, ``os._exit``, a segfault) has no ``end``, and the harness's DeathWatch records
when its process was last seen alive and first seen dead instead.

``CLOCK_MONOTONIC`` is one clock for every process of the host, so times compare across
processes. A task returns ``"<key> <attempt> <pid>"``: the checker matches the stored
result with the attempt that produced it (I5, fencing).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import multiprocessing
import os
import re
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "LEDGER_ENV",
    "Attempt",
    "Ledger",
    "LedgerTail",
    "Record",
    "crash",
    "fail_once",
    "grandchildren",
    "hang",
    "hog",
    "kill_supervisor",
    "parse",
    "sleep",
    "spin",
]

LEDGER_ENV = "OMNIQ_LEDGER"

_fd: int | None = None  # one descriptor per worker process, opened on its first task


def _ledger_path() -> str:
    return os.environ[LEDGER_ENV]


def _append(line: str) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(_ledger_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, line.encode())


def _next_attempt(key: str) -> int:
    """This execution's ordinal for ``key``: the first ``n`` whose mark we create."""
    marks = Path(_ledger_path() + ".marks")
    marks.mkdir(exist_ok=True)
    n = 1
    while True:
        try:
            os.close(os.open(marks / f"{key}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return n
        except FileExistsError:
            n += 1


@contextlib.contextmanager
def _attempt(key: str) -> Iterator[int]:
    """Write ``start``, run the body, write ``end`` (unless the process dies first)."""
    n = _next_attempt(key)
    pid = os.getpid()
    _append(f"{key} {n} {pid} start {time.monotonic_ns()}\n")
    try:
        yield n
    finally:
        _append(f"{key} {n} {pid} end {time.monotonic_ns()}\n")


def _token(key: str, n: int) -> str:
    return f"{key} {n} {os.getpid()}"


# -- task bodies --------------------------------------------------------------------------


def sleep(key: str, seconds: float, again: float | None = None) -> str:
    """Sleep ``seconds`` (later attempts: ``again`` if given)."""
    with _attempt(key) as n:
        time.sleep(seconds if n == 1 or again is None else again)
        return _token(key, n)


def spin(key: str, seconds: float) -> str:
    """Keep one core busy for ``seconds``."""
    with _attempt(key) as n:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
        return _token(key, n)


def _die(how: str) -> None:
    if how.startswith("exit"):
        os._exit(int(how[4:]))
    if how == "segv":
        ctypes.string_at(0)  # a real NULL read in C
    if how == "sigsegv":
        faulthandler._sigsegv()
    raise ValueError(f"unknown way to die: {how}")


def crash(key: str, how: str, always: bool = False, after: float = 0.0) -> str:
    """Die by ``how`` (exit0, exit1, exit7, segv, sigsegv) after ``after`` seconds, on the
    first attempt only unless ``always`` (a poison task)."""
    with _attempt(key) as n:
        if n == 1 or always:
            time.sleep(after)
            _die(how)
        return _token(key, n)


def _catastrophic_regex() -> bool:
    # Exponential backtracking inside the C regex engine: holds the GIL for minutes.
    return re.match(r"(a+)+$", "a" * 64 + "b") is not None


def hang(key: str, how: str, once: bool = False) -> str:
    """Never return (a timeout must kill it): ``busy`` loop, ``sleep``, a GIL-holding
    ``regex``, or ``ignore_term`` (SIGTERM ignored, then sleep). With ``once``, later
    attempts return at once."""
    with _attempt(key) as n:
        if once and n > 1:
            return _token(key, n)
        if how == "busy":
            while True:
                pass
        if how == "regex":
            _catastrophic_regex()
        if how == "ignore_term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
        return _token(key, n)


def fail_once(key: str, after: float = 0.0) -> str:
    """Raise on the first attempt, ``after`` seconds in (a retry by exception), succeed
    afterwards."""
    with _attempt(key) as n:
        if n == 1:
            time.sleep(after)
            raise ValueError(f"{key}: first attempt fails on purpose")
        return _token(key, n)


def _sleep_forever() -> None:
    time.sleep(1000)


def grandchildren(key: str, pid_file: str, then: str, seconds: float = 3600.0) -> str:
    """Start a ``sleep`` subprocess and a multiprocessing grandchild, write their pids to
    ``pid_file`` (atomically), then ``then``: ``sleep`` (for ``seconds``) or ``exit``."""
    with _attempt(key) as n:
        if n == 1:
            popen = subprocess.Popen(["sleep", "1000"])
            multiprocessing.current_process().daemon = False  # workers are daemonic
            forked = multiprocessing.get_context("fork").Process(target=_sleep_forever)
            forked.start()
            tmp = Path(pid_file + ".tmp")
            tmp.write_text(f"{popen.pid} {forked.pid}")
            tmp.replace(pid_file)
            if then == "exit":
                os._exit(5)
            time.sleep(seconds)
        return _token(key, n)


def hog(key: str, step_mib: int = 32, steps: int = 40, once: bool = True) -> str:
    """Grow resident memory by ``step_mib`` every 50 ms (a leak), on the first attempt
    only unless not ``once``; the supervisor's memory limit must stop it."""
    with _attempt(key) as n:
        if n == 1 or not once:
            blocks = []
            for _ in range(steps):
                blocks.append(bytearray(b"\x01") * (step_mib * 2**20))
                time.sleep(0.05)
        return _token(key, n)


def kill_supervisor(key: str) -> str:
    """On the first attempt, SIGKILL the supervisor running this task (the nearest
    ancestor running ``omniq_mp workers``; under forkserver the parent is the fork
    server), then wait to die with it; later attempts return."""
    import psutil  # only this task needs it

    with _attempt(key) as n:
        if n == 1:
            for parent in psutil.Process().parents():
                if "omniq_mp workers" in " ".join(parent.cmdline()):
                    os.kill(parent.pid, signal.SIGKILL)
                    break
            time.sleep(30)
        return _token(key, n)


# -- reading it back ----------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One ledger line."""

    key: str
    attempt: int
    pid: int
    event: str
    ns: int
    ns2: int = 0

    @classmethod
    def parse(cls, line: str) -> Record:
        """One line of the ledger; ValueError if it is not one."""
        parts = line.split()
        if len(parts) not in (5, 6):
            raise ValueError(f"malformed ledger line: {line!r}")
        key, attempt, pid, event, ns = parts[:5]
        ns2 = int(parts[5]) if len(parts) == 6 else 0
        return cls(key, int(attempt), int(pid), event, int(ns), ns2)


@dataclass
class Attempt:
    """One execution: started at ``start``; ended at ``end`` (it wrote so), or its process
    died between ``alive_until`` and ``dead_by`` (DeathWatch); both unknown while running."""

    key: str
    n: int
    pid: int
    start: int
    end: int | None = None
    alive_until: int | None = None
    dead_by: int | None = None

    @property
    def ended(self) -> bool:
        """True once it wrote ``end`` or its death was recorded."""
        return self.end is not None or self.dead_by is not None

    @property
    def surely_running_until(self) -> int | None:
        """The latest time the attempt is known to have been running."""
        return self.end if self.end is not None else self.alive_until

    @property
    def possibly_running_until(self) -> int | None:
        """The earliest time the attempt is known to be over."""
        return self.end if self.end is not None else self.dead_by


@dataclass
class Ledger:
    """Attempts by key, each list in start order; malformed lines are kept for the report."""

    attempts: dict[str, list[Attempt]] = field(default_factory=lambda: defaultdict(list))
    malformed: list[str] = field(default_factory=list)

    def starts(self, key: str) -> int:
        """How many attempts of ``key`` started."""
        return len(self.attempts.get(key, []))

    def all(self) -> Iterator[Attempt]:
        """Every attempt of every key."""
        for attempts in self.attempts.values():
            yield from attempts


def parse(path: Path) -> Ledger:
    """Read a whole ledger file."""
    ledger = Ledger()
    by_id: dict[tuple[str, int], Attempt] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = Record.parse(line)
        except ValueError:
            ledger.malformed.append(line)
            continue
        ident = (rec.key, rec.attempt)
        if rec.event == "start":
            attempt = Attempt(rec.key, rec.attempt, rec.pid, rec.ns)
            by_id[ident] = attempt
            ledger.attempts[rec.key].append(attempt)
        elif ident in by_id and rec.event == "end":
            by_id[ident].end = rec.ns
        elif ident in by_id and rec.event == "died":
            by_id[ident].alive_until, by_id[ident].dead_by = rec.ns, rec.ns2
        else:
            ledger.malformed.append(line)
    for attempts in ledger.attempts.values():
        attempts.sort(key=lambda a: a.start)
    return ledger


class LedgerTail:
    """Reads the records appended since the last call (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._partial = b""

    def read(self) -> list[Record]:
        """The complete records appended since the last call."""
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # kept open: read on every poll
            except FileNotFoundError:
                return []
        data = self._partial + self._file.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(Record.parse(line.decode()))
        return records

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
