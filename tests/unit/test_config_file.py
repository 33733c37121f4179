"""Settings from a YAML or TOML file, the environment and code, in one documented order."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniq_mp import ConfigError, OmniQConfig, Settings
from omniq_mp import extras as extras_module


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_code_beats_environment_beats_file_beats_defaults(tmp_path: Path) -> None:
    config = write(
        tmp_path / "omniq.yaml",
        "procs: 3\nmax_retries: 7\nqueues: [high, low]\nresult_ttl: 60\nprefetch: 5\n",
    )
    env = {"OMNIQ_MAX_RETRIES": "5", "OMNIQ_PREFETCH": "6"}
    settings = Settings.from_env(env, config_file=config, prefetch=9)
    assert settings.procs == 3  # file over default
    assert settings.queues == ("high", "low")
    assert settings.result_ttl == 60
    assert settings.max_retries == 5  # environment over file
    assert settings.prefetch == 9  # code over environment
    assert Settings.from_env({}).procs == Settings().procs  # no file: defaults


def test_toml_with_an_omniq_section_and_the_omniq_config_variable(tmp_path: Path) -> None:
    config = write(
        tmp_path / "app.toml",
        '[omniq]\nbackend = "postgresql"\ndsn = "postgresql://app@db:5432/jobs"\n'
        'result_storage_type = "redis"\nresult_storage_url = "redis://cache:6379/1"\n'
        'max_memory_per_child = "1GB"\n',
    )
    settings = Settings.from_env({"OMNIQ_CONFIG": str(config)})
    assert settings.backend == "postgres"  # the alias is normalised
    assert settings.postgres_dsn == "postgresql://app@db:5432/jobs"
    assert settings.result_storage_type == "redis"
    assert settings.result_storage_url == "redis://cache:6379/1"
    assert settings.max_memory_per_child == 1_000_000_000
    assert settings.event_storage_type == "postgres"  # events live beside a shared queue


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "procz: 3\n", r"a\.yaml: unknown setting\(s\) procz"),
        ("b.yaml", "procs: 0\n", "procs must be an integer >= 1"),
        ("c.yaml", "procs: [1\n", r"c\.yaml: not valid YAML \(line 2\)"),
        ("d.toml", "procs = \n", r"d\.toml: not valid TOML"),
        ("e.yaml", "- procs\n", r"e\.yaml: expected a mapping of settings, got list"),
        ("f.yaml", "result_ttl: soon\n", r"f\.yaml: result_ttl='soon' is not a valid"),
        ("g.json", "{}", r"must end in \.yaml, \.yml or \.toml"),
        ("h.yaml", "result_storage_type: mongo\n", "result_storage_type must be one of"),
    ],
)
def test_a_bad_file_names_the_file_and_the_field(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({}, config_file=write(tmp_path / name, text))


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml"):
        Settings.from_env({}, config_file=tmp_path / "nope.yaml")


def test_a_yaml_file_without_pyyaml_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(extras_module.importlib, "import_module", missing)
    with pytest.raises(ConfigError, match=r"pip install 'omniq_mp\[yaml\]'"):
        Settings.from_env({}, config_file=write(tmp_path / "x.yaml", "procs: 2\n"))


def test_storage_names_from_the_storage_docs_are_accepted(tmp_path: Path) -> None:
    config = OmniQConfig(
        result_storage_type="sqlite",
        event_storage_type="file",
        result_storage_path=str(tmp_path / "my_app_results.db"),
        event_storage_base_dir=tmp_path / "app_events",
    )
    assert config.event_storage_path == tmp_path / "app_events"
    assert config.events_path == tmp_path / "app_events"
    with pytest.raises(ConfigError, match="event_storage_type must be one of"):
        OmniQConfig(event_storage_type="kafka")
