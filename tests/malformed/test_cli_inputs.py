"""Bad input to ``omniq-mp``, typed as a user would, run as a real subprocess.

The contract (cli.py, README "Command line"): a usage error exits 2 with click's usage
lines and exactly one ``Error: ...`` line, and creates nothing; a runtime error (an
unusable store, an unknown id, a failed task) exits 1 with exactly one ``error: ...``
line. Never a traceback, and never a wait: each returns within a few seconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import OmniQ, Settings, TaskStatus
from tests.malformed.objects import Run, runtime_error, usage_error

pytestmark = pytest.mark.e2e

PROMPT = 10.0  # seconds any refused command must answer within (generous for a busy CI)


@pytest.fixture
def omniq(tmp_path: Path) -> Run:
    return Run(tmp_path / "store")


USAGE_ERRORS = [
    pytest.param(("workers", "--bogus"), "No such option", id="unknown-flag"),
    pytest.param(("workers", "--procs"), "requires an argument", id="missing-value"),
    pytest.param(("workers", "--procs", "0"), "--procs", id="procs-0"),
    pytest.param(("workers", "--procs", "-1"), "--procs", id="procs-negative"),
    pytest.param(("workers", "--procs", "abc"), "--procs", id="procs-abc"),
    pytest.param(("workers", "--start-method", "fork"), "--start-method", id="start-method"),
    pytest.param(("workers", "--shutdown-grace", "nan"), "shutdown_grace", id="grace-nan"),
    pytest.param(("workers", "--max-memory-per-child", "lots"), "max_memory", id="memory-lots"),
    pytest.param(("enqueue", "math.pow", "--timeout", "abc"), "--timeout", id="timeout-abc"),
    pytest.param(("enqueue", "math.pow", "--timeout", "-1"), "--timeout", id="timeout-negative"),
    pytest.param(("enqueue", "math.pow", "--timeout", "nan"), "timeout", id="timeout-nan"),
    pytest.param(("enqueue", "math.pow", "--timeout", "inf"), "timeout", id="timeout-inf"),
    pytest.param(("enqueue", "math.pow", "--kwargs", "{x: 1"), "--kwargs", id="kwargs-not-json"),
    pytest.param(("enqueue", "math.pow", "--kwargs", "[1, 2]"), "--kwargs", id="kwargs-list"),
    pytest.param(("enqueue", "pow"), "dotted path", id="not-a-dotted-path"),
    pytest.param(("enqueue", "math.fabs", "-12"), "put -- before", id="negative-number"),
    pytest.param(("enqueue", "math.fabs", "-x"), "No such option", id="unknown-short-flag"),
    pytest.param(("enqueue",), "FUNC_PATH", id="missing-argument"),
    pytest.param(("enqueue", "math.pow", "--max-memory", "lots"), "max_memory", id="max-memory"),
    pytest.param(("enqueue", "math.pow", "--cron", "every day"), "cron", id="cron"),
    pytest.param(("enqueue", "m.f", "--cron", "* * * * *", "--tz", "Mars/Base"), "Mars", id="tz"),
    pytest.param(("enqueue", "math.pow", "--key", ""), "key", id="empty-key"),
    pytest.param(("purge", "--older-than", "soon"), "--older-than", id="purge-duration"),
    pytest.param(("purge", "--older-than", "1d", "--status", "running"), "--status", id="status"),
    pytest.param(("events", "--type", "BOGUS"), "BOGUS", id="event-type"),
    pytest.param(("retry",), "--all", id="retry-nothing"),
    pytest.param(("result",), "TASK_ID", id="result-missing-id"),
    pytest.param(("no-such-command",), "No such command", id="unknown-command"),
    pytest.param(("--log-level", "LOUD", "status"), "log level", id="log-level"),
]


@pytest.mark.parametrize(("args", "named"), USAGE_ERRORS)
def test_usage_errors_exit_2_with_one_line_and_create_nothing(
    omniq: Run, args: tuple[str, ...], named: str
) -> None:
    line = usage_error(omniq(*args))
    assert named in line
    assert omniq.took < PROMPT
    assert not omniq.base.exists()


ENV_ERRORS = [
    pytest.param({"OMNIQ_PROCS": "abc"}, "OMNIQ_PROCS", id="procs-abc"),
    pytest.param({"OMNIQ_PROCS": "0"}, "procs", id="procs-0"),
    pytest.param({"OMNIQ_LEASE_TTL": "nan"}, "lease_ttl", id="lease-nan"),
    pytest.param({"OMNIQ_LEASE_TTL": "-5"}, "lease_ttl", id="lease-negative"),
    pytest.param({"OMNIQ_BACKEND": "mongo"}, "backend", id="backend"),
    pytest.param({"OMNIQ_QUEUES": " , ,"}, "queues", id="queues-empty"),
    pytest.param({"OMNIQ_MAX_RETRIES": "1e3"}, "OMNIQ_MAX_RETRIES", id="retries-float"),
    pytest.param({"OMNIQ_SQLITE_SYNCHRONOUS": "OFF"}, "sqlite_synchronous", id="synchronous"),
    pytest.param({"OMNIQ_EVENT_STORAGE_TYPE": "kafka"}, "event_storage_type", id="events"),
    pytest.param({"OMNIQ_LOG_LEVEL": "LOUD"}, "log level", id="log-level"),
    pytest.param({"OMNIQ_CONFIG": "/nonexistent/omniq.yaml"}, "omniq.yaml", id="config-missing"),
]


@pytest.mark.parametrize(("env", "named"), ENV_ERRORS)
def test_bad_environment_values_are_usage_errors(
    omniq: Run, env: dict[str, str], named: str
) -> None:
    for command in (("status",), ("workers", "--burst")):
        line = usage_error(omniq(*command, env=env))
        assert named in line
        assert omniq.took < PROMPT
    assert not omniq.base.exists()


CONFIG_ERRORS = [
    pytest.param("omniq.toml", b"procs = [", "not valid TOML", id="toml-syntax"),
    pytest.param("omniq.toml", b"procs = 0\n", "procs", id="toml-bad-value"),
    pytest.param("omniq.toml", b'procs = "many"\n', "procs", id="toml-bad-string"),
    pytest.param("omniq.toml", b"nosuch = 1\n", "nosuch", id="toml-unknown-key"),
    pytest.param("omniq.yaml", b"- procs\n- 4\n", "mapping", id="yaml-not-a-mapping"),
    pytest.param("omniq.ini", b"procs = 4\n", ".yaml, .yml or .toml", id="wrong-suffix"),
    pytest.param(
        "omniq.yaml",
        b"procs: [1\n",
        "not valid YAML",
        id="yaml-syntax",
    ),
    pytest.param(
        "omniq.toml",
        b"procs = 2\n\xff\xfe\n",
        "omniq.toml",
        id="not-utf8",
    ),
    pytest.param(
        "omniq.toml",
        b"queues = 5\n",
        "queues",
        id="queues-not-a-list",
    ),
    pytest.param(
        "omniq.toml",
        b"sqlite_synchronous = 1\n",
        "sqlite_synchronous",
        id="synchronous-not-text",
    ),
    pytest.param(
        "omniq.toml",
        b"base_dir = 5\n",
        "base_dir",
        id="base-dir-not-text",
    ),
]


@pytest.mark.parametrize(("name", "content", "named"), CONFIG_ERRORS)
def test_malformed_config_files_are_usage_errors_naming_the_problem(
    tmp_path: Path, name: str, content: bytes, named: str
) -> None:
    config = tmp_path / name
    config.write_bytes(content)
    run = Run(tmp_path / "omniq_data", set_base_dir=False)  # the default, ./omniq_data
    assert named in usage_error(run("--config", str(config), "status", cwd=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing created


# -- runtime errors ---------------------------------------------------------------------------


def test_base_dir_that_is_a_file_is_one_line_and_left_alone(omniq: Run) -> None:
    omniq.base.write_text("precious")
    for command in (("workers", "--burst"), ("status",), ("enqueue", "math.pow", "2", "3")):
        assert "not a directory" in runtime_error(omniq(*command))
        assert omniq.took < PROMPT
    assert omniq.base.read_text() == "precious"


def test_base_dir_that_is_a_fifo_is_refused_without_blocking(omniq: Run) -> None:
    os.mkfifo(omniq.base)
    for command in (("workers", "--burst"), ("status",), ("enqueue", "math.pow", "2", "3")):
        assert "not a directory" in runtime_error(omniq(*command, timeout=PROMPT))
    assert omniq.base.is_fifo()


def test_database_path_that_is_a_fifo_is_refused_without_opening_it(omniq: Run) -> None:
    omniq.base.mkdir()
    os.mkfifo(omniq.base / "omniq.db")
    for command in (("workers", "--burst"), ("status",)):
        line = runtime_error(omniq(*command, timeout=PROMPT))  # opening a FIFO would block
        assert "omniq.db" in line
    assert (omniq.base / "omniq.db").is_fifo()


def test_base_dir_below_a_file_is_one_line(omniq: Run, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    line = runtime_error(omniq("status", "--base-dir", str(tmp_path / "plain" / "store")))
    assert "not a directory" in line.lower()


def test_unknown_ids_are_one_line_exit_1(omniq: Run) -> None:
    for command in (("result", "no-such-id"), ("cancel", "no-such-id")):
        assert "no-such-id" in runtime_error(omniq(*command))


def test_a_non_utf8_base_dir_works_end_to_end(tmp_path: Path) -> None:
    base = os.fsencode(tmp_path) + b"/st\xff\xfeore"
    run = Run(tmp_path / "unused")  # --base-dir wins over its OMNIQ_BASE_DIR
    enqueued = run("enqueue", "math.pow", "2", "5", "--base-dir", base)
    assert enqueued.returncode == 0, enqueued.stderr
    drained = run("workers", "--burst", "--procs", "1", "--base-dir", base)
    assert drained.returncode == 0, drained.stderr
    got = run("result", enqueued.stdout.strip(), "--base-dir", base)
    assert (got.returncode, got.stdout.strip()) == (0, "32.0")
    assert os.path.isfile(base + b"/omniq.db")  # exactly that folder, no mangled name
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"st\xff\xfeore"]


# -- task import failures ---------------------------------------------------------------------


def stored_task(base: Path, task_id: str) -> Any:
    q = OmniQ(Settings(base_dir=base))
    try:
        return q.get_task(task_id)
    finally:
        q.close()


def test_a_dotted_path_that_does_not_import_fails_once_as_import(omniq: Run) -> None:
    enqueued = omniq("enqueue", "no_such_module_for_omniq.fn", "--max-retries", "3")
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = enqueued.stdout.strip()
    good = omniq("enqueue", "math.factorial", "5").stdout.strip()
    assert omniq("workers", "--burst", "--procs", "1").returncode == 0
    failed = omniq("result", task_id)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr.splitlines()[-1]
    assert "no_such_module_for_omniq" in failed.stderr.splitlines()[-1]
    task = stored_task(omniq.base, task_id)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert task.error.kind == "import"
    assert omniq("result", good).stdout.strip() == "120"


def explosive_module(tmp_path: Path) -> dict[str, str]:
    """A module on the workers' path that raises when imported; the env to find it."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "explodes_on_import.py").write_text(
        'raise RuntimeError("module exploded on import")\n\ndef fn():\n    return 1\n'
    )
    return {"PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}


def test_a_module_that_raises_on_import_fails_its_task_once(omniq: Run, tmp_path: Path) -> None:
    env = explosive_module(tmp_path)
    task_id = omniq("enqueue", "explodes_on_import.fn", "--max-retries", "3").stdout.strip()
    good = omniq("enqueue", "math.factorial", "4").stdout.strip()
    assert omniq("workers", "--burst", "--procs", "1", env=env).returncode == 0
    task = stored_task(omniq.base, task_id)
    assert task.status is TaskStatus.FAILED and task.attempts == 1  # not retried
    assert "module exploded on import" in task.error.message
    assert "explodes_on_import.py" in task.error.traceback
    assert omniq("result", good).stdout.strip() == "24"


def test_a_module_that_raises_on_import_is_reported_as_an_import_failure(
    omniq: Run, tmp_path: Path
) -> None:
    env = explosive_module(tmp_path)
    task_id = omniq("enqueue", "explodes_on_import.fn").stdout.strip()
    assert omniq("workers", "--burst", "--procs", "1", env=env).returncode == 0
    task = stored_task(omniq.base, task_id)
    assert task.error.kind == "import"
    assert "payload cannot be pickled" not in task.error.message


def test_result_of_a_failed_task_is_one_line(omniq: Run) -> None:
    task_id = omniq("enqueue", "math.sqrt", "--max-retries", "0", "--", "-1").stdout.strip()
    assert omniq("workers", "--burst", "--procs", "1").returncode == 0
    assert "math domain error" in runtime_error(omniq("result", task_id))
    # README: `result --traceback` also prints the worker's traceback, before that line.
    detailed = omniq("result", task_id, "--traceback")
    assert detailed.returncode == 1, detailed.stderr
    lines = detailed.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):", detailed.stderr
    assert lines[-1].startswith("error: ") and "math domain error" in lines[-1]


# -- values click accepts that the command then chokes on ----------------------------------------

CRASHING_VALUES = [
    pytest.param(
        ("enqueue", "math.pow", "--delay", "nan"),
        id="delay-nan",
    ),
    pytest.param(
        ("enqueue", "math.pow", "--delay", "inf"),
        id="delay-inf",
    ),
    pytest.param(
        ("enqueue", "math.pow", "--delay", "1e15"),
        id="delay-huge",
    ),
    pytest.param(
        ("enqueue", "math.pow", "--priority", "100000000000000000000"),
        id="priority-huge",
    ),
    pytest.param(
        ("enqueue", "math.pow", "--max-retries", "100000000000000000000"),
        id="max-retries-huge",
    ),
    pytest.param(
        ("dead", "--limit", "3" * 25),
        id="dead-limit-huge",
    ),
    pytest.param(
        ("events", "--after", "9223372036854775808"),
        id="events-after-huge",
    ),
]


@pytest.mark.parametrize("args", CRASHING_VALUES)
def test_out_of_range_numbers_are_usage_errors(omniq: Run, args: tuple[str, ...]) -> None:
    usage_error(omniq(*args))
    assert omniq.took < PROMPT


NON_UTF8 = b"\xff\xfe"  # what a shell passes for a name typed in another encoding


@pytest.mark.parametrize(
    "args",
    [
        ("result", NON_UTF8),
        ("cancel", NON_UTF8),
        ("retry", NON_UTF8),
        ("pause", NON_UTF8),
        ("events", "--task", NON_UTF8),
        ("enqueue", "math.pow", "--queue", NON_UTF8),
        ("enqueue", "math.pow", "--key", NON_UTF8),
    ],
    ids=["result", "cancel", "retry", "pause", "events-task", "enqueue-queue", "enqueue-key"],
)
def test_non_utf8_arguments_are_answered_without_a_traceback(
    omniq: Run, args: tuple[str | bytes, ...]
) -> None:
    done = omniq(*args, timeout=PROMPT)
    assert "Traceback" not in done.stderr
    assert done.returncode in (0, 1, 2)


def test_result_wait_nan_is_a_usage_error(omniq: Run) -> None:
    task_id = omniq("enqueue", "math.pow", "2", "3").stdout.strip()
    usage_error(omniq("result", task_id, "--wait", "nan", timeout=PROMPT))


def test_help_exits_0_everywhere(omniq: Run) -> None:
    for command in ((), ("workers",), ("enqueue",), ("result",), ("events",), ("purge",)):
        done = omniq(*command, "--help")
        assert done.returncode == 0 and "Usage:" in done.stdout, (command, done.stderr)
    assert not omniq.base.exists()
