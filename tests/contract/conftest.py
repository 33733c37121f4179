"""``store``: an opened backend of each kind, closed after the test; PostgreSQL schemas
made for a test are dropped after it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq_mp.storage.base import Storage
from omniq_mp.storage.postgres import PostgresStorage
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


MakeStore = Callable[..., Awaitable[PostgresStorage]]


@pytest.fixture
def schema() -> str:
    """A PostgreSQL schema name of this test's own."""
    return f"omniq_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_store(postgres_dsn: str, schema: str) -> AsyncIterator[MakeStore]:
    """Opens PostgreSQL stores (on this test's schema unless told otherwise); closes them
    and drops the schema after."""
    opened: list[PostgresStorage] = []

    async def make(**options: Any) -> PostgresStorage:
        dsn = options.pop("dsn", postgres_dsn)
        store = PostgresStorage(dsn, schema=options.pop("schema", schema), **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()
    await PostgresStorage(postgres_dsn, schema=schema).drop()
