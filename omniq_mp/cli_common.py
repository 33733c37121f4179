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

__all__ = ["fail", "handles_errors", "settings_from", "store_options"]

F = TypeVar("F", bound=Callable[..., Any])


def store_options(fn: F) -> F:
    """``--backend`` and ``--base-dir``, shared by every command."""
    fn = click.option(
        "--base-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Store folder [env OMNIQ_BASE_DIR; default ./omniq_data].",
    )(fn)
    return click.option(
        "--backend",
        type=click.Choice([b for b in BACKENDS if b != "memory"]),
        default=None,
        help="Storage backend [env OMNIQ_BACKEND; default sqlite].",
    )(fn)


def settings_from(**explicit: Any) -> Settings:
    """Settings from the environment and the command's options; bad values are usage
    errors (exit 2)."""
    try:
        return Settings.from_env(**explicit)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


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
