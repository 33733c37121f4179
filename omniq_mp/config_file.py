"""Settings from a YAML or TOML file (``omniq-mp --config omniq.yaml``, ``OMNIQ_CONFIG``).

The file holds the same names as :class:`~omniq_mp.config.Settings`, at the top level or
under an ``omniq`` section (so it can live in a larger application config)::

    # omniq.yaml
    backend: postgres
    dsn: postgresql://omniq@db.internal:5432/jobs
    procs: 8
    queues: [high, default]
    result_storage_type: redis
    result_storage_url: redis://cache.internal:6379/0
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omniq_mp.errors import ConfigError
from omniq_mp.extras import require

__all__ = ["read_config_file"]


def read_config_file(path: str | Path, known: set[str]) -> dict[str, Any]:
    """The settings in ``path``, keyed by field name.

    :param known: the field names Settings accepts; anything else is refused by name.
    :raises ConfigError: unreadable file, bad syntax, not a mapping, or an unknown key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})"
        ) from None
    data = _parse(path, text)
    if isinstance(data, Mapping) and isinstance(data.get("omniq"), Mapping):
        data = data["omniq"]
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return {str(k): v for k, v in data.items()}


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if suffix in (".yaml", ".yml"):
        yaml = require("yaml", "yaml", "a YAML config file")
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            # str(exc) spans several lines (marks, a caret line); a usage error is one.
            parts = (getattr(exc, "context", None), getattr(exc, "problem", None))
            what = ", ".join(str(p) for p in parts if p) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{line}: {what}") from None
    raise ConfigError(f"{path}: config files must end in .yaml, .yml or .toml")
