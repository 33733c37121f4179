"""Servers a test starts for itself, on a free loopback port, so it can stop and restart
them (never the machine's shared ones)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.waiting import until

PASSWORD = "s3cret"


@dataclass
class OwnRedis:
    """A redis-server of this test's own (never the shared one), persisting every write."""

    binary: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--requirepass", PASSWORD, "--dir", str(self.folder), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        args += ["--logfile", str(self.folder / "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

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
        if process.stderr is not None:
            process.stderr.close()

    async def ready(self) -> None:
        client = aioredis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD)

        async def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")
                raise AssertionError(f"redis-server exited: {log[-2000:]}")
            try:
                return bool(await client.ping())
            except (aioredis.ConnectionError, aioredis.BusyLoadingError):
                return False

        try:
            await until(answers, 10, f"redis-server on port {self.port}")
        finally:
            await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: cannot test a restart")
    server = OwnRedis(binary, free_port(), tmp_path)
    try:
        yield server
    finally:
        server.stop()
