"""``store``: an opened backend of each kind, closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omniq_mp.storage.base import Storage
from tests.contract.backends import BACKENDS


@pytest.fixture(params=list(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    storage = BACKENDS[request.param](tmp_path)
    await storage.open()
    yield storage
    await storage.close()
