"""``store``: an opened backend of each kind, closed after the test; PostgreSQL schemas
made for a test are dropped after it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from omniq_mp.storage.base import Storage
from tests.contract.backends import BACKENDS, backend_params, drop_created_schemas


@pytest.fixture(autouse=True)
def _drop_postgres_schemas() -> Iterator[None]:
    yield
    drop_created_schemas()


@pytest.fixture(params=backend_params(list(BACKENDS)))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    storage = BACKENDS[request.param](tmp_path)
    await storage.open()
    yield storage
    await storage.close()
