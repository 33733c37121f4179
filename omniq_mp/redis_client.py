"""One Redis connection for the Redis-backed stores: built from a URL or host/port, checked
with ``PING`` at open, and with every client error turned into a one-line StorageError that
names ``host:port`` and never the password.

The ``redis`` package is imported only when a store opens, so this module (and the stores
built on it) import without the ``redis`` extra installed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from omniq_mp.dsn import endpoint, redact
from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.extras import require

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisBacked", "RedisConnection"]

_DEFAULT_PORT = 6379
_SCAN_COUNT = 1000
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisConnection:
    """A lazily built ``redis.asyncio`` client and the error mapping both stores share.

    :param what: what the connection serves ("Redis result storage"), named in errors.
    :param host: server host, when ``url`` is not given.
    :param port: server port, when ``url`` is not given.
    :param db: database number, when ``url`` is not given.
    :param url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` or
        ``unix:///path.sock``; takes precedence over host/port/db.
    :param password: used when the URL does not carry one.
    :param retries: how many times a command failing on a broken connection is sent
        again. Only for idempotent writers: a retried non-idempotent command may have run
        before the connection broke.
    """

    def __init__(
        self,
        what: str,
        host: str = "localhost",
        port: int = _DEFAULT_PORT,
        db: int = 0,
        *,
        url: str | None = None,
        password: str | None = None,
        retries: int = 0,
    ) -> None:
        self.what = what
        self.endpoint = _endpoint(url) if url is not None else f"{host}:{port}"
        self._host, self._port, self._db = host, port, db
        self._url = url
        self._password = password
        self._retries = retries
        self._client: Redis | None = None
        # RedisError once the client is built; until then nothing is translated.
        self._redis_error: type[Exception] | tuple[()] = ()

    async def open(self) -> None:
        """Build the client and ``PING`` the server (idempotent).

        :raises StorageError: the server cannot be reached or refuses us (one line).
        :raises ConfigError: the ``redis`` extra is missing, or the URL is invalid.
        """
        if self._client is not None:
            return
        client = self._build()
        try:
            with self.errors(f"cannot open {self.what} at {self.endpoint}"):
                await client.ping()
        except StorageError:
            await client.aclose()
            raise
        self._client = client

    async def close(self) -> None:
        """Release the client's connections (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> Redis:
        """The open client.

        :raises StorageError: :meth:`open` has not succeeded.
        """
        if self._client is None:
            raise StorageError(f"{self.what} at {self.endpoint} is not open")
        return self._client

    @property
    def socket_timeout(self) -> float | None:
        """Seconds a reply may take before the client gives up (None: no limit)."""
        timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        return None if timeout is None else float(timeout)

    @contextlib.contextmanager
    def errors(self, context: str | None = None) -> Iterator[None]:
        """Turn a Redis client error raised inside the block into a one-line StorageError
        starting with ``context`` (default: what and where)."""
        try:
            yield
        except self._redis_error as exc:
            prefix = context or f"{self.what} at {self.endpoint}"
            raise StorageError(f"{prefix}: {self._one_line(exc)}") from exc

    async def scan(self, key_prefix: str) -> AsyncIterator[list[bytes | str]]:
        """Batches of the keys that start with ``key_prefix`` (SCAN, so the server is never
        blocked the way KEYS would; a key written meanwhile may or may not be listed).

        :raises StorageError: the server failed.
        """
        pattern = _GLOB_SPECIAL.sub(r"\\\1", key_prefix) + "*"
        cursor = 0
        while True:
            with self.errors():
                cursor, keys = await self.client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            if keys:
                yield list(keys)
            if cursor == 0:
                return

    def _build(self) -> Redis:
        module = require("redis.asyncio", "redis", self.what)
        self._redis_error = require("redis.exceptions", "redis", self.what).RedisError
        retry_module = require("redis.asyncio.retry", "redis", self.what)
        backoff_module = require("redis.backoff", "redis", self.what)
        # redis-py's default (10 retries, backing off to 1 s) would make an unreachable
        # server take seconds to report; pooled connections the server closed are already
        # replaced when taken from the pool, so a retry is only needed for idempotent writes.
        options: dict[str, Any] = {
            "retry": retry_module.Retry(backoff_module.NoBackoff(), self._retries),
            "password": self._password,
        }
        if self._url is None:
            client: Redis = module.Redis(host=self._host, port=self._port, db=self._db, **options)
            return client
        try:
            client = module.Redis.from_url(self._url, **options)
        except ValueError as exc:
            raise ConfigError(
                f"invalid Redis URL {redact(self._url)}: {self._one_line(exc)}"
            ) from None
        return client

    def _one_line(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        for secret in (self._password, _url_password(self._url)):
            if secret:
                text = text.replace(secret, "***")
        return text


def _endpoint(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable address>"
    if parts.scheme == "unix":
        return parts.path or "<no socket path>"
    return endpoint(url, _DEFAULT_PORT)


def _url_password(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return None if password is None else unquote(password)


class RedisBacked:
    """What every Redis-backed store does with its :class:`RedisConnection`."""

    _redis: RedisConnection

    @property
    def endpoint(self) -> str:
        """``host:port`` (or socket path) of the server, safe to log."""
        return self._redis.endpoint

    async def open(self) -> None:
        """Connect and check the server answers (idempotent).

        :raises StorageError: the server cannot be reached.
        """
        await self._redis.open()

    async def close(self) -> None:
        """Release the connections (idempotent)."""
        await self._redis.close()
