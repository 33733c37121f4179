"""Signed payloads and results (reliability matrix row 34): nothing forged is unpickled.

The attacker here can write the store but does not hold the key. Every forged payload is
built around a pickle whose unpickling creates a file in ``sentinels/``, so "that folder
stays empty" proves nothing was unpickled, whatever the failure message says.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from omniq_mp import AsyncOmniQ, OmniQ, Settings, Task, TaskStatus
from omniq_mp.envelope import local_header, seal
from omniq_mp.errors import ConfigError, SignatureError
from omniq_mp.models import ErrorKind
from omniq_mp.queue import build_task
from omniq_mp.signing import ANY, MAC_SIZE, MAGIC, PAYLOAD, RESULT, Signer, strip
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.process.conftest import no_stray_processes  # noqa: F401 (autouse: no leaked workers)

KEY = "active-signing-key-" + "a" * 32
OLD_KEY = "retired-signing-key-" + "o" * 32
OTHER_KEY = "someone-elses-key-" + "z" * 32
WAIT = 60.0


class _Plant:
    """Unpickling this creates the file ``path``: the stand-in for an attacker's code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "a"))


def evil_call(sentinel: Path) -> bytes:
    """A payload (envelope header + pickle) that creates ``sentinel`` when unpickled."""
    # Protocol 2 has no frames, so even a truncated copy runs the REDUCE before failing.
    return seal(local_header(), pickle.dumps((_Plant(sentinel), (), {}), protocol=2))


def signer(key: str = KEY, key_id: str = "k1") -> Signer:
    return Signer({key_id: key.encode()}, key_id)


def settings_for(tmp_path: Path, **fields: Any) -> Settings:
    return Settings(base_dir=tmp_path / "store", procs=2, retry_delay=0.05, **fields)


async def insert(settings: Settings, tasks: list[Task]) -> None:
    """Write tasks straight into the store, as anyone who can write its file could."""
    storage = SQLiteStorage(settings.sqlite_path)
    await storage.open()
    try:
        await storage.enqueue(tasks)
    finally:
        await storage.close()


async def run_until_finished(settings: Settings, ids: list[str]) -> dict[str, Task]:
    """Run a supervisor over the store until every task in ``ids`` has finished."""
    async with AsyncOmniQ(settings) as q:
        return {task_id: await q.wait_finished(task_id, WAIT) for task_id in ids}


def assert_rejected(task: Task, reason: str) -> None:
    """FAILED by the signature check on its first and only attempt, naming ``reason``."""
    assert task.status is TaskStatus.FAILED, (task.id, task.status, task.error)
    assert task.error is not None
    assert task.error.error_type == "SignatureError", task.error
    assert task.error.kind == ErrorKind.SERIALIZATION.value
    assert task.attempts == 1, "a signature failure must not be retried"
    assert reason in task.error.message, task.error.message
    assert KEY not in str(task.error) + task.error.traceback


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every loguru line omniq_mp and the workers write during the test, with extras."""
    lines: list[str] = []
    logger.enable("omniq_mp")
    sink = logger.add(lambda m: lines.append(f"{m} {m.record['extra']!r}"), level=0)
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("omniq_mp")


# -- the threat, with signing off and on -----------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("signing", [False, True], ids=["signing-off", "signing-on"])
async def test_a_pickle_written_into_the_store_runs_only_with_signing_off(
    tmp_path: Path, signing: bool
) -> None:
    sentinel = tmp_path / "sentinel"
    settings = settings_for(tmp_path, signing_key=KEY if signing else None)
    evil = Task(func_name="evil", payload=evil_call(sentinel), max_retries=0 if not signing else 3)
    await insert(settings, [evil])
    finished = (await run_until_finished(settings, [evil.id]))[evil.id]
    if not signing:
        # The documented threat: a store writer runs code as the worker. (The call then
        # fails, as the planted object is not callable, but its code already ran.)
        assert sentinel.exists()
        return
    assert not sentinel.exists()
    assert_rejected(finished, "not signed")


# -- every way of tampering with a signed payload --------------------------------------------


def _flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


def _header_end(blob: bytes) -> int:
    return len(MAGIC) + 3 + blob[len(MAGIC) + 2] + MAC_SIZE


def _forgeries(sentinels: Path, old_payload: bytes) -> list[tuple[str, Task, str]]:
    """(case, task, reason the worker must give): each payload is evil underneath."""
    key = signer()

    def signed_for(task_id: str | None, case: str) -> bytes:
        return key.seal(task_id, PAYLOAD, evil_call(sentinels / case))

    cases: list[tuple[str, Task, str]] = []

    def add(case: str, payload: bytes, reason: str, task_id: str | None = None) -> None:
        task = Task(func_name=case, payload=payload, max_retries=3)
        cases.append((case, task if task_id is None else replace(task, id=task_id), reason))

    mismatch = "does not match its signature"
    task_id = "b" * 32
    blob = signed_for(task_id, "bitflip")
    # The last bit of the sentinel's name: still a working pickle, creating another file.
    add("bitflip", _flip(blob, blob.index(b"bitflip") + 6), mismatch, task_id)
    blob = signed_for(task_id := "c" * 32, "macflip")
    add("macflip", _flip(blob, _header_end(blob) - 1), mismatch, task_id)
    blob = signed_for(task_id := "d" * 32, "truncated")
    add("truncated", blob[:-1], mismatch, task_id)  # minus STOP: the REDUCE would still run
    blob = signed_for(task_id := "e" * 32, "stripped")
    end = _header_end(blob)
    add("stripped-mac", blob[: end - MAC_SIZE] + blob[end:], mismatch, task_id)
    add("copied-from-task-a", signed_for("a" * 32, "copied"), mismatch)
    add("replayed-old-blob", old_payload, mismatch)
    blob = signed_for(task_id := "f" * 32, "scope")
    add("scope-forged", _flip(blob, len(MAGIC) + 1), mismatch, task_id)  # "for any task"
    unknown = signer(OTHER_KEY, "kx").seal(
        task_id := "9" * 32, PAYLOAD, evil_call(sentinels / "unknown")
    )
    add("unknown-key-id", unknown, "key id 'kx'", task_id)
    return cases


def _write_unsigned_row(settings: Settings, task_id: str, payload: bytes) -> None:
    """What someone with the sqlite3 CLI and write access to the file can do."""
    with sqlite3.connect(settings.sqlite_path) as conn:
        conn.execute(
            "INSERT INTO tasks (id, func_name, payload, queue, status, eta, max_retries,"
            " created_at) VALUES (?, 'unsigned', ?, 'default', 'PENDING', 0, 3, 0)",
            (task_id, payload),
        )
    conn.close()


@pytest.mark.process
async def test_every_tampered_payload_fails_unretried_without_being_unpickled(
    tmp_path: Path, logs: list[str]
) -> None:
    settings = settings_for(tmp_path, signing_key=KEY)
    ran = tmp_path / "ran.txt"

    def mark(path: str) -> str:
        with open(path, "a") as f:
            f.write("ran\n")
        return "done"

    async with AsyncOmniQ(settings) as q:  # an honest task, completed, whose blob is replayed
        old_id = await q.enqueue(mark, str(ran))
        assert await q.get_result(old_id, timeout=WAIT) == "done"
        old = await q.get_task(old_id)
    assert old is not None
    sentinels = tmp_path / "sentinels"
    sentinels.mkdir()
    cases = _forgeries(sentinels, old.payload)
    await insert(settings, [task for _, task, _ in cases])
    _write_unsigned_row(settings, "0" * 32, evil_call(sentinels / "unsigned"))
    cases.append(("unsigned-row", Task(func_name="-", payload=b"", id="0" * 32), "not signed"))

    finished = await run_until_finished(settings, [task.id for _, task, _ in cases])

    assert sorted(p.name for p in sentinels.iterdir()) == [], "a forged payload was unpickled"
    for case, task, reason in cases:
        assert finished[task.id].status is TaskStatus.FAILED, case
        assert_rejected(finished[task.id], reason)
    assert ran.read_text() == "ran\n", "the replayed blob ran a second time"
    assert logs, "the run was expected to log"
    assert not [line for line in logs if KEY in line], "the key reached the logs"


# -- results -----------------------------------------------------------------------------------


def _set_result(settings: Settings, task_id: str, result: bytes | None) -> None:
    with sqlite3.connect(settings.sqlite_path) as conn:
        conn.execute("UPDATE tasks SET result = ? WHERE id = ?", (result, task_id))
    conn.close()


@pytest.mark.process
def test_a_result_altered_in_the_store_is_refused_before_unpickling(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, signing_key=KEY)
    with OmniQ(settings) as q:
        ids = [q.enqueue(pow, 2, n) for n in range(5)]
        assert [q.get_result(i, timeout=WAIT) for i in ids] == [1, 2, 4, 8, 16]
        tasks = [q.get_task(i) for i in ids]
    results = [t.result if t is not None else None for t in tasks]
    assert all(r is not None and r.startswith(MAGIC) for r in results), "results are signed"
    flipped, copied, planted, removed, intact = ids
    blob, intact_blob = results[0] or b"", results[4] or b""
    _set_result(settings, flipped, blob[:-2] + bytes([blob[-2] ^ 0x10]) + blob[-1:])
    _set_result(settings, copied, intact_blob)  # task A's result under task B
    sentinel = tmp_path / "client-sentinel"
    _set_result(settings, planted, pickle.dumps(_Plant(sentinel)))
    _set_result(settings, removed, None)  # would read as a None value

    q = OmniQ(settings)  # a producer: no workers of its own
    try:
        for task_id, reason in (
            (flipped, "does not match its signature"),
            (copied, "does not match its signature"),
            (planted, "not signed"),
            (removed, "not signed"),
        ):
            with pytest.raises(SignatureError, match=reason) as caught:
                q.get_result(task_id, timeout=WAIT)
            assert KEY not in str(caught.value)
            assert isinstance(q.future(task_id).exception(timeout=WAIT), SignatureError)
        assert q.get_result(intact, timeout=WAIT) == 16
    finally:
        q.close()
    assert not sentinel.exists(), "the client unpickled a forged result"


# -- key rotation ------------------------------------------------------------------------------


@pytest.mark.process
async def test_a_payload_signed_with_a_retired_key_runs_only_while_that_key_is_kept(
    tmp_path: Path,
) -> None:
    retired = signer(OLD_KEY, "k0")
    kept = settings_for(tmp_path / "kept", signing_key=KEY, signing_keys_old=f"k0:{OLD_KEY}")
    dropped = settings_for(tmp_path / "dropped", signing_key=KEY)
    for settings in (kept, dropped):
        task = build_task(pow, (2, 10), signer=retired)
        await insert(settings, [task])
        [done] = (await run_until_finished(settings, [task.id])).values()
        if settings is kept:
            assert done.status is TaskStatus.COMPLETED, done.error
            q = AsyncOmniQ(settings)  # a producer reading the result the worker signed
            try:
                assert await q.get_result(task.id) == 1024
            finally:
                await q.close()
        else:
            assert_rejected(done, "key id 'k0'")


# -- recurring tasks ---------------------------------------------------------------------------


@pytest.mark.process
def test_interval_reruns_get_new_ids_and_still_verify(tmp_path: Path) -> None:
    from tests.process.support import wait_until_sync

    ran = tmp_path / "ran.txt"

    def tick(path: str) -> None:
        with open(path, "a") as f:
            f.write("tick\n")

    with OmniQ(settings_for(tmp_path, signing_key=KEY)) as q:
        q.enqueue(tick, str(ran), interval=0.05)
        wait_until_sync(
            lambda: ran.exists() and ran.read_text().count("tick") >= 2,
            WAIT,
            lambda: f"two runs of the interval task (stats: {q.stats()})",
        )
        assert q.stats().failed == 0


async def test_cron_templates_are_signed_for_any_task(tmp_path: Path) -> None:
    q = AsyncOmniQ(settings_for(tmp_path, signing_key=KEY))
    try:
        await q.schedule(pow, 2, 3, cron="*/5 * * * *")
        [schedule] = await q.periodic()
    finally:
        await q.close()
    fired = schedule.template.rerun(0.0, 0.0)  # what each firing stores: a fresh id
    assert signer().unseal(fired.id, PAYLOAD, fired.payload) == strip(fired.payload)


# -- the signer itself ---------------------------------------------------------------------------


def test_a_mac_binds_task_id_kind_and_bytes() -> None:
    key = signer()
    blob = key.seal("t1", PAYLOAD, b"call")
    assert key.unseal("t1", PAYLOAD, blob) == b"call"
    for task_id, kind in (("t2", PAYLOAD), ("t1", RESULT)):
        with pytest.raises(SignatureError, match="does not match"):
            key.unseal(task_id, kind, blob)
    anywhere = key.seal(ANY, PAYLOAD, b"call")
    assert key.unseal("any-id", PAYLOAD, anywhere) == b"call"
    with pytest.raises(SignatureError, match="scope"):
        key.unseal("t1", RESULT, key.seal(ANY, RESULT, b"value"))
    for damaged in (blob[:5], blob[: len(MAGIC) + 3 + 2 + 10]):
        with pytest.raises(SignatureError, match="truncated"):
            key.unseal("t1", PAYLOAD, damaged)


def test_with_signing_off_a_signed_blob_is_read_without_a_key() -> None:
    blob = signer().seal("t1", RESULT, pickle.dumps(42))
    assert pickle.loads(strip(blob)) == 42
    assert strip(b"plain") == b"plain"


# -- keys never show ---------------------------------------------------------------------------


def test_settings_never_show_a_key() -> None:
    settings = Settings(signing_key=KEY, signing_keys_old=f"k0:{OLD_KEY}")
    for text in (repr(settings), str(settings), repr(Signer.from_settings(settings))):
        assert KEY not in text and OLD_KEY not in text
    assert "k1" in repr(Signer.from_settings(settings))


@pytest.mark.parametrize(
    ("fields", "field", "secret"),
    [
        ({"signing_key": "short-secret-123"}, "signing_key ", "short-secret-123"),
        ({"signing_key": KEY, "signing_keys_old": "k0:tiny-old-secret"}, "k0", "tiny-old-secret"),
        ({"signing_key": KEY, "signing_keys_old": "no-colon-secret"}, "entry 1", "no-colon-secret"),
        ({"signing_key": KEY, "signing_keys_old": f"k1:{OLD_KEY}"}, "signing_keys_old", OLD_KEY),
        ({"signing_keys_old": f"k0:{OLD_KEY}"}, "needs signing_key", OLD_KEY),
        ({"signing_key": KEY, "signing_key_id": "a,b"}, "signing_key_id", KEY),
        ({"signing_key": 12345}, "signing_key must be a string", "12345"),
    ],
)
def test_bad_signing_settings_name_the_field_not_the_secret(
    fields: dict[str, Any], field: str, secret: str
) -> None:
    with pytest.raises(ConfigError, match=field) as caught:
        Settings(**fields)
    assert KEY not in str(caught.value) and secret not in str(caught.value)


def test_signing_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "OMNIQ_SIGNING_KEY": KEY,
            "OMNIQ_SIGNING_KEY_ID": "k2",
            "OMNIQ_SIGNING_KEYS_OLD": f"k0:{OLD_KEY}, k1:{OTHER_KEY}",
        }
    )
    made = Signer.from_settings(settings)
    assert made is not None and made.key_id == "k2" and made.key_ids == ("k0", "k1", "k2")
    assert Signer.from_settings(Settings.from_env({})) is None
