"""Fixtures shared by every test folder: the servers of tests/services.py."""

from __future__ import annotations

import pytest

from tests.services import require


@pytest.fixture
def postgres_dsn() -> str:
    """DSN of the loopback PostgreSQL (database ``test``); skips or fails if it is down."""
    return require("postgres").url


@pytest.fixture
def redis_url() -> str:
    """URL of the loopback Redis; skips or fails if it is down."""
    return require("redis").url


@pytest.fixture
def nats_url() -> str:
    """URL of the loopback NATS with JetStream; skips or fails if it is down."""
    return require("nats").url


# Servers a test starts for itself (restart tests); imported here so any test can ask.
from tests.own_servers import own_redis  # noqa: E402, F401
