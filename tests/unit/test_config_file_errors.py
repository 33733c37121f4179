"""Any bad value a config file gives is reported naming the file and the field, not only
text that fails to parse: numbers, choices and lists too. Values the environment or code
gave are not blamed on the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniq_mp import ConfigError, Settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad2.yaml", "procs: 0\n", "procs must be an integer >= 1, got 0"),
        ("bad.yaml", "max_retries: -1\n", "max_retries must be an integer >= 0, got -1"),
        ("bad.toml", "prefetch = -3\n", "prefetch must be an integer >= 0, got -3"),
        ("bad.yaml", "max_crashes: 0\n", "max_crashes must be an integer >= 1, got 0"),
        ("bad.yaml", "max_tasks_per_child: 0\n", "max_tasks_per_child must be an integer"),
        ("bad.yaml", "procs: true\n", "procs must be an integer >= 1, got True"),
        ("bad.yaml", "lease_ttl: 0\n", "lease_ttl must be a finite number of seconds > 0"),
        ("bad.toml", "result_ttl = -5.0\n", "result_ttl must be a finite number of seconds"),
        ("bad.yaml", "poll_interval: .nan\n", "poll_interval must be a finite number"),
        ("bad.yaml", "result_storage_type: mongo\n", "result_storage_type must be one of"),
        ("bad.yaml", "queues: []\n", "queues must be non-empty names"),
        ("bad.yaml", "base_dir: 5\n", "base_dir must be a path, not int"),
        ("bad.yaml", "max_payload_size: -1\n", "max_payload_size"),
    ],
)
def test_a_bad_value_from_the_file_names_the_file_and_the_field(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    config = write(tmp_path / name, text)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({}, config_file=config)
    assert str(refused.value).startswith(f"{config}: ")
    assert message in str(refused.value)


def test_the_file_is_named_as_given_also_through_omniq_config(tmp_path: Path) -> None:
    config = write(tmp_path / "bad2.yaml", "procs: 0\n")
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"OMNIQ_CONFIG": str(config)})
    assert str(refused.value) == f"{config}: procs must be an integer >= 1, got 0"


def test_a_bad_file_value_that_the_environment_overrides_is_not_an_error(
    tmp_path: Path,
) -> None:
    config = write(tmp_path / "bad2.yaml", "procs: 0\n")
    assert Settings.from_env({"OMNIQ_PROCS": "2"}, config_file=config).procs == 2
    assert Settings.from_env({}, config_file=config, procs=3).procs == 3


@pytest.mark.parametrize(
    ("env", "explicit"),
    [({"OMNIQ_PROCS": "0"}, {}), ({}, {"procs": 0})],
)
def test_a_bad_value_from_elsewhere_is_not_blamed_on_the_file(
    tmp_path: Path, env: dict[str, str], explicit: dict[str, int]
) -> None:
    config = write(tmp_path / "good.yaml", "procs: 0\nmax_retries: 2\n")
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env, config_file=config, **explicit)
    assert str(refused.value) == "procs must be an integer >= 1, got 0"


def test_file_values_checked_together_with_the_environment(tmp_path: Path) -> None:
    # Old keys in the file need the active key, which may come from the environment: the
    # file is checked with the values that win over it, not on its own.
    config = write(tmp_path / "keys.yaml", "signing_keys_old: 'k0:" + "x" * 32 + "'\n")
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({}, config_file=config)
    assert str(refused.value).startswith(f"{config}: signing_keys_old needs signing_key")
    key = "y" * 32
    settings = Settings.from_env({"OMNIQ_SIGNING_KEY": key}, config_file=config)
    assert settings.signing_key == key
