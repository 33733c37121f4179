"""TaskError's API, dict-style task access, and settings validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniq_mp import OmniQConfig, Settings
from omniq_mp.errors import ConfigError
from omniq_mp.models import (
    TaskError,
    TaskStatus,
    create_task,
    get_error_message,
    has_error,
    is_failed,
)


def test_task_error_from_exception_keeps_type_message_and_traceback() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as exc:
        error = TaskError.from_exception(exc, max_retries=2)
    assert error.error_type == "ZeroDivisionError"
    assert error.message == "division by zero"
    assert "1 / 0" in error.traceback
    assert error.can_retry()
    twice = error.increment_retry().increment_retry()
    assert twice.retry_count == 2 and not twice.can_retry()
    assert TaskError.from_dict(twice.to_dict()) == twice


def test_task_error_with_a_str_that_raises_is_still_recorded() -> None:
    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert "whose str() raised" in TaskError.from_exception(Nasty()).message


def test_task_helpers_and_dict_access() -> None:
    task = create_task("math.sqrt")
    assert not has_error(task) and not is_failed(task) and get_error_message(task) is None
    assert task.get("error") is None and task["status"] is TaskStatus.PENDING
    task.error = TaskError("ValueError", "bad")
    task.status = TaskStatus.FAILED
    assert has_error(task) and is_failed(task) and get_error_message(task) == "ValueError: bad"
    with pytest.raises(KeyError):
        task["nope"]


def test_settings_from_env_and_explicit_override() -> None:
    env = {"OMNIQ_PROCS": "3", "OMNIQ_QUEUES": "high, default", "OMNIQ_BASE_DIR": "/tmp/x"}
    settings = Settings.from_env(env, procs=5)
    assert settings.procs == 5 and settings.queues == ("high", "default")
    assert settings.base_dir == Path("/tmp/x") and settings.sqlite_path == Path("/tmp/x/omniq.db")
    assert OmniQConfig is Settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"procs": 0}, "procs"),
        ({"backend": "mongo"}, "backend"),
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"default_timeout": -3}, "default_timeout"),
        ({"queues": ""}, "queues"),
        ({"start_method": "fork"}, "start_method"),
    ],
)
def test_bad_settings_fail_with_the_field_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="OMNIQ_PROCS"):
        Settings.from_env({"OMNIQ_PROCS": "many"})
