"""What the NATS result and event stores promise beyond the shared contracts: an unreachable
server fails fast and names itself, keys NATS cannot hold are refused, a result too large
for one message is stored in chunks that go with it, an event too large is refused,
positions stay ordered across clients, ``wait`` wakes on another client's append, and a
restarted server loses nothing while the same store objects carry on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.eventstore.nats import NATSEventStorage
from omniq_mp.models import TaskError, TaskStatus
from omniq_mp.nats_client import NATSConnection
from omniq_mp.results.base import TaskResult
from omniq_mp.results.nats import NATSResultStorage

pytest.importorskip("nats")
pytestmark = pytest.mark.nats

_T = TypeVar("_T")


# -- helpers -----------------------------------------------------------------------------------


async def eventually(action: Callable[[], Awaitable[_T]], timeout: float, what: str) -> _T:
    """``action``'s result once it stops raising StorageError; fail naming ``what`` if it
    still raises after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await action()
        except StorageError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}") from exc
        await asyncio.sleep(0.05)


def result(task_id: str, value: bytes | None = b"v", **fields: Any) -> TaskResult:
    return TaskResult(task_id, TaskStatus.COMPLETED, value, finished_at=1_700_000_000.5, **fields)


def event(writer: str, seq: int) -> Event:
    return Event(EventType.COMPLETED, task_id=f"{writer}-{seq}", details={"w": writer, "s": seq})


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def results(nats_url: str, unique: str) -> AsyncIterator[NATSResultStorage]:
    store = NATSResultStorage(servers=[nats_url], bucket=f"omniq_results_{unique}")
    await store.open()
    yield store
    await store.drop()
    await store.close()


def event_log(nats_url: str, unique: str) -> NATSEventStorage:
    return NATSEventStorage(
        servers=[nats_url], stream=f"OMNIQ_EVENTS_{unique}", subject=f"omniq.test.{unique}"
    )


@pytest.fixture
async def logs(nats_url: str, unique: str) -> AsyncIterator[list[NATSEventStorage]]:
    """Four stores on one stream, each with its own connection (as separate processes)."""
    opened = [event_log(nats_url, unique) for _ in range(4)]
    for log in opened:
        await log.open()
    yield opened
    await opened[0].drop()
    for log in opened:
        await log.close()


# -- failing fast ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda url: NATSResultStorage(servers=[url]),
        lambda url: NATSEventStorage(servers=[url]),
    ],
    ids=["results", "events"],
)
async def test_an_unreachable_server_fails_fast_naming_it_without_credentials(
    make: Callable[[str], Any],
) -> None:
    store = make("nats://alice:s3cret@127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        await store.open()
    assert time.monotonic() - started < 5
    text = one_line(info)
    assert "127.0.0.1:1" in text and "s3cret" not in text
    await store.close()  # safe after a failed open
    with pytest.raises(StorageError, match="not open"):
        await store.read() if isinstance(store, NATSEventStorage) else await store.get("x")


async def test_creating_a_stream_is_tried_again_when_the_server_fails_to_make_its_store() -> None:
    from nats.js.errors import APIError

    conn = NATSConnection("test", ["nats://127.0.0.1:1"])  # creating() needs no server
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise APIError(code=500, err_code=10049, description="error creating store")
        return "created"

    assert await conn.creating(flaky) == "created" and len(calls) == 3

    async def refused() -> str:
        calls.append(1)
        raise APIError(code=400, err_code=10058, description="stream name already in use")

    calls.clear()
    with pytest.raises(APIError):
        await conn.creating(refused)
    assert len(calls) == 1  # other refusals are final


# -- results -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a b", "a*b", "a>", "", ".a", "a.", "a..b", "tâche", "a\nb"])
async def test_a_task_id_nats_cannot_use_as_a_key_is_refused(
    results: NATSResultStorage, bad: str
) -> None:
    with pytest.raises(ValueError, match="cannot be a NATS key"):
        await results.store([result("fine"), result(bad)])
    assert await results.get("fine") is None  # the batch was refused whole
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: results.get(bad),
        lambda: results.get_many(["fine", bad]),
        lambda: results.delete([bad]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="cannot be a NATS key"):
            await call()
    await results.store([result("a-b_c=d/e.f")])  # every character NATS allows
    assert await results.get("a-b_c=d/e.f") == result("a-b_c=d/e.f")


MIB = 1024 * 1024


async def test_values_larger_than_one_message_round_trip_and_leave_no_chunks_behind(
    results: NATSResultStorage, nats_url: str
) -> None:
    assert MIB == 1048576  # the server's max_payload
    sent = [
        result("edge-in", os.urandom(MIB - 400)),  # with its header, still one message
        result("edge-out", os.urandom(MIB)),  # four chunks of 256 KiB
        result("huge", os.urandom(5 * MIB + 3)),
        result("small"),
    ]
    await results.store(sent)
    assert await results.get_many([r.task_id for r in sent]) == {r.task_id: r for r in sent}
    assert await results.get("huge") == sent[2]

    conn = NATSConnection("test", [nats_url])
    await conn.open()

    async def chunks_kept() -> int:
        info = await conn.js.stream_info(f"OMNIQ_CHUNKS_{results.bucket}")
        return int(info.state.messages)

    try:
        rewritten = result("huge", os.urandom(3 * MIB))
        await results.store([rewritten])  # the earlier write's chunks go
        assert await results.get("huge") == rewritten
        assert await chunks_kept() == 4 + 12
        assert await results.delete(["huge", "edge-out", "small"]) == 3
        assert await chunks_kept() == 0
        await results.store([result("old", os.urandom(2 * MIB), expires_at=time.time() - 1)])
        assert await results.get("old") is None
        assert await chunks_kept() == 0  # the read that found it expired removed them
    finally:
        await conn.close()


async def test_a_value_larger_than_what_one_read_fetches_round_trips(
    results: NATSResultStorage,
) -> None:
    sent = result("t-40", os.urandom(40 * MIB))  # reads fetch 32 MiB at most at a time
    await results.store([sent])
    assert await results.get("t-40") == sent


async def test_values_round_trip_byte_for_byte_and_none_differs_from_empty(
    results: NATSResultStorage,
) -> None:
    error = TaskError("ValueError", "bad\ninput é", "Traceback…\n", kind="exception")
    sent = [
        result("none", None),
        result("empty", b""),
        result("newlines", b"\n\n{json-looking}\n\x00\xff"),
        TaskResult("failed", TaskStatus.FAILED, error=error, finished_at=2.25, expires_at=9e9),
    ]
    await results.store(sent)
    assert await results.get_many([r.task_id for r in sent]) == {r.task_id: r for r in sent}


async def test_an_expired_result_reads_as_missing_and_that_read_removes_it(
    results: NATSResultStorage,
) -> None:
    past = time.time() - 1
    await results.store([result("old", expires_at=past), result("also-old", expires_at=past)])
    assert await results.get("old") is None
    assert await results.get_many(["also-old"]) == {}
    assert await results.purge_expired(time.time()) == 0  # both went with the reads
    assert await results.delete(["old", "also-old"]) == 0


async def test_a_deleted_result_can_be_stored_again(results: NATSResultStorage) -> None:
    await results.store([result("t", b"first")])
    assert await results.delete(["t", "t"]) == 1
    assert await results.get("t") is None
    await results.store([result("t", b"second")])
    assert await results.get("t") == result("t", b"second")


async def test_a_store_sees_results_another_client_wrote(
    results: NATSResultStorage, nats_url: str
) -> None:
    other = NATSResultStorage(servers=[nats_url], bucket=results.bucket)
    await other.open()
    try:
        await other.store([result("from-other")])
        assert await results.get("from-other") == result("from-other")
    finally:
        await other.close()


# -- events ------------------------------------------------------------------------------------


async def test_positions_increase_across_concurrent_appenders_and_a_follower_sees_each_once(
    logs: list[NATSEventStorage],
) -> None:
    follower, *writers = logs
    per_writer = 200

    async def write(log: NATSEventStorage, name: str) -> None:
        for start in range(0, per_writer, 10):
            await log.append([event(name, i) for i in range(start, start + 10)])

    async def follow() -> list[StoredEvent]:
        seen: list[StoredEvent] = []
        while len(seen) < per_writer * len(writers):
            after = seen[-1].position if seen else 0
            page = await follower.read(after=after, limit=37)
            if not page:
                await follower.wait(after, timeout=1.0)
            seen += page
        return seen

    seen, *_ = await asyncio.wait_for(
        asyncio.gather(follow(), *(write(w, f"w{i}") for i, w in enumerate(writers))), 60
    )
    positions = [s.position for s in seen]
    assert all(a < b for a, b in itertools.pairwise(positions))
    assert seen == await follower.read(limit=10_000)  # nothing missed, nothing twice
    assert await follower.read(after=positions[-1]) == []
    by_writer: dict[str, list[int]] = {}
    for s in seen:
        by_writer.setdefault(s.event.details["w"], []).append(s.event.details["s"])
    assert by_writer == {f"w{i}": list(range(per_writer)) for i in range(len(writers))}


async def test_wait_returns_promptly_when_another_client_appends(
    logs: list[NATSEventStorage],
) -> None:
    follower, writer, *_ = logs
    started = time.monotonic()
    await follower.wait(0, timeout=0.3)  # nothing yet: returns at its timeout
    assert 0.25 < time.monotonic() - started < 3

    waiting = asyncio.create_task(follower.wait(0, timeout=30))
    done, _ = await asyncio.wait({waiting}, timeout=0.3)
    assert not done  # it is waiting, not returning early
    sent = event("w", 0)
    await writer.append([sent])
    appended = time.monotonic()
    await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - appended < 2
    [stored] = await follower.read()
    assert stored.event == sent

    started = time.monotonic()
    await follower.wait(0, timeout=30)  # already past: returns at once
    assert time.monotonic() - started < 2


async def test_a_read_spanning_many_pulls_and_a_filtered_scan_find_everything(
    logs: list[NATSEventStorage],
) -> None:
    log = logs[0]
    sent = [event("a", i) for i in range(2500)]
    for start in range(0, 2500, 500):
        await log.append(sent[start : start + 500])
    stored = await log.read(limit=5000)
    assert [s.event for s in stored] == sent
    assert await log.read(after=stored[999].position, limit=1500) == stored[1000:]
    late = await log.read(task_id="a-2400")  # beyond the first pulls of a scan
    assert [s.position for s in late] == [stored[2400].position]


async def test_an_event_over_the_server_limit_refuses_its_whole_batch(
    logs: list[NATSEventStorage],
) -> None:
    log = logs[0]
    huge = Event(EventType.FAILED, task_id="big", details={"blob": "x" * (1024 * 1024)})
    with pytest.raises(StorageError) as info:
        await log.append([event("a", 0), huge])
    assert "1048576 bytes" in one_line(info)
    assert await log.read() == []


async def test_purge_cuts_the_log_at_the_first_recent_event(logs: list[NATSEventStorage]) -> None:
    log = logs[0]
    old, recent = 1_000_000.0, time.time()
    stamps = [old] * 5 + [recent] * 3 + [old] * 2  # an old stamp after a recent one stays
    await log.append([Event(EventType.STARTED, "first", recent)])
    assert await log.purge(old) == 0  # the very first event is recent: nothing goes
    assert await log.purge(recent + 1) == 1
    await log.append([Event(EventType.STARTED, f"t{i}", ts) for i, ts in enumerate(stamps)])
    stored = await log.read()
    assert await log.purge(old) == 0
    assert await log.purge(old + 1) == 5
    assert await log.read() == stored[5:]
    assert await log.purge(recent + 3600) == 5  # everything older than a future time


async def test_a_stream_that_does_not_capture_the_subject_is_refused(
    logs: list[NATSEventStorage], nats_url: str
) -> None:
    other = NATSEventStorage(servers=[nats_url], stream=logs[0].stream, subject="omniq.elsewhere")
    with pytest.raises(StorageError, match=r"does not capture subject omniq\.elsewhere"):
        await other.open()
    await other.close()


# -- a server of our own, stopped and started again --------------------------------------------


def _nats_server_binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
    )
    if found is None:
        pytest.skip("nats-server is not installed (needed to restart a server of our own)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnServer:
    """A ``nats-server -js`` on a loopback port, with its store in a folder."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.args = [binary, "-js", "-sd", str(folder / "js"), "-p", str(self.port)]
        self.args += ["-a", "127.0.0.1"]
        self.log = folder / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    server = OwnServer(_nats_server_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_restarted_server_loses_no_result_and_the_same_stores_carry_on(
    own_server: OwnServer,
) -> None:
    results = NATSResultStorage(servers=[own_server.url], bucket="restart")
    events = NATSEventStorage(servers=[own_server.url], stream="RESTART", subject="restart.ev")
    try:
        await eventually(results.open, 20, "the new server to serve a bucket")
        await eventually(events.open, 20, "the new server to serve a stream")
        sent = [result(f"t-{i}", os.urandom(64) + bytes([i])) for i in range(50)]
        sent.append(TaskResult("dead", TaskStatus.DEAD, error=TaskError("WorkerCrashed", "x")))
        await results.store(sent)
        await events.append([event("a", i) for i in range(20)])
        logged = await events.read()

        await asyncio.to_thread(own_server.stop)  # the clients see the server go meanwhile
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            await results.store([result("while-down")])
        assert time.monotonic() - started < 10
        assert f"127.0.0.1:{own_server.port}" in one_line(info)

        own_server.start()
        await eventually(lambda: results.store([result("after")]), 30, "a store to work again")
        found = await results.get_many([r.task_id for r in sent] + ["after", "while-down"])
        # The failed write may still land: the client resends what it had buffered when the
        # server went away. Harmless for results, which a retry would write again anyway.
        found.pop("while-down", None)
        assert found == {r.task_id: r for r in [*sent, result("after")]}
        await eventually(events.read, 30, "the event store to work again")
        assert await events.read() == logged
        later = event("b", 0)
        await events.append([later])
        [added] = await events.read(after=logged[-1].position)
        assert added.event == later
    finally:
        for store in (results, events):
            with contextlib.suppress(StorageError):
                await store.close()


async def test_a_connection_that_gave_up_reconnecting_connects_afresh_when_next_used(
    own_server: OwnServer,
) -> None:
    conn = NATSConnection("test connection", [own_server.url], reconnect_attempts=1)
    await eventually(conn.open, 20, "the new server to accept a connection")
    try:
        first = conn.generation
        await asyncio.to_thread(own_server.stop)  # the clients see the server go meanwhile
        deadline = time.monotonic() + 20
        while not conn.nc.is_closed:  # two quick attempts, then the client gives up
            assert time.monotonic() < deadline, "the client never gave up reconnecting"
            await asyncio.sleep(0.05)
        with pytest.raises(StorageError) as info:
            await conn.ready()
        assert f"cannot connect to NATS at 127.0.0.1:{own_server.port}" in one_line(info)

        own_server.start()
        await eventually(conn.ready, 20, "a fresh connection")
        assert conn.generation == first + 1
        assert conn.nc.is_connected
        with conn.errors():
            await conn.js.account_info()
    finally:
        await conn.close()
