"""``omniq-mp`` options an operator gets wrong: each is refused as a usage error (exit 2,
one line naming the option), and nothing is stored or created."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from omniq_mp.dsn import redact
from tests.e2e.conftest import Cli, cli_env

pytestmark = pytest.mark.e2e


def _run_in(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``omniq-mp ARGS`` with ``cwd`` as the current folder and no OMNIQ_BASE_DIR, as a
    shell script run there would."""
    environ = cli_env(cwd / "unused", **env)
    del environ["OMNIQ_BASE_DIR"]
    return subprocess.run(
        [sys.executable, "-m", "omniq_mp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=cwd,
    )


def _counts(omniq: Cli) -> dict[str, int]:
    done = omniq("status", "--json")
    assert done.returncode == 0, done.stderr
    counts: dict[str, int] = json.loads(done.stdout)["tasks"]
    return counts


def _assert_usage_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--base-dir", ""),
        ("enqueue", "math.pow", "2", "3", "--base-dir", ""),
        ("workers", "--burst", "--base-dir", ""),
    ],
)
def test_an_empty_base_dir_is_refused_not_taken_as_the_current_folder(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # `--base-dir "$STORE"` with STORE unset must not put a store where the script runs.
    done = _run_in(tmp_path, *args)
    _assert_usage_error(done, "--base-dir", "must not be empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--backend", "postgres", "--dsn", ""),
        ("db", "version", "--dsn", ""),
        ("db", "upgrade", "--schema", ""),
    ],
)
def test_an_empty_dsn_or_schema_is_refused_not_taken_as_the_default(
    omniq: Cli, args: tuple[str, ...]
) -> None:
    done = omniq(*args)
    _assert_usage_error(done, "must not be empty")
    assert ("--dsn" in done.stderr) or ("--schema" in done.stderr)


def test_a_dsn_without_the_postgres_backend_is_refused(omniq: Cli) -> None:
    # Without --backend postgres the DSN used to be ignored, and the task went into the
    # local SQLite store while the operator believed it was on the shared server.
    dsn = "postgresql://omniq@127.0.0.1:1/jobs"
    done = omniq("enqueue", "math.pow", "2", "3", "--dsn", dsn)
    _assert_usage_error(done, "--dsn", "--backend postgres")
    assert done.stdout == ""
    assert _counts(omniq)["pending"] == 0


def test_a_dsn_for_a_postgres_event_store_is_accepted(omniq: Cli) -> None:
    # Events on PostgreSQL without an address of their own use --dsn: it is not ignored.
    # Nothing listens on port 1, so the command fails there, at connecting, exit 1.
    done = omniq(
        "status",
        "--dsn",
        "postgresql://omniq@127.0.0.1:1/jobs",
        OMNIQ_EVENT_STORAGE_TYPE="postgres",
    )
    assert done.returncode == 1
    assert "event storage" in done.stderr and "127.0.0.1:1" in done.stderr


@pytest.mark.parametrize(
    "args", [("enqueue", "math.pow", "2", "3"), ("workers", "--burst"), ("status",)]
)
def test_the_memory_backend_is_refused_where_it_would_be_lost(
    omniq: Cli, args: tuple[str, ...]
) -> None:
    # An enqueue into a memory store printed a task id that no worker could ever see.
    done = omniq(*args, OMNIQ_BACKEND="memory")
    _assert_usage_error(done, "backend memory")
    assert done.stdout == ""


def test_purge_with_no_status_is_refused(omniq: Cli) -> None:
    # `--status "$STATUSES"` with nothing in it purged nothing and said "purged 0 task(s)".
    done = omniq("purge", "--older-than", "1s", "--status", ",")
    _assert_usage_error(done, "--status", "completed, failed, cancelled, dead")
    assert done.stdout == ""


def test_an_unknown_event_type_names_the_option(omniq: Cli) -> None:
    done = omniq("events", "--type", "FAILED,NOPE")
    _assert_usage_error(done, "--type", "'NOPE'")


@pytest.mark.parametrize("func_path", ["mymod.", ".pow", "math..pow", "math:", "my mod.fn"])
def test_a_malformed_func_path_is_refused_before_anything_is_stored(
    omniq: Cli, func_path: str
) -> None:
    done = omniq("enqueue", func_path, "1")
    _assert_usage_error(done, "FUNC_PATH", repr(func_path))
    assert _counts(omniq)["pending"] == 0


def test_a_colon_func_path_is_accepted(omniq: Cli) -> None:
    done = omniq("enqueue", "math:factorial", "5")
    assert done.returncode == 0, done.stderr
    assert omniq("workers", "--procs", "1", "--burst").returncode == 0
    assert omniq("result", done.stdout.strip()).stdout.strip() == "120"


def test_tz_without_cron_says_it_needs_cron(omniq: Cli) -> None:
    # It used to reach the function as a keyword argument and fail as "pass keyword
    # arguments inline or as kwargs={...}, not both".
    done = omniq("enqueue", "math.pow", "2", "3", "--tz", "Europe/Berlin")
    _assert_usage_error(done, "--tz", "--cron")
    assert _counts(omniq)["pending"] == 0


def test_delay_with_cron_is_refused_not_dropped(omniq: Cli) -> None:
    done = omniq("enqueue", "math.pow", "2", "3", "--cron", "0 3 * * *", "--delay", "60")
    _assert_usage_error(done, "--delay", "--cron")
    assert omniq("periodic").stdout.strip() == "no schedules"


def test_retry_all_with_nothing_dead_says_so(omniq: Cli) -> None:
    done = omniq("retry", "--all")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no dead tasks"


@pytest.mark.postgres
def test_demo_on_postgres_names_the_database_not_a_folder(omniq: Cli, postgres_dsn: str) -> None:
    # It said "into postgres store omniq_data": the tasks are left in the database.
    schema = f"omniq_clidemo_{uuid.uuid4().hex[:10]}"
    try:
        done = omniq(
            "demo",
            "--procs",
            "2",
            "--backend",
            "postgres",
            "--dsn",
            postgres_dsn,
            OMNIQ_POSTGRES_SCHEMA=schema,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert f"into the postgres {redact(postgres_dsn)} schema {schema};" in done.stderr
    finally:
        asyncio.run(_drop_schema(postgres_dsn, schema))


async def _drop_schema(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()
