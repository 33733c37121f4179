"""The result-storage contract every backend keeps (exact round trips of every terminal
outcome, replace on rewrite, batches, big values, expiry and purge, several stores on one
location), then the file and SQLite backends' own: unsafe task ids, file modes, damaged
files and databases, a missing extra."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from loguru import logger

from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.models import ErrorKind, TaskError, TaskStatus
from omniq_mp.results.base import ResultStorage, TaskResult
from omniq_mp.results.file import FileResultStorage
from omniq_mp.results.sqlite import SQLiteResultStorage
from tests.contract.result_backends import RESULT_BACKENDS, SHARED, backend_params
from tests.services import require

VALUE = b"\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00K*."  # what cloudpickle makes of 42


def completed(
    task_id: str, value: bytes | None = VALUE, expires_at: float | None = None
) -> TaskResult:
    return TaskResult(
        task_id, TaskStatus.COMPLETED, result=value, finished_at=1e9, expires_at=expires_at
    )


def failure(kind: ErrorKind = ErrorKind.EXCEPTION) -> TaskError:
    return TaskError(
        error_type="ValueError",
        message='bad "input" é✓\nsecond line',
        traceback='Traceback (most recent call last):\n  File "t.py", line 1\nValueError\n',
        is_retryable=False,
        retry_count=2,
        max_retries=5,
        kind=kind.value,
    )


@dataclass
class Backend:
    """An opened store of one kind, and how to make another on the same location."""

    name: str
    store: ResultStorage
    another: Callable[[], ResultStorage]


@pytest.fixture(params=backend_params(list(RESULT_BACKENDS)))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    service, factory = RESULT_BACKENDS[request.param]
    if service is not None:
        require(service)
    unique = uuid.uuid4().hex[:12]
    store = factory(tmp_path, unique)
    await store.open()
    try:
        yield Backend(request.param, store, lambda: factory(tmp_path, unique))
    finally:
        try:
            await store.open()  # a test may have closed it
            drop = getattr(store, "drop", None)
            if drop is not None:
                await drop()  # everything the store created, so servers keep nothing
        finally:
            await store.close()


@pytest.fixture
def store(backend: Backend) -> ResultStorage:
    return backend.store


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    messages: list[str] = []
    logger.enable("omniq_mp")
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    yield messages
    logger.remove(sink)
    logger.disable("omniq_mp")


# -- the contract ------------------------------------------------------------------------------


async def test_a_completed_result_round_trips_with_its_exact_value_bytes(
    store: ResultStorage,
) -> None:
    sent = TaskResult(
        "t-bytes",
        TaskStatus.COMPLETED,
        result=bytes(range(256)) * 3 + b"\n\r\x00",  # not text: no decoding on the way
        finished_at=1_700_000_000.123456,
        expires_at=time.time() + 3600.25,
    )
    await store.store([sent])
    assert await store.get("t-bytes") == sent


async def test_a_completed_result_without_a_value_comes_back_without_one(
    store: ResultStorage,
) -> None:
    await store.store([completed("t-none", None)])
    found = await store.get("t-none")
    assert found == completed("t-none", None) and found.result is None


async def test_a_failed_result_keeps_every_field_of_its_error(store: ResultStorage) -> None:
    sent = TaskResult(
        "t-failed",
        TaskStatus.FAILED,
        error=failure(ErrorKind.TIMEOUT),
        finished_at=1_700_000_001.5,
        expires_at=None,
    )
    await store.store([sent])
    found = await store.get("t-failed")
    assert found == sent
    assert found.error == failure(ErrorKind.TIMEOUT) and found.result is None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (TaskStatus.CANCELLED, None),
        (TaskStatus.CANCELLED, failure(ErrorKind.CANCELLED)),
        (TaskStatus.DEAD, failure(ErrorKind.CRASH)),
    ],
)
async def test_cancelled_and_dead_results_round_trip(
    store: ResultStorage, status: TaskStatus, error: TaskError | None
) -> None:
    sent = TaskResult("t-end", status, error=error, finished_at=1_700_000_002.0)
    await store.store([sent])
    assert await store.get("t-end") == sent


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.RUNNING])
def test_a_result_document_with_a_status_that_is_not_terminal_does_not_load(
    status: TaskStatus,
) -> None:
    with pytest.raises(ValueError, match="terminal"):
        TaskResult.from_dict({"task_id": "t", "status": status.value})


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.RUNNING])
async def test_a_result_that_is_not_terminal_is_refused_and_nothing_is_stored(
    store: ResultStorage, status: TaskStatus
) -> None:
    with pytest.raises(ValueError, match="terminal"):
        await store.store([completed("t-good"), TaskResult("t-bad", status)])
    assert await store.get_many(["t-good", "t-bad"]) == {}


async def test_storing_a_result_again_replaces_it(store: ResultStorage) -> None:
    first = TaskResult("t-again", TaskStatus.FAILED, error=failure(), finished_at=1.0)
    second = completed("t-again", b"second value", expires_at=time.time() + 60)
    await store.store([first])
    await store.store([second])
    assert await store.get("t-again") == second
    await store.store([second])  # a retried write is harmless
    assert await store.get_many(["t-again"]) == {"t-again": second}


async def test_an_unknown_task_id_has_no_result(store: ResultStorage) -> None:
    assert await store.get("t-nobody") is None
    assert await store.get_many([]) == {}
    assert await store.delete([]) == 0


async def test_get_many_returns_the_known_results_and_leaves_out_the_others(
    store: ResultStorage,
) -> None:
    a, b, c = completed("t-a", b"a"), completed("t-b", None), completed("t-c", b"c")
    await store.store([a, b, c])
    found = await store.get_many(["t-a", "t-x", "t-c", "t-y", "t-a"])
    assert found == {"t-a": a, "t-c": c}
    assert await store.get_many(["t-x", "t-y"]) == {}


async def test_delete_removes_results_and_counts_those_that_existed(
    store: ResultStorage,
) -> None:
    await store.store([completed("t-1"), completed("t-2"), completed("t-3")])
    assert await store.delete(["t-1", "t-2", "t-unknown", "t-1"]) == 2
    assert await store.get_many(["t-1", "t-2", "t-3"]) == {"t-3": completed("t-3")}
    assert await store.delete(["t-1", "t-2"]) == 0


async def test_purge_removes_only_results_past_their_expiry(store: ResultStorage) -> None:
    now = time.time()
    soon = completed("t-soon", expires_at=now + 100)
    later = completed("t-later", expires_at=now + 10_000)
    forever = completed("t-forever", expires_at=None)
    await store.store([soon, later, forever])
    assert await store.purge_expired(now + 1000) == 1
    assert await store.get_many(["t-soon", "t-later", "t-forever"]) == {
        "t-later": later,
        "t-forever": forever,
    }
    assert await store.delete(["t-soon"]) == 0  # deleted, not only hidden
    assert await store.purge_expired(now + 1000) == 0


async def test_a_result_past_its_expiry_is_not_returned_even_before_a_purge(
    store: ResultStorage,
) -> None:
    kept = completed("t-kept", expires_at=time.time() + 3600)
    await store.store([completed("t-past", expires_at=time.time() - 60), kept])
    assert await store.get("t-past") is None
    assert await store.get_many(["t-past", "t-kept"]) == {"t-kept": kept}


async def test_a_thousand_results_stored_in_one_call_read_back_with_get_many(
    store: ResultStorage,
) -> None:
    sent = [completed(f"batch-{i:04d}", i.to_bytes(2, "big") * 50) for i in range(1000)]
    await store.store(sent)
    found = await store.get_many([r.task_id for r in sent])
    assert found == {r.task_id: r for r in sent}


async def test_a_5_mib_value_round_trips(store: ResultStorage) -> None:
    big = completed("t-big", os.urandom(5 << 20))
    await store.store([big])
    found = await store.get("t-big")
    assert found is not None and found.result == big.result
    assert found == big


async def test_concurrent_stores_all_land(store: ResultStorage) -> None:
    batches = [[completed(f"c-{w}-{i}", f"{w}:{i}".encode()) for i in range(20)] for w in range(10)]
    await asyncio.gather(*(store.store(batch) for batch in batches))
    everything = [r for batch in batches for r in batch]
    assert await store.get_many([r.task_id for r in everything]) == {
        r.task_id: r for r in everything
    }


async def test_open_and_close_can_be_repeated(backend: Backend) -> None:
    fresh = backend.another()
    assert isinstance(fresh, ResultStorage)
    await fresh.close()  # never opened: nothing to do
    await fresh.open()
    await fresh.open()
    await fresh.store([completed("t-open")])
    assert await fresh.get("t-open") == completed("t-open")
    await fresh.close()
    await fresh.close()


@pytest.mark.parametrize("backend", backend_params(SHARED), indirect=True)
async def test_results_survive_closing_and_reopening(backend: Backend) -> None:
    sent = [
        completed("t-kept", b"kept", expires_at=time.time() + 3600),
        TaskResult("t-failed", TaskStatus.FAILED, error=failure(), finished_at=2.0),
    ]
    await backend.store.store(sent)
    await backend.store.close()
    again = backend.another()
    await again.open()
    try:
        assert await again.get_many(["t-kept", "t-failed"]) == {r.task_id: r for r in sent}
    finally:
        await again.close()


@pytest.mark.parametrize("backend", backend_params(SHARED), indirect=True)
async def test_two_stores_on_one_location_see_each_others_writes(backend: Backend) -> None:
    one, other = backend.store, backend.another()
    await other.open()
    try:
        await one.store([completed("t-1", b"from one")])
        assert await other.get("t-1") == completed("t-1", b"from one")
        await other.store([completed("t-2", b"from other"), completed("t-1", b"replaced")])
        assert await one.get_many(["t-1", "t-2"]) == {
            "t-1": completed("t-1", b"replaced"),
            "t-2": completed("t-2", b"from other"),
        }
        assert await one.delete(["t-2"]) == 1
        assert await other.get("t-2") is None
        await one.store([completed("t-expiring", expires_at=time.time() + 100)])
        assert await other.purge_expired(time.time() + 1000) == 1
        assert await one.get("t-expiring") is None
    finally:
        await other.close()


# -- the file backend --------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def result_file(base: Path, task_id: str) -> Path:
    return base / task_id[-2:] / f"{task_id}.result"


def fstore_dir(fstore: FileResultStorage) -> Path:
    return Path(fstore.base_dir)


@pytest.fixture
async def fstore(tmp_path: Path) -> AsyncIterator[FileResultStorage]:
    storage = FileResultStorage(tmp_path / "results")
    await storage.open()
    yield storage
    await storage.close()


UNSAFE_IDS = ["", ".", "..", "../escape", "a/b", "/etc/passwd", "..x", ".hidden", "a\\b"]
UNSAFE_IDS += ["a\x00b", "line\nbreak", "x" * 201]


def short(task_id: str) -> str:
    return task_id if len(task_id) < 20 else f"{task_id[:3]}...({len(task_id)})"


@pytest.mark.parametrize("task_id", UNSAFE_IDS, ids=short)
async def test_the_file_backend_refuses_task_ids_that_are_not_safe_file_names(
    fstore: FileResultStorage, tmp_path: Path, task_id: str
) -> None:
    with pytest.raises(ValueError, match="cannot name a result file"):
        await fstore.store([completed("fine"), completed(task_id)])
    with pytest.raises(ValueError, match="cannot name a result file"):
        await fstore.get(task_id)
    with pytest.raises(ValueError, match="cannot name a result file"):
        await fstore.get_many(["fine", task_id])
    with pytest.raises(ValueError, match="cannot name a result file"):
        await fstore.delete([task_id])
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
    assert list(fstore_dir(fstore).iterdir()) == []  # not even the valid one was written


@pytest.mark.parametrize("backend", ["file", "file-memory"], indirect=True)
@pytest.mark.parametrize(
    "task_id", ["é✓ task", "x" * 200, "gl*?[ab]", "a:b@c+d=e%20#f", "z"], ids=short
)
async def test_the_file_backend_keeps_unusual_but_safe_task_ids(
    backend: Backend, task_id: str
) -> None:
    store = backend.store
    await store.store([completed(task_id), completed("globxya")])
    assert await store.get(task_id) == completed(task_id)
    assert await store.get("gl*") is None  # names are taken literally, never as patterns
    assert await store.get_many([task_id, "gl?bxya"]) == {task_id: completed(task_id)}
    assert await store.delete([task_id]) == 1
    assert await store.get("globxya") == completed("globxya")


async def test_local_result_files_are_private(tmp_path: Path) -> None:
    base = tmp_path / "a" / "results"
    store = FileResultStorage(base)
    await store.open()
    await store.store([completed("abc123")])
    await store.store([completed("abc123", b"again")])  # a replaced file stays private
    await store.close()
    assert mode(base) == 0o700
    assert mode(base / "23") == 0o700
    assert mode(result_file(base, "abc123")) == 0o600
    assert [p.name for p in (base / "23").iterdir()] == ["abc123.result"]  # no temp left


async def test_a_result_file_is_a_json_header_line_then_the_raw_value(
    fstore: FileResultStorage,
) -> None:
    await fstore.store([completed("t-format", b"raw\nvalue", expires_at=5e9)])
    head, _, value = result_file(fstore_dir(fstore), "t-format").read_bytes().partition(b"\n")
    header = json.loads(head)
    assert header["omniq_result"] == 1
    assert header["task_id"] == "t-format" and header["status"] == "COMPLETED"
    assert header["expires_at"] == 5e9 and header["size"] == len(b"raw\nvalue")
    assert value == b"raw\nvalue"


async def test_results_in_the_layout_sharded_by_the_first_characters_are_still_served(
    fstore: FileResultStorage,
) -> None:
    # Stores written before task ids began with a clock sharded by the first two
    # characters; an upgrade must still read, purge and delete those results.
    await fstore.store([completed("t-kept", expires_at=5e9), completed("t-old", expires_at=1.0)])
    base = fstore_dir(fstore)
    for task_id in ("t-kept", "t-old"):
        legacy = base / task_id[:2] / f"{task_id}.result"
        legacy.parent.mkdir(exist_ok=True)
        result_file(base, task_id).rename(legacy)
    assert await fstore.get_many(["t-kept", "t-old", "t-none"]) == {
        "t-kept": completed("t-kept", expires_at=5e9)
    }
    assert await fstore.purge_expired(time.time()) == 1
    assert not (base / "t-" / "t-old.result").exists()
    assert await fstore.delete(["t-kept"]) == 1
    assert await fstore.get("t-kept") is None
    assert list(base.rglob("*.result")) == []


def _truncate_value(data: bytes) -> bytes:
    return data[:-3]


def _truncate_header(data: bytes) -> bytes:
    return data[:25]


def _flip_a_value_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _newer_format(data: bytes) -> bytes:
    return data.replace(b'"omniq_result":1', b'"omniq_result":2', 1)


def _another_tasks(data: bytes) -> bytes:
    return data.replace(b'"task_id":"t-damaged"', b'"task_id":"t-other"', 1)


def _wrong_type(data: bytes) -> bytes:
    return data.replace(b'"finished_at":1000000000.0', b'"finished_at":"noon"', 1)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate_value, "value bytes"),
        (_truncate_header, "cut short"),
        (lambda _: b"", "cut short"),
        (lambda _: b"not a result\n", "not JSON"),
        (lambda _: b'{"some": "json"}\n', "not an omniq_mp result"),
        (_flip_a_value_bit, "checksum"),
        (_newer_format, "newer"),
        (_another_tasks, "t-other"),
        (_wrong_type, "wrong type"),
    ],
)
async def test_a_damaged_result_file_is_a_storage_error_naming_the_task(
    fstore: FileResultStorage, damage: Callable[[bytes], bytes], why: str
) -> None:
    await fstore.store([completed("t-damaged", b"some value"), completed("t-fine")])
    path = result_file(fstore_dir(fstore), "t-damaged")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StorageError, match=f"'t-damaged'.*damaged.*{why}"):
        await fstore.get("t-damaged")
    with pytest.raises(StorageError, match="'t-damaged'"):
        await fstore.get_many(["t-fine", "t-damaged"])
    assert await fstore.get("t-fine") == completed("t-fine")
    assert await fstore.delete(["t-damaged"]) == 1  # a damaged result can still be deleted
    assert await fstore.get("t-damaged") is None


async def test_purge_passes_over_damaged_files_counting_and_logging_each_once(
    fstore: FileResultStorage, warnings_logged: list[str]
) -> None:
    now = time.time()
    await fstore.store([completed(f"t-old-{i}", expires_at=now - 10) for i in range(3)])
    await fstore.store([completed("t-bad", expires_at=now - 10), completed("t-new")])
    result_file(fstore_dir(fstore), "t-bad").write_bytes(b"garbage")
    assert await fstore.purge_expired(now) == 3
    assert await fstore.purge_expired(now) == 0
    assert fstore.damaged == 1
    assert len([m for m in warnings_logged if "t-bad.result" in m]) == 1
    assert await fstore.get("t-new") == completed("t-new")


async def test_a_crashed_writers_temp_file_is_ignored_then_swept(
    fstore: FileResultStorage,
) -> None:
    await fstore.store([completed("abc")])
    shard = fstore_dir(fstore) / "bc"
    stale, live = shard / ".abc.result.0123456789ab.tmp", shard / ".abd.result.ba9876543210.tmp"
    stale.write_bytes(b'{"omniq_re')
    live.write_bytes(b'{"omniq_re')
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert await fstore.get("abc") == completed("abc")
    assert await fstore.get("abd") is None
    assert await fstore.purge_expired(time.time()) == 0
    assert fstore.damaged == 0
    assert not stale.exists() and live.exists()  # a live writer's temp is left alone


async def test_the_file_backend_reports_what_is_in_its_way(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    with pytest.raises(StorageError, match="in the way"):
        await FileResultStorage(blocker).open()
    with pytest.raises(StorageError, match="not open"):
        await FileResultStorage(tmp_path / "other").get("t")
    with pytest.raises(ConfigError, match="nope"):
        await FileResultStorage("nope://bucket/results").open()


async def test_drop_deletes_only_what_the_file_store_created(tmp_path: Path) -> None:
    base = tmp_path / "results"
    base.mkdir()
    (base / "notes.txt").write_text("not ours")
    store = FileResultStorage(base)
    await store.open()
    await store.store([completed("abc"), completed("xyz")])
    await store.drop()
    await store.close()
    assert [p.name for p in base.iterdir()] == ["notes.txt"]


def test_the_file_backend_without_fsspec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def without_fsspec(name: str, package: str | None = None) -> ModuleType:
        if name.partition(".")[0] == "fsspec":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr("omniq_mp.extras.importlib.import_module", without_fsspec)
    with pytest.raises(ConfigError, match=r"pip install 'omniq_mp\[fsspec\]'"):
        FileResultStorage("./anywhere")


# -- the SQLite backend ------------------------------------------------------------------------


async def test_a_file_that_is_not_a_database_is_a_one_line_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    path.write_bytes(b"this is not a SQLite database\n" * 200)
    store = SQLiteResultStorage(path)
    with pytest.raises(StorageError) as raised:
        await store.open()
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and "not a database" in message
    await store.close()  # safe after a failed open


async def test_a_damaged_sqlite_row_is_a_storage_error_naming_the_task(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    store = SQLiteResultStorage(path)
    await store.open()
    await store.store([completed("t-row"), completed("t-fine")])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE results SET status = 'RUNNING' WHERE task_id = 't-row'")
    conn.close()
    with pytest.raises(StorageError, match=r"'t-row'.*damaged"):
        await store.get("t-row")
    assert await store.get("t-fine") == completed("t-fine")
    await store.close()


async def test_the_sqlite_backend_creates_its_folder(tmp_path: Path) -> None:
    store = SQLiteResultStorage(tmp_path / "a" / "b" / "results.db")
    await store.open()
    await store.store([completed("t")])
    await store.close()
    assert (tmp_path / "a" / "b" / "results.db").is_file()


# -- the package -------------------------------------------------------------------------------


def test_importing_the_results_package_needs_no_server_extra() -> None:
    code = (
        "import sys, omniq_mp.results as r\n"
        "loaded = {'asyncpg', 'redis', 'nats', 'fsspec'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
        "assert r.MemoryResultStorage and r.FileResultStorage and r.SQLiteResultStorage\n"
        "try:\n    r.NoSuchStorage\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('NoSuchStorage should not exist')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _connection_threads() -> int:
    return sum("_connection_worker_thread" in t.name for t in threading.enumerate())


async def test_a_store_that_cannot_open_leaves_no_connection_thread_behind(
    tmp_path: Path,
) -> None:
    # A connection thread left stopping after a failed open would call back into the
    # caller's event loop after it closed, and raise there.
    path = tmp_path / "results.db"
    path.write_bytes(b"this is not a SQLite database\n" * 200)
    before = _connection_threads()
    for _ in range(5):
        with pytest.raises(StorageError, match="not a database"):
            await SQLiteResultStorage(path).open()
    assert _connection_threads() == before
