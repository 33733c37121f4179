"""Pieces every ``omniq-mp`` command shares: store options, settings, error handling."""

from __future__ import annotations

import functools
import math
import os
import select
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from omniq_mp.config import BACKENDS, Settings, describe_store
from omniq_mp.dsn import DSN_FORM, dsn_problem
from omniq_mp.errors import ConfigError, OmniqError
from omniq_mp.task_builder import INT64_MAX, INT64_MIN  # IntRange bounds of options bound into SQL

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "Dsn",
    "NonEmptyPath",
    "NonEmptyText",
    "Seconds",
    "TaskArgsCommand",
    "describe_store",
    "fail",
    "handles_errors",
    "settings_from",
    "store_options",
    "store_settings",
]

F = TypeVar("F", bound=Callable[..., Any])

# Parameters whose text is never bound into a store: task arguments are pickled, so a
# non-UTF-8 file name passed to a task (say) reaches the task as given.
_OPAQUE_TEXT = frozenset({"args", "kwargs_json"})


class Seconds(click.FloatRange):
    """Seconds, at least 0 and at most ``limit``. Unlike FloatRange, nan is refused (it
    passes every range comparison, then breaks timedelta or the event loop), and the help
    shows no unreadable upper bound."""

    name = "seconds"

    def __init__(self, limit: float = math.inf) -> None:
        super().__init__(min=0)
        self.limit = limit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail("nan is not a number of seconds", param, ctx)
        if seconds > self.limit:
            self.fail(f"{seconds:g} is above the limit of {self.limit:g} seconds", param, ctx)
        return seconds


class TaskArgsCommand(click.Command):
    """A command ending in a task's arguments. Click reads ``-3`` there as an unknown
    option; this says to put ``--`` before it instead of only "No such option"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # the parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            # Click names only the first character of an unknown short option ("-1" of
            # "-12"): the number is the token it came from.
            numbers = [a for a in _before_dashes(given) if _is_number(a)]
            number = next((a for a in numbers if a.startswith(exc.option_name)), None)
            if number is None:
                raise
            raise click.UsageError(
                f"{number} reads as an option; to pass a negative number, put -- before "
                f"the task's arguments: {ctx.command_path} FUNC_PATH -- {number}",
                ctx,
            ) from None


def _before_dashes(args: list[str]) -> list[str]:
    return args[: args.index("--")] if "--" in args else args


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class NonEmptyPath(click.Path):
    """A path that is not the empty string. ``--base-dir "$DIR"`` with DIR unset would
    otherwise put a store in the current folder (``Path("")`` is ``.``); an empty
    OMNIQ_* variable means "unset", but an empty option is a mistake."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("must not be empty", param, ctx)
        return super().convert(value, param, ctx)


class NonEmptyText(click.types.StringParamType):
    """Text that is not empty: ``--dsn ""`` would quietly mean the default server."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = super().convert(value, param, ctx)
        if text == "":
            self.fail("must not be empty", param, ctx)
        return text


class Dsn(NonEmptyText):
    """A PostgreSQL address that reads as one: a malformed DSN is a usage error naming
    the option, not a connection error (or a traceback) from the driver later."""

    name = "dsn"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = super().convert(value, param, ctx)
        problem = dsn_problem(text)
        if problem is not None:
            self.fail(f"{problem} (expected {DSN_FORM})", param, ctx)
        return text


def store_options(fn: F) -> F:
    """``--backend``, ``--base-dir``, ``--dsn`` and ``--schema``, shared by every command."""
    fn = click.option(
        "--schema",
        "postgres_schema",
        type=NonEmptyText(),
        default=None,
        help="PostgreSQL schema of the queue's tables [env OMNIQ_POSTGRES_SCHEMA; default omniq].",
    )(fn)
    fn = click.option(
        "--dsn",
        type=Dsn(),
        default=None,
        help="PostgreSQL queue address, postgresql://user:pass@host:5432/db [env OMNIQ_DSN].",
    )(fn)
    fn = click.option(
        "--base-dir",
        type=NonEmptyPath(path_type=Path),
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


def store_settings(*, in_process: bool = False, **options: Any) -> Settings:
    """:func:`settings_from` for a command that works on the queue store (``options``
    holds ``--backend``, ``--base-dir``, ``--dsn`` and ``--schema``), refusing a store it
    cannot mean.

    :param in_process: the command runs its own workers in this process (``demo``), so a
        ``memory`` store works; for every other command it would be an empty queue that
        vanishes on exit (an enqueue printing the id of a task nobody can ever run).
    """
    settings = settings_from(**options)
    if settings.backend == "memory" and not in_process:
        raise click.UsageError(
            "backend memory keeps tasks inside one process, so this command would see an "
            "empty queue that vanishes on exit: use sqlite, file or postgres"
        )
    for option, name in (("dsn", "--dsn"), ("postgres_schema", "--schema")):
        if options.get(option) is not None and not _uses_dsn(settings):
            # Otherwise it is ignored and the work goes to the local store instead.
            raise click.UsageError(
                f"{name} is for a PostgreSQL queue, but the backend is "
                f"{settings.backend}: add --backend postgres (or set OMNIQ_BACKEND=postgres)"
            )
    return settings


def _uses_dsn(settings: Settings) -> bool:
    """Whether any store of ``settings`` connects to ``settings.dsn``: the queue, or an
    event or result store on PostgreSQL without an address of its own."""
    return (
        settings.backend == "postgres"
        or (settings.event_storage_type == "postgres" and not settings.event_storage_dsn)
        or (settings.result_storage_type == "postgres" and not settings.result_storage_dsn)
    )


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def handles_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _refuse_undecodable_text(kwargs)
        try:
            return fn(*args, **kwargs)
        except OmniqError as exc:
            fail(str(exc))
        except BrokenPipeError as exc:
            if not _stdout_closed():
                fail(exc.strerror or str(exc))
            _quit_quietly()
        except OSError as exc:
            # A store's file refused us where no StorageError wraps it yet (a read-only
            # or full file system, permissions): still one line, never a traceback.
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}")

    return wrapper  # type: ignore[return-value]


def _stdout_closed() -> bool:
    """Whether whoever reads our stdout has gone (``omniq-mp events | head``): the pipe
    then polls as an error, so a broken pipe elsewhere is still reported."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
    return any(flags & select.POLLERR for _, flags in poller.poll(0))


def _quit_quietly() -> NoReturn:
    """Exit 1 without a word: the reader stopped reading, as ``head`` does; an "error:
    Broken pipe" line would blame the queue for it. Stdout goes to /dev/null first, or the
    interpreter's last flush of the unwritten lines prints an exception at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(1)


def _refuse_undecodable_text(values: dict[str, Any]) -> None:
    """A usage error for argv text that was not UTF-8 (Python hands such bytes over as lone
    surrogates), before a store is asked to bind it: SQL drivers refuse it with a
    UnicodeEncodeError. Paths (``--base-dir``, ``--config``) arrive as Path objects and
    keep their bytes."""
    for name, value in values.items():
        texts = value if isinstance(value, tuple) else (value,)
        for text in texts:
            if isinstance(text, str) and name not in _OPAQUE_TEXT and not _is_utf8(text):
                ctx = click.get_current_context(silent=True)
                params = ctx.command.params if ctx is not None else []
                param = next((p for p in params if p.name == name), None)
                raise click.BadParameter(f"{text!r} is not valid UTF-8 text", ctx, param)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
