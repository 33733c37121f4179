"""``omniq-mp db`` takes its DSN and schema from the settings every command builds: the
``--config`` file, then ``OMNIQ_*`` variables, then its own ``--dsn``/``--schema``. And a
bad value in a config file names the file, whatever command reads it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from omniq_mp.storage.postgres_migrations import LATEST
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


@pytest.fixture(autouse=True)
def no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own OMNIQ_* settings must not decide where these commands go."""
    for name in ("OMNIQ_CONFIG", "OMNIQ_DSN", "OMNIQ_POSTGRES_SCHEMA"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def schemas(postgres_dsn: str) -> Iterator[list[str]]:
    """Three fresh schema names on the test server, all dropped afterwards."""
    names = [f"omniq_dbset_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    yield names
    asyncio.run(_drop(postgres_dsn, names))


async def _drop(dsn: str, names: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name in names:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()


def existing(dsn: str, names: list[str]) -> set[str]:
    """Which of ``names`` exist as schemas on the server."""

    async def query() -> set[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT schema_name FROM information_schema.schemata "
                "WHERE schema_name = ANY($1::text[])",
                names,
            )
        finally:
            await conn.close()
        return {row["schema_name"] for row in rows}

    return asyncio.run(query())


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.postgres
def test_db_commands_take_dsn_and_schema_from_the_config_file(
    omniq: Cli, postgres_dsn: str, schemas: list[str], tmp_path: Path
) -> None:
    schema = schemas[0]
    config = write(tmp_path / "c.yaml", f"dsn: {postgres_dsn}\npostgres_schema: {schema}\n")
    # Read-only first: a db command that ignored the file fails here, before creating
    # anything in another database.
    before = omniq("--config", config, "db", "version")
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith(f"schema {schema}: version 0 ")
    upgraded = omniq("--config", config, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"schema {schema}: applied migration" in upgraded.stdout
    assert existing(postgres_dsn, schemas) == {schema}
    after = omniq("--config", config, "db", "version")
    assert after.stdout == f"schema {schema}: version {LATEST} (up to date)\n"


@pytest.mark.postgres
def test_db_commands_honour_omniq_postgres_schema(
    omniq: Cli, postgres_dsn: str, schemas: list[str]
) -> None:
    schema = schemas[0]
    env = {"OMNIQ_DSN": postgres_dsn, "OMNIQ_POSTGRES_SCHEMA": schema}
    before = omniq("db", "version", **env)
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith(f"schema {schema}: version 0 ")
    upgraded = omniq("db", "upgrade", **env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.startswith(f"schema {schema}: applied migration")
    assert existing(postgres_dsn, schemas) == {schema}


@pytest.mark.postgres
def test_explicit_dsn_and_schema_beat_the_environment_and_the_file(
    omniq: Cli, postgres_dsn: str, schemas: list[str], tmp_path: Path
) -> None:
    in_file, in_env, given = schemas
    config = write(tmp_path / "c.toml", f'dsn = "{UNREACHABLE}"\npostgres_schema = "{in_file}"\n')
    args = ("--config", config, "db", "upgrade", "--dsn", postgres_dsn, "--schema", given)
    upgraded = omniq(*args, OMNIQ_POSTGRES_SCHEMA=in_env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.startswith(f"schema {given}: applied migration")
    assert existing(postgres_dsn, schemas) == {given}


def test_the_environment_beats_the_file_for_db(omniq: Cli, tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "dsn: postgresql://postgres@127.0.0.1:2/x\n")
    shown = omniq("--config", config, "db", "version", OMNIQ_DSN=UNREACHABLE)
    assert shown.returncode == 1
    assert "127.0.0.1:1" in shown.stderr and "127.0.0.1:2" not in shown.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("procs: 0\n", "bad2.yaml: procs must be an integer >= 1, got 0"),
        ("lease_ttl: -1\n", "bad2.yaml: lease_ttl must be a finite number of seconds > 0"),
    ],
)
@pytest.mark.parametrize("command", [["workers", "--burst"], ["db", "version"]])
def test_a_bad_number_in_the_config_file_names_the_file(
    omniq: Cli, tmp_path: Path, text: str, message: str, command: list[str]
) -> None:
    config = write(tmp_path / "bad2.yaml", text)
    done = omniq("--config", config, *command, OMNIQ_DSN=UNREACHABLE)
    assert done.returncode == 2
    assert message.replace("bad2.yaml", config) in done.stderr
    assert "Traceback" not in done.stderr
