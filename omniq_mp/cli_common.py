"""Pieces every ``omniq-mp`` command shares: store options, settings, error handling."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from omniq_mp.config import BACKENDS, Settings
from omniq_mp.errors import ConfigError, OmniqError

__all__ = ["describe_store", "fail", "handles_errors", "settings_from", "store_options"]

F = TypeVar("F", bound=Callable[..., Any])


def store_options(fn: F) -> F:
    """``--backend``, ``--base-dir`` and ``--dsn``, shared by every command."""
    fn = click.option(
        "--dsn",
        default=None,
        help="PostgreSQL queue address, postgresql://user:pass@host:5432/db [env OMNIQ_DSN].",
    )(fn)
    fn = click.option(
        "--base-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Store folder [env OMNIQ_BASE_DIR; default ./omniq_data].",
    )(fn)
    return click.option(
        "--backend",
        type=click.Choice([*(b for b in BACKENDS if b != "memory"), "postgresql"]),
        default=None,
        help="Queue backend [env OMNIQ_BACKEND; default sqlite].",
    )(fn)


def settings_from(**explicit: Any) -> Settings:
    """Settings from the command's options, over the environment, over the config file
    (``omniq-mp --config``); bad values are usage errors (exit 2)."""
    context = click.get_current_context(silent=True)
    root = context.find_root() if context is not None else None
    config_file = (root.obj or {}).get("config") if root is not None else None
    try:
        return Settings.from_env(config_file=config_file, **explicit)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def describe_store(settings: Settings) -> str:
    """Where the queue is, for humans (a DSN's password is never shown)."""
    if settings.backend == "postgres":
        from omniq_mp.dsn import redact

        return f"postgres {redact(settings.postgres_dsn)} schema {settings.postgres_schema}"
    return f"{settings.backend} at {settings.base_dir}"


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def handles_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OmniqError as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]
