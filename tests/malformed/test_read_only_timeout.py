"""The ``read_only_timeout`` setting (row 19): validated where it enters, from code, the
environment and a config file, like every other duration; and the clock it drives."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniq_mp import Settings
from omniq_mp.errors import ConfigError
from omniq_mp.worker import ReadOnlyWatch


def test_the_default_and_each_source_set_it() -> None:
    assert Settings().read_only_timeout == 60.0
    assert Settings.from_env({"OMNIQ_READ_ONLY_TIMEOUT": "2.5"}).read_only_timeout == 2.5


def test_a_config_file_sets_it(tmp_path: Path) -> None:
    config = tmp_path / "omniq.toml"
    config.write_text("read_only_timeout = 5\n")
    assert Settings.from_env({}, config_file=config).read_only_timeout == 5


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "soon", True])
def test_bad_values_are_refused_by_name(bad: object) -> None:
    with pytest.raises(ConfigError, match="read_only_timeout"):
        Settings(read_only_timeout=bad)  # type: ignore[arg-type]


def test_a_bad_environment_value_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="READ_ONLY_TIMEOUT"):
        Settings.from_env({"OMNIQ_READ_ONLY_TIMEOUT": "abc"})


def test_the_watch_times_one_unbroken_read_only_spell() -> None:
    watch = ReadOnlyWatch(timeout=3.0)
    assert watch.failed(10.0) is None
    assert watch.failed(12.9) is None
    watch.cleared()  # a write went through: a new spell starts at the next failure
    assert watch.failed(14.0) is None
    assert watch.failed(16.5) is None
    assert watch.failed(17.0) == 3.0
