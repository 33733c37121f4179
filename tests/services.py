"""The servers some tests need (PostgreSQL, Redis, NATS on loopback), and how a test asks
for one: ``pytestmark = pytest.mark.redis`` plus the ``redis_url`` fixture (see conftest).

A missing server skips its tests with the reason shown (``-ra``), except under
``OMNIQ_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where a missing server fails them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Service:
    name: str
    host: str
    port: int
    url: str

    def reachable(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False


SERVICES = {
    "postgres": Service(
        "postgres",
        "127.0.0.1",
        5432,
        os.environ.get("OMNIQ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    ),
    "redis": Service("redis", "127.0.0.1", 6379, "redis://127.0.0.1:6379/0"),
    "nats": Service("nats", "127.0.0.1", 4222, "nats://127.0.0.1:4222"),
}


def require(name: str) -> Service:
    """The service, or skip (fail under OMNIQ_REQUIRE_SERVICES=1) when it is not up."""
    service = SERVICES[name]
    if not service.reachable():
        reason = f"{name} is not reachable at {service.host}:{service.port}"
        if os.environ.get("OMNIQ_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} and OMNIQ_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    return service
