"""One NATS connection for the NATS-backed stores: a first connect that fails fast, reconnects
with backoff while running, a JetStream context, and every client error turned into a
one-line StorageError that names ``host:port`` and never credentials.

The ``nats`` package is imported only when a store opens, so this module (and the stores
built on it) import without the ``nats`` extra installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from loguru import logger

from omniq_mp.dsn import endpoint
from omniq_mp.errors import StorageError
from omniq_mp.extras import require

__all__ = ["NATSConnection", "StreamRange"]

_DEFAULT_PORT = 4222
_MAX_BACKOFF = 2.0  # seconds between reconnect attempts, at most
_PULL_BATCH = 1000  # messages asked for per pull request, at most
_PULL_BYTES = 32 * 1024 * 1024  # bytes asked for per pull request, at most
_STORE_CREATE_FAILED = 10049  # "error creating store for stream"
_CREATE_RETRIES = (0.05, 0.2, 0.5)  # seconds before each new try
_T = TypeVar("_T")


class NATSConnection:
    """A NATS client and its JetStream context, shared by one store.

    :param what: what the connection serves ("NATS result storage"), named in errors.
    :param servers: ``nats://[user:password@]host[:port]`` URLs of one cluster.
    :param connect_timeout: seconds the first connect may take, per server, before it
        fails.
    :param request_timeout: seconds a JetStream request may wait for its reply.
    :param reconnect_attempts: attempts per server once connected, before the client gives
        up; the next operation then connects afresh, so a long outage is survived too.
    :param reconnect_grace: seconds an operation waits for a reconnect in progress before
        it fails. Nothing is sent while the client knows it is disconnected; a write sent
        just before the client noticed may still be resent after the reconnect, even though
        it failed with a timeout.
    """

    def __init__(
        self,
        what: str,
        servers: Sequence[str],
        *,
        connect_timeout: float = 2.0,
        request_timeout: float = 5.0,
        reconnect_attempts: int = 60,
        reconnect_grace: float = 1.0,
    ) -> None:
        if isinstance(servers, str):
            servers = [servers]
        if not servers:
            raise StorageError(f"{what}: no NATS server given")
        self.what = what
        self.servers = list(servers)
        self.endpoint = ", ".join(endpoint(s, _DEFAULT_PORT) for s in self.servers)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_grace = reconnect_grace
        self.generation = 0  # bumped by each fresh client: subscriptions must be made again
        self._nc: Any = None
        self._js: Any = None
        self._connected = asyncio.Event()
        self._last_error: BaseException | None = None
        self._open_lock = asyncio.Lock()
        # What errors() translates; the nats error base class joins once the module loads.
        self._nats_errors: tuple[type[BaseException], ...] = (TimeoutError,)

    async def open(self) -> None:
        """Connect (idempotent; a client that gave up reconnecting is replaced).

        :raises StorageError: no server answered within ``connect_timeout`` (one line).
        :raises ConfigError: the ``nats`` extra is missing.
        """
        async with self._open_lock:
            if self._nc is not None and not self._nc.is_closed:
                return
            nats = require("nats", "nats", self.what)
            self._nats_errors = (nats.errors.Error, OSError, TimeoutError)
            client = nats.NATS()
            self._last_error = None
            try:
                await asyncio.wait_for(
                    client.connect(
                        servers=self.servers,
                        name=self.what,
                        connect_timeout=self.connect_timeout,
                        allow_reconnect=True,
                        max_reconnect_attempts=self.reconnect_attempts,
                        # The first connect sleeps this between tries of one server; the
                        # deadline above bounds the whole of it.
                        reconnect_time_wait=0.2,
                        reconnect_to_server_handler=_backoff,
                        ping_interval=10,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        closed_cb=self._on_closed,
                    ),
                    # Each server may take the whole timeout to refuse (a silent host).
                    timeout=self.connect_timeout * len(self.servers),
                )
            except self._nats_errors as exc:
                with contextlib.suppress(Exception):
                    await client.close()
                reason = self._one_line(self._last_error or exc)
                raise StorageError(
                    f"{self.what}: cannot connect to NATS at {self.endpoint}: {reason}"
                ) from None
            self._nc = client
            self._js = client.jetstream(timeout=self.request_timeout)
            self.generation += 1
            self._connected.set()

    async def close(self) -> None:
        """Close the client (idempotent)."""
        client, self._nc, self._js = self._nc, None, None
        self._connected.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    @property
    def nc(self) -> Any:
        """The open ``nats.aio.client.Client``.

        :raises StorageError: :meth:`open` has not succeeded.
        """
        if self._nc is None:
            raise StorageError(f"{self.what} at {self.endpoint} is not open")
        return self._nc

    @property
    def js(self) -> Any:
        """The JetStream context of the open client."""
        self.nc  # noqa: B018 -- raises when not open
        return self._js

    @property
    def max_payload(self) -> int:
        """The largest message, headers included, the server accepts (bytes)."""
        return int(self.nc.max_payload)

    async def ready(self) -> None:
        """Make sure the client is connected before an operation is sent.

        Waits up to ``reconnect_grace`` for a reconnect in progress, and connects afresh
        when the client gave up reconnecting.

        :raises StorageError: the server is unreachable (one line).
        """
        client = self.nc
        if client.is_closed:
            await self.open()
            return
        if client.is_connected:
            return
        try:
            await asyncio.wait_for(self._connected.wait(), self.reconnect_grace)
        except TimeoutError:
            reason = self._one_line(self._last_error) if self._last_error else "disconnected"
            raise StorageError(
                self.message(None, f"unreachable (reconnecting): {reason}")
            ) from None

    @contextlib.contextmanager
    def errors(self, doing: str | None = None) -> Iterator[None]:
        """Turn a NATS client error raised inside the block into a one-line StorageError:
        what, where, ``doing`` (e.g. "cannot store results") and the client's reason."""
        try:
            yield
        except self._nats_errors as exc:
            raise StorageError(self.message(doing, self._one_line(exc))) from exc

    def message(self, doing: str | None, reason: str) -> str:
        """One line naming what failed, where, and why."""
        where = f"{self.what} at NATS {self.endpoint}"
        return f"{where}: {doing}: {reason}" if doing else f"{where}: {reason}"

    async def api(self, subject: str, request: dict[str, Any]) -> dict[str, Any]:
        """A JetStream API request (``$JS.API.`` + ``subject``) and its decoded reply, for the
        replies the client library does not surface (e.g. how many messages a purge removed).

        :raises StorageError: no reply, or the reply is an API error.
        """
        await self.ready()
        with self.errors(subject):
            reply = await self.nc.request(
                f"$JS.API.{subject}", json.dumps(request).encode(), timeout=self.request_timeout
            )
        try:
            data = json.loads(reply.data)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise StorageError(self.message(subject, "unreadable reply"))
        if "error" in data:
            error = data["error"]
            reason = error.get("description", error) if isinstance(error, dict) else error
            raise StorageError(self.message(subject, str(reason)))
        return data

    async def publish_all(
        self, subject: str, payloads: Sequence[bytes], *, stream: str, doing: str
    ) -> list[int]:
        """Publish ``payloads`` in order on ``subject`` into ``stream`` and wait for every
        acknowledgement; return the stream sequence of each, in the same order.

        They are sent one after the other on this one connection, so the server stores them
        in that order, and acknowledged together, so a batch costs about one round trip.
        A failure may leave the first ones stored.

        :raises StorageError: the server refused one, or did not acknowledge in time.
        """
        await self.ready()
        js = self.js
        with self.errors(doing):
            pending = [
                await js.publish_async(subject, payload, stream=stream) for payload in payloads
            ]
            try:
                done = await asyncio.wait_for(
                    asyncio.gather(*pending, return_exceptions=True), self.request_timeout
                )
            except TimeoutError:
                reason = f"{len(payloads)} messages not acknowledged within {self.request_timeout}s"
                raise StorageError(self.message(doing, reason)) from None
            sequences: list[int] = []
            for item in done:
                if isinstance(item, BaseException):
                    raise item
                sequences.append(int(item.seq))
        return sequences

    async def creating(self, create: Callable[[], Awaitable[_T]]) -> _T:
        """``create()`` (a stream or bucket creation), tried again a few times when the server
        failed to make its storage: nats-server 2.9 can lose that race against another
        client deleting a stream at the same moment."""
        errors = require("nats.js.errors", "nats", self.what)
        for delay in _CREATE_RETRIES:
            try:
                return await create()
            except errors.APIError as exc:
                if exc.err_code != _STORE_CREATE_FAILED:
                    raise
            await asyncio.sleep(delay)
        return await create()

    def _one_line(self, exc: BaseException | None) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        for url in self.servers:
            # A server URL, credentials included, must never reach a log or a message.
            text = text.replace(url, endpoint(url, _DEFAULT_PORT))
        return text

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if self._nc is not None and not self._nc.is_closed:
            logger.warning("{}: lost NATS at {}; reconnecting", self.what, self.endpoint)

    async def _on_reconnected(self) -> None:
        self._connected.set()
        logger.info("{}: reconnected to NATS at {}", self.what, self.endpoint)

    async def _on_closed(self) -> None:
        self._connected.clear()


def _backoff(servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
    # nats-py waits a fixed time between reconnects; doubling it instead reconnects at once
    # after a blip and sends few attempts to a server that stays down.
    server = min(servers, key=lambda s: s.reconnects)
    return server, min(0.1 * 2 ** min(server.reconnects, 8), _MAX_BACKOFF)


class StreamRange:
    """The messages of one stream from a start, read through an ephemeral pull consumer.

    One consumer is created per range and deleted after, so a reader needs no state on
    the server between reads. The range ends at the messages present when it was opened
    (messages appended meanwhile belong to the next read). Use as ``async with``.

    :param conn: an open connection.
    :param stream: the stream's name.
    :param subject: the filter subject (wildcards allowed).
    :param start: the first stream sequence to deliver (None: deliver by ``last_per_subject``
        or from the first message).
    :param last_per_subject: deliver only the newest message of each subject (a KV bucket's
        current values and tombstones).
    """

    def __init__(
        self,
        conn: NATSConnection,
        stream: str,
        subject: str,
        *,
        start: int | None = None,
        last_per_subject: bool = False,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.subject = subject
        self.start = start
        self.last_per_subject = last_per_subject
        self.remaining = 0  # messages of the range not delivered yet
        self._consumer: str | None = None
        self._sub: Any = None

    async def __aenter__(self) -> StreamRange:
        api = require("nats.js.api", "nats", self.conn.what)
        await self.conn.ready()
        nc = self.conn.nc
        if self.last_per_subject:
            policy, start = api.DeliverPolicy.LAST_PER_SUBJECT, None
        elif self.start is not None and self.start > 1:
            policy, start = api.DeliverPolicy.BY_START_SEQUENCE, self.start
        else:
            policy, start = api.DeliverPolicy.ALL, None
        config = api.ConsumerConfig(
            name=uuid.uuid4().hex,
            filter_subject=self.subject,
            deliver_policy=policy,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.NONE,
            # Removed by the server if this reader dies before deleting it.
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        with self.conn.errors(f"cannot read stream {self.stream}"):
            self._sub = await nc.subscribe(nc.new_inbox())
            try:
                info = await self.conn.js.add_consumer(self.stream, config)
            except BaseException:
                await self._sub.unsubscribe()
                raise
        self._consumer = info.name
        self.remaining = int(info.num_pending)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        sub, self._sub = self._sub, None
        consumer, self._consumer = self._consumer, None
        # Best effort: the server drops an idle ephemeral consumer by itself.
        with contextlib.suppress(Exception):
            if sub is not None:
                await sub.unsubscribe()
            if consumer is not None and self.conn.nc.is_connected:
                await self.conn.js.delete_consumer(self.stream, consumer)

    async def next(self, count: int = _PULL_BATCH) -> list[Any]:
        """Up to ``count`` further messages of the range, oldest first; [] at its end.

        :raises StorageError: the server failed or did not answer in time.
        """
        count = min(count, self.remaining, _PULL_BATCH)
        if count <= 0 or self._sub is None:
            return []
        nc = self.conn.nc
        # A byte budget as well, so that large messages never overflow the client's buffers;
        # it always holds at least one message.
        max_bytes = max(_PULL_BYTES, 2 * nc.max_payload)
        request = {"batch": count, "max_bytes": max_bytes, "no_wait": True}
        got: list[Any] = []
        with self.conn.errors(f"cannot read stream {self.stream}"):
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}",
                json.dumps(request).encode(),
                reply=self._sub.subject,
            )
            while len(got) < count:
                msg = await self._sub.next_msg(timeout=self.conn.request_timeout)
                status = msg.headers.get("Status") if msg.headers else None
                description = msg.headers.get("Description", "") if status else ""
                if status is None:
                    got.append(msg)
                elif status in ("404", "408"):  # no more messages: the range was purged
                    self.remaining = len(got)
                    break
                elif status == "409" and "MaxBytes" in description and got:
                    break  # this pull is full; the next one goes on
                elif status != "100":  # 100 is a heartbeat
                    raise StorageError(
                        self.conn.message(
                            f"cannot read stream {self.stream}",
                            f"status {status} {description}".rstrip(),
                        )
                    )
        self.remaining -= len(got)
        return got

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Batches of messages until the range ends."""
        while batch := await self.next():
            yield batch
