"""Bounded, reproducible fuzzing of everything that reads bytes a store or a user hands it.

(a) real stored rows (SQLite) and entries (file store), mutated (bit flips, cuts,
    insertions, replacements, nulls, type changes), then opened, read, claimed and
    settled: nothing may escape but StorageError;
(b) the parsers of stored bytes, fed random input directly: the payload header parser
    (``envelope.split``: ValueError only) and the row/entry decoders (StorageError or
    ``Corrupt`` only). Payload *bodies* are never fuzzed through the unpickler: unpickling
    random bytes can call anything;
(c) generated ``omniq-mp`` command lines run in-process with click's CliRunner against a
    temporary store: exit code 0, 1 or 2, never an uncaught exception, never a hang.

Every test is derandomized (the same examples on every run) and runs without the
example database; shrinking is off so a failure costs no more than the budget. CI budget:
the whole file in about 20 s on 2 cores. ``MALFORMED_FUZZ_SCALE=70`` (an integer)
multiplies every budget for a nightly run (>= 10,000 store mutations and command lines);
give it room with pytest's ``--timeout=3600``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from omniq_mp.cli import cli
from omniq_mp.envelope import MAGIC, split
from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskError, TaskStatus, create_task
from omniq_mp.schedule import Schedule
from omniq_mp.serialization import dumps_result
from omniq_mp.storage.base import WorkerInfo
from omniq_mp.storage.file import FileStorage
from omniq_mp.storage.file_codec import Corrupt, decode_schedule, decode_task, decode_worker
from omniq_mp.storage.sqlite import SQLiteStorage
from omniq_mp.storage.sqlite_codec import COLUMNS, SCHEDULE_COLUMNS, row_schedule, row_task

SCALE = int(os.environ.get("MALFORMED_FUZZ_SCALE", "1"))
NOW = 1_700_000_000.0


def budget(examples: int) -> settings:
    """Hypothesis settings: ``examples`` (times SCALE), reproducible, no shrinking."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- mutations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One change to a byte string: ``op`` at ``position`` (taken modulo the length)."""

    op: str  # flip | truncate | insert | replace | null | retype
    position: int
    bit: int
    junk: bytes

    def apply(self, raw: bytes) -> bytes:
        data = bytearray(raw)
        at = self.position % (len(data) + 1)
        if self.op == "flip" and data:
            data[self.position % len(data)] ^= 1 << self.bit
        elif self.op == "truncate":
            del data[at:]
        elif self.op == "insert":
            data[at:at] = self.junk
        elif self.op == "replace":
            data = bytearray(self.junk)
        return bytes(data)


def mutations(ops: tuple[str, ...]) -> st.SearchStrategy[Mutation]:
    return st.builds(
        Mutation,
        op=st.sampled_from(ops),
        position=st.integers(0, 2**20),
        bit=st.integers(0, 7),
        junk=st.binary(min_size=1, max_size=24),
    )


BYTE_OPS = ("flip", "truncate", "insert", "replace")
COLUMN_OPS = (*BYTE_OPS, "null", "retype")


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


def mutate_value(value: Any, mutation: Mutation) -> Any:
    """``value`` (a column as sqlite3 returns it) mutated, stored back in its own type when
    the mutated bytes still read as one (else as text, which SQLite keeps as given)."""
    if mutation.op == "null":
        return None
    raw = mutation.apply(as_bytes(value))
    if mutation.op == "retype":
        return raw.decode("utf-8", "replace") if isinstance(value, bytes) else raw
    if isinstance(value, bytes):
        return raw
    text = raw.decode("utf-8", "replace")
    for kind in (int, float) if isinstance(value, int | float) else ():
        try:
            number = kind(text)
        except (ValueError, OverflowError):
            continue
        if abs(number) < 2**63 or kind is float:  # SQLite's INTEGER is 64 bits
            return number
    return text


async def allowed(step: Awaitable[Any]) -> Any:
    """Await one storage call: StorageError is an answer, a known defect (see the end of
    this file) is noted and passed over; anything else fails the test."""
    try:
        return await step
    except StorageError:
        return None
    except Exception as exc:
        if signature(exc) in KNOWN_DEFECTS:
            event(f"known defect {signature(exc)}")
            return None
        raise


# -- a realistic store to damage ------------------------------------------------------------


def seed_tasks() -> list[Task]:
    """Tasks that leave every kind of column filled once claimed and settled."""
    return [
        create_task("math.sqrt", eta=NOW - 10, key="k-0"),
        create_task("math.sqrt", eta=NOW - 9, priority=5, timeout=3.5),
        create_task("math.sqrt", eta=NOW - 8, max_memory=2**20, result_ttl=60.0),
        create_task("math.sqrt", eta=NOW - 7, queue="other", interval=30.0),
        create_task("math.sqrt", eta=NOW - 6),
        create_task("math.sqrt", eta=NOW - 5),
        create_task("math.sqrt", eta=NOW + 3600),
    ]


async def seed(store: Any) -> list[str]:
    """Enqueue, claim and settle into every state: completed, failed, retrying, running,
    cancelled, pending."""
    await store.open()
    tasks = seed_tasks()
    await store.enqueue(tasks)
    claimed = await store.claim(["default", "other"], 5, NOW, NOW + 30, "seed")
    error = TaskError("ValueError", "boom", "Traceback ...\nValueError: boom\n")
    outcomes = [
        (TaskStatus.COMPLETED, dumps_result({"answer": 42}), None),
        (TaskStatus.FAILED, None, error),
        (TaskStatus.PENDING, None, error),
    ]
    settled = [
        Settlement(t.id, t.lease_token or "", status, result=result, error=err, eta=NOW - 1)
        for t, (status, result, err) in zip(claimed, outcomes, strict=False)
    ]
    await store.settle(settled)
    await store.cancel(tasks[-1].id, NOW)  # the future one: pending -> cancelled
    await store.cancel(claimed[-1].id, NOW)  # a running one: cancel requested
    await store.heartbeat(
        WorkerInfo("seed", "host", 1, 2, ("default",), NOW - 5, NOW, {"active": 1})
    )
    await store.add_schedule(Schedule(create_task("math.sqrt"), "*/5 * * * *", next_run=NOW))
    await store.close()
    return [t.id for t in tasks]


async def exercise(store: Any, ids: list[str]) -> None:
    """What a client and a supervisor do with a store; only StorageError may escape."""
    try:
        await store.open()
    except StorageError:
        return
    try:
        for task_id in ids:
            await allowed(store.get(task_id))
        await allowed(store.get_many(ids))
        for status in TaskStatus:
            await allowed(store.list_tasks(status, None, 50))
        await allowed(store.stats(None, NOW))
        await allowed(store.queue_names())
        await allowed(store.completed_since(None, 0.0))
        await allowed(store.workers(0.0))
        await allowed(store.schedules())
        await allowed(store.cancel_requests(ids))
        await allowed(store.expired(NOW + 10**6, 100))
        claimed = await allowed(store.claim(["default", "other"], 10, NOW, NOW + 30, "fuzz"))
        settled = [
            Settlement(t.id, t.lease_token or "", TaskStatus.COMPLETED, result=b"\x80\x04N.")
            for t in claimed or []
        ]
        await allowed(store.settle(settled))
        await allowed(store.cancel(ids[0], NOW))
        await allowed(store.revive(None, NOW))
        await allowed(store.fire_schedules(NOW + 10**6, lambda s, now: now + 60))
        await allowed(store.purge_expired(NOW + 10**9, 100))
    finally:
        await store.close()


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("sqlite-template") / "omniq.db"
    ids = asyncio.run(seed(SQLiteStorage(path)))
    return path, ids


@pytest.fixture(scope="module")
def file_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    base = tmp_path_factory.mktemp("file-template") / "store"
    ids = asyncio.run(seed(FileStorage(base)))
    return base, ids


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is one per test, not per example)."""
    with tempfile.TemporaryDirectory(prefix="omniq-fuzz-") as folder:
        yield Path(folder)


# -- (a) mutated stores ---------------------------------------------------------------------

TASK_COLUMNS = tuple(COLUMNS.split(", "))
SQLITE_TABLES = {
    "tasks": TASK_COLUMNS,
    "workers": tuple("worker_id hostname pid procs queues started_at heartbeat_at details".split()),
    "schedules": tuple(SCHEDULE_COLUMNS.split(", ")),
}
RowDamage = tuple[str, int, str, Mutation]


@st.composite
def row_damage(draw: st.DrawFn) -> RowDamage:
    table = draw(st.sampled_from(sorted(SQLITE_TABLES)))
    column = draw(st.sampled_from(SQLITE_TABLES[table]))
    return table, draw(st.integers(0, 50)), column, draw(mutations(COLUMN_OPS))


def damage_sqlite(path: Path, damage: list[RowDamage]) -> None:
    db = sqlite3.connect(path)
    try:
        for table, row, column, mutation in damage:
            rowids = [r[0] for r in db.execute(f"SELECT rowid FROM {table} ORDER BY rowid")]
            rowid = rowids[row % len(rowids)]
            (value,) = db.execute(
                f"SELECT {column} FROM {table} WHERE rowid = ?", (rowid,)
            ).fetchone()
            with contextlib.suppress(sqlite3.IntegrityError):  # NOT NULL, UNIQUE: not damage
                db.execute(
                    f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                    (mutate_value(value, mutation), rowid),
                )
        db.commit()
    finally:
        db.close()


def copy_sqlite(template: Path, folder: Path) -> Path:
    for part in template.parent.glob(template.name + "*"):
        if not part.name.endswith("-init.lock"):
            shutil.copy(part, folder / part.name)
    return folder / template.name


@budget(examples=150)
@given(damage=st.lists(row_damage(), min_size=1, max_size=3))
def test_mutated_sqlite_rows_raise_nothing_but_storage_error(
    sqlite_template: tuple[Path, list[str]], damage: list[RowDamage]
) -> None:
    template, ids = sqlite_template
    with scratch() as folder:
        path = copy_sqlite(template, folder)
        damage_sqlite(path, damage)
        asyncio.run(exercise(SQLiteStorage(path), ids))


def store_entries(base: Path) -> list[Path]:
    """Every entry file of a file store, relative to it, in a stable order."""
    folders = ("pending", "running", "done", "workers", "schedules")
    found = [p for f in folders for p in (base / f).rglob("*.json") if p.is_file()]
    return sorted(p.relative_to(base) for p in found)


@budget(examples=150)
@given(damage=st.lists(st.tuples(st.integers(0, 50), mutations(BYTE_OPS)), min_size=1, max_size=3))
def test_mutated_file_store_entries_raise_nothing_but_storage_error(
    file_template: tuple[Path, list[str]], damage: list[tuple[int, Mutation]]
) -> None:
    template, ids = file_template
    entries = store_entries(template)
    with scratch() as folder:
        base = folder / "store"
        shutil.copytree(template, base, symlinks=True)
        for index, mutation in damage:
            entry = base / entries[index % len(entries)]
            entry.write_bytes(mutation.apply(entry.read_bytes()))
        asyncio.run(exercise(FileStorage(base), ids))
        # What could not be read went to quarantine, with a reason beside each entry.
        moved = [p for p in (base / "quarantine").iterdir() if p.suffix != ".reason"]
        for entry in moved:
            assert entry.with_name(entry.name + ".reason").is_file()


# -- (b) the decoders, fed random bytes directly ------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


def headers() -> st.SearchStrategy[bytes]:
    """Payload prefixes: random bytes, the magic with a random rest, and well-framed
    headers around random JSON (right or wrong keys) or random bytes."""
    framed = st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)).flatmap(
        lambda raw: st.tuples(st.just(raw), st.integers(-3, 3), st.binary(max_size=16))
    )
    return st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda rest: MAGIC + rest),
        framed.map(
            lambda t: MAGIC + struct.pack(">H", max(0, len(t[0]) + t[1]) % 65536) + t[0] + t[2]
        ),
    )


@budget(examples=500)
@given(payload=headers())
def test_payload_header_parser_raises_only_value_error(payload: bytes) -> None:
    try:
        header, body = split(payload)
    except ValueError:
        return
    assert bytes(body) == payload[len(payload) - len(body) :]
    if header is not None:
        assert isinstance(header.python, str) and isinstance(header.cloudpickle, str)


def test_payload_header_parser_refuses_deep_nesting_with_value_error() -> None:
    header = b"[" * 60_000
    with pytest.raises(ValueError, match="header"):
        split(MAGIC + struct.pack(">H", len(header)) + header + b"body")


def entry_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(["format", "seq", "task", "schedule"]), JSON).map(
            lambda d: json.dumps(d).encode()
        ),
    )


@budget(examples=500)
@given(data=entry_bytes())
def test_file_entry_decoders_raise_only_corrupt(data: bytes) -> None:
    for decode in (decode_task, decode_schedule, decode_worker):
        with contextlib.suppress(Corrupt):
            decode(data)


COLUMN_VALUE = st.one_of(
    st.none(),
    # Any 64-bit integer, the extremes drawn often: an integer in a BLOB column once became
    # bytes(n), n zero bytes, so only small ones could be drawn; it is refused now.
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**62, 2**63 - 1, -(2**63)]),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    JSON.map(json.dumps),
)


@pytest.fixture(scope="module")
def stored_rows(sqlite_template: tuple[Path, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every task and schedule row of the template store, as sqlite3 returns them."""
    db = sqlite3.connect(sqlite_template[0])
    try:
        return {
            "tasks": db.execute(f"SELECT {COLUMNS} FROM tasks").fetchall(),
            "schedules": db.execute(f"SELECT {SCHEDULE_COLUMNS} FROM schedules").fetchall(),
        }
    finally:
        db.close()


def with_columns(row: tuple[Any, ...], changes: dict[int, Any]) -> list[Any]:
    return [changes.get(i % len(row), value) for i, value in enumerate(row)]


ROW_CHANGES = st.dictionaries(st.integers(0, 40), COLUMN_VALUE, min_size=1, max_size=4)


@budget(examples=500)
@given(index=st.integers(0, 50), changes=ROW_CHANGES)
def test_sqlite_task_row_decoder_raises_only_storage_error(
    stored_rows: dict[str, list[tuple[Any, ...]]], index: int, changes: dict[int, Any]
) -> None:
    rows = stored_rows["tasks"]
    row = with_columns(rows[index % len(rows)], changes)
    with contextlib.suppress(StorageError):
        tolerate_known(lambda: row_task(row))


@budget(examples=300)
@given(changes=ROW_CHANGES)
def test_sqlite_schedule_row_decoder_raises_only_storage_error(
    stored_rows: dict[str, list[tuple[Any, ...]]], changes: dict[int, Any]
) -> None:
    row = with_columns(stored_rows["schedules"][0], changes)
    with contextlib.suppress(StorageError):
        tolerate_known(lambda: row_schedule(row))


# -- (c) generated command lines ---------------------------------------------------------------
#
# A session is one to three commands against one fresh store, so generated lines also
# enqueue, drain and then ask for results ("@last" stands for the previous output's last
# line: the id enqueue printed). Commands that block by design are left out: ``top``,
# ``events --follow`` and ``workers`` without ``--burst`` (which is always given). So are
# ``db`` and the postgres backend, which would reach a real server. Task paths are
# harmless functions with small arguments: ``workers --burst`` really runs them.


def mostly(valid: list[str], junk: list[str]) -> st.SearchStrategy[str]:
    """A valid value about two times in three, else junk."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(junk))


JUNK = st.one_of(
    st.sampled_from(["", " ", "--", "-", "-x", "--nope", "=", "nan", "inf", "-1", "1e309"]),
    # No NUL: a real argv cannot carry one (execve takes C strings), only CliRunner could.
    st.sampled_from(["None", "null", "{}", "[]", "\u00e9t\u00e9", "\udcff", "\x01", "a,b,,"]),
    st.text(alphabet="abc-=.,:0123456789", max_size=6),
)
COUNTS = mostly(["0", "1", "2"], ["-1", "abc", "", "0.5", "nan", "3" * 25])
SECONDS = mostly(["0.05", "1", "0"], ["-1", "abc", "", "nan", "inf", "1e15", "1e309"])
IDS = mostly(["@last"], ["", "no-such-task", "0" * 32, "sch-0", "x" * 300, "../../etc"])
PATHS = mostly(["math.pow", "math.factorial", "operator.add"], ["pow", "no_such.mod", "a:b"])
ARGS = st.sampled_from(["2", "3", "-1", '"x"', "[1]", "{}", "10", "null", "text"])

COMMANDS: dict[str, dict[str, st.SearchStrategy[str] | None]] = {
    "enqueue": {
        "--kwargs": mostly(["{}"], ['{"x": 1}', "{bad", "[1]", '"s"', "null"]),
        "--queue": mostly(["default"], ["", "q,w", "\u00e9"]),
        "--priority": COUNTS,
        "--timeout": SECONDS,
        "--max-retries": COUNTS,
        "--delay": SECONDS,
        "--key": mostly(["k"], ["", " "]),
        "--cron": mostly(["* * * * *"], ["every day", "61 * * * *", ""]),
        "--tz": mostly(["UTC"], ["Mars/Base", "", "../etc"]),
        "--max-memory": mostly(["1GB"], ["lots", "0", "-5", "1.5GiB"]),
    },
    "workers": {
        "--procs": mostly(["1"], ["0", "-1", "abc", ""]),
        "--queues": mostly(["default"], ["", ",", "a,b"]),
        "--max-tasks-per-child": COUNTS,
        "--max-memory-per-child": mostly(["1GB"], ["lots", "0"]),
        "--start-method": mostly(["forkserver"], ["spawn", "fork", ""]),
        "--shutdown-grace": SECONDS,
        "--no-progress": None,
    },
    "result": {"--wait": mostly(["0", "0.05"], ["-1", "abc", "", "inf"])},
    "status": {"--json": None},
    "stats": {"--json": None},
    "cancel": {},
    "dead": {"--limit": COUNTS},
    "retry": {"--all": None},
    "purge": {
        "--older-than": mostly(["7d", "90m"], ["soon", "0", "-1d", "nan", ""]),
        "--status": mostly(["completed"], ["running", "", "dead,failed", "x"]),
    },
    "periodic": {},
    "pause": {},
    "resume": {},
    "events": {
        "--task": IDS,
        "--type": mostly(["FAILED", "FAILED,DEAD"], ["bogus", ""]),
        "--after": COUNTS,
        "--json": None,
    },
}
POSITIONALS = {
    "enqueue": st.tuples(PATHS, st.lists(ARGS, max_size=2)).map(lambda t: [t[0], *t[1]]),
    "result": IDS.map(lambda i: [i]),
    "cancel": IDS.map(lambda i: [i]),
    "retry": st.lists(IDS, max_size=2),
    "pause": IDS.map(lambda i: [i]),
    "resume": IDS.map(lambda i: [i]),
}
ENVIRONMENT: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}),
    st.dictionaries(
        st.sampled_from(["OMNIQ_PROCS", "OMNIQ_LEASE_TTL", "OMNIQ_QUEUES", "OMNIQ_MAX_RETRIES",
                         "OMNIQ_EVENT_STORAGE_TYPE", "OMNIQ_RESULT_TTL", "OMNIQ_LOG_LEVEL"]),
        st.sampled_from(["1", "0", "-1", "abc", "nan", ",", "none", "sqlite", "file", "INFO"]),
        max_size=2,
    ),
)  # fmt: skip

# Config files a command line may name (written once per module, in its own folder).
CONFIG_FILES = {
    "good.toml": b"procs = 1\nmax_retries = 0\n",
    "bad-syntax.toml": b"procs = [",
    "unknown-key.toml": b"colour = 1\n",
    "bad-value.yaml": b"procs: many\n",
    "list.yaml": b"- 1\n",
    "wrong.ini": b"procs = 1\n",
}


@st.composite
def command_line(draw: st.DrawFn) -> list[str]:
    """``[global options] COMMAND [positionals] [options]``, with junk spliced in now and
    then."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    argv: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        argv += ["--log-level", draw(mostly(["ERROR"], ["LOUD", ""]))]
    if draw(st.integers(0, 5)) == 0:
        argv += ["--config", draw(mostly(["good.toml"], sorted(CONFIG_FILES)))]
    argv.append(command)
    argv += draw(POSITIONALS.get(command, st.just([])))
    options = COMMANDS[command]
    chosen = st.lists(st.sampled_from(sorted(options)), max_size=3, unique=True)
    for name in draw(chosen) if options else []:
        value = options[name]
        argv += [name] if value is None else [name, draw(value)]
    if draw(st.integers(0, 3)) == 0:
        argv += ["--backend", draw(mostly(["sqlite", "file"], ["mongo", ""]))]
    if command == "workers":
        argv.append("--burst")
    if draw(st.integers(0, 5)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(JUNK))
    return argv


def known_cli_crash(argv: list[str]) -> bool:
    """Command lines that hit a defect pinned by a strict-xfail test in test_cli_inputs.py
    (skipped here until it is fixed). None at present: the out-of-range numbers, ``--wait
    nan`` and non-UTF-8 arguments it used to list are usage errors now."""
    return False


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("configs")
    for name, content in CONFIG_FILES.items():
        (folder / name).write_bytes(content)
    return folder


@pytest.mark.e2e
@budget(examples=150)
@given(session=st.lists(command_line(), min_size=1, max_size=3), env=ENVIRONMENT)
def test_generated_command_lines_exit_0_1_or_2_and_never_crash(
    config_folder: Path, session: list[list[str]], env: dict[str, str]
) -> None:
    last = ""
    with scratch() as folder:
        for generated in session:
            argv = [str(config_folder / a) if a in CONFIG_FILES else a for a in generated]
            argv = [last if a == "@last" else a for a in argv]
            if known_cli_crash(argv):
                event("skipped: a known defect")
                continue
            began = time.monotonic()
            result = CliRunner().invoke(
                cli,
                argv,
                env={"OMNIQ_BASE_DIR": str(folder / "store"), "OMNIQ_LOG_LEVEL": "ERROR", **env},
            )
            took = time.monotonic() - began
            context = f"omniq-mp {argv} env={env}: exit {result.exit_code}\n{result.output}"
            event(f"{next((a for a in argv if a in COMMANDS), '?')} exit {result.exit_code}")
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise AssertionError(context) from result.exception
            assert result.exit_code in (0, 1, 2), context
            assert took < 30.0, f"{context}\ntook {took:.1f}s"
            marker = {0: "", 1: "rror: ", 2: "Error: "}[result.exit_code]
            assert marker in result.output, context
            last = (result.stdout.strip().splitlines() or [""])[-1]


# -- known defects --------------------------------------------------------------------------
#
# Failures the fuzzers find that are already pinned by strict-xfail tests elsewhere in this
# folder. They are recognised by exception type and the omniq_mp function that raised it, so
# the fuzzers stay green (and keep looking for anything new) until they are fixed; then
# the entry here, and the xfail mark there, are deleted together.


def signature(exc: BaseException) -> tuple[str, str]:
    """``(exception type, module:function)`` of the innermost omniq_mp frame it passed."""
    where = "?"
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("omniq_mp"):
            where = f"{module}:{tb.tb_frame.f_code.co_qualname}"
        tb = tb.tb_next
    return type(exc).__name__, where


# None at present: the row decoders' AttributeError, MemoryError, OverflowError and
# TypeError, stats() on an unknown status and workers() on a damaged heartbeat, all listed
# here once, are StorageError (or skipped rows) now.
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}


def tolerate_known(step: Callable[[], Any]) -> Any:
    """Run ``step``; an exception with a known defect's signature counts as seen."""
    try:
        return step()
    except StorageError:
        raise
    except Exception as exc:
        if signature(exc) in KNOWN_DEFECTS:
            event(f"known defect {signature(exc)}")
            return None
        raise
