"""One configuration object, :class:`Settings` (also importable as ``OmniQConfig``).

Where a value comes from, strongest first: arguments in code (or command-line options),
then ``OMNIQ_<FIELD>`` environment variables, then a YAML or TOML config file
(``config_file=``, ``omniq-mp --config``, or ``OMNIQ_CONFIG``), then the defaults. Values
are checked here, where they enter, so a bad one fails at start with a message naming it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from omniq_mp.dotted_path import is_dotted_path
from omniq_mp.dsn import DSN_FORM, dsn_problem, redact
from omniq_mp.errors import ConfigError
from omniq_mp.pg import schema_problem
from omniq_mp.signing import Signer, settings_problem
from omniq_mp.units import parse_bytes

if TYPE_CHECKING:
    from omniq_mp.queue import AsyncTaskQueue
    from omniq_mp.storage.base import Storage

__all__ = [
    "BACKENDS",
    "RESULT_BACKENDS",
    "START_METHODS",
    "OmniQConfig",
    "Settings",
    "describe_store",
]

BACKENDS = ("sqlite", "file", "memory", "postgres")
EVENT_BACKENDS = ("sqlite", "file", "memory", "postgres", "redis", "nats", "none")
RESULT_BACKENDS = ("sqlite", "file", "memory", "postgres", "redis", "nats")
_ALIASES = {"postgresql": "postgres"}
START_METHODS = ("forkserver", "spawn")


def _default_start_method() -> str:
    # forkserver respawns a killed worker in milliseconds; spawn is the portable fallback.
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


@dataclass(frozen=True)
class Settings:
    """Where tasks are stored and how workers run them.

    :param backend: ``"sqlite"`` (default), ``"file"``, ``"memory"`` (one process only) or
        ``"postgres"`` (alias ``"postgresql"``: several hosts share one queue).
    :param dsn: the PostgreSQL queue's DSN (default: the local server, database postgres).
    :param postgres_schema: the schema the PostgreSQL queue's tables live in.
    :param base_dir: folder of the store; SQLite keeps ``omniq.db`` in it.
    :param procs: worker processes of an embedded or CLI supervisor.
    :param queues: queue names a supervisor serves.
    :param max_retries: default retries after the first execution (3 means 4 runs).
    :param default_timeout: default per-task timeout in seconds; None means no limit.
    :param lease_ttl: seconds a claim stays valid without renewal; a dead supervisor's
        tasks return to the queue this long after its last renewal.
    :param poll_interval: seconds between store polls when idle; the poll slows to 8x
        this while it finds nothing. Enqueues on this host (and PostgreSQL's NOTIFY)
        wake supervisors at once, so it bounds only how late an ETA or a retry starts.
    :param kill_grace: seconds between SIGTERM and SIGKILL of an overrunning task.
    :param shutdown_grace: seconds running tasks get to finish on a graceful stop.
    :param read_only_timeout: seconds a supervisor whose store has turned read-only keeps
        retrying (holding finished outcomes, claiming nothing) before it stops its running
        tasks and exits non-zero; the tasks it held run again under the next supervisor.
        A full disk has no such limit: the supervisor waits for space.
    :param max_tasks_per_child: recycle a worker process after this many tasks.
    :param max_payload_size: largest pickled call ``enqueue`` accepts (``"256MB"``);
        a larger one raises SerializationError and stores nothing. None: no limit (but
        SQLite refuses values over 1e9 bytes).
    :param max_result_size: largest pickled result a worker sends back; a larger one
        fails the attempt as ``ResultTooLarge`` (not retried) without being sent, so a
        runaway result never reaches the supervisor's memory. None: no limit.
    :param worker_init: dotted path (``"package.module.function"``) of a function each
        worker process calls once before its first task: load a model, open a
        connection. A worker whose call raises, or outlasts ``worker_init_timeout``, does
        not start: at start-up the supervisor fails with that error; later, the worker is
        started again with backoff (1 s doubling to 30 s) and, after
        ``max_start_failures`` failed starts in a row, the supervisor stops and exits 1.
    :param worker_init_timeout: seconds a new worker may take to start, ``worker_init``
        included.
    :param max_start_failures: failed worker starts in a row before the supervisor gives
        up.
    :param prefetch: most tasks claimed beyond one per worker (and beyond the tasks sent
        ahead), to hide claim latency: enough for twice a claim's time and at least 20 ms
        of work; one per worker when tasks take long compared with that. Together with
        the tasks sent ahead they hold at most 64 MiB of arguments (at the mean size
        claimed so far), so a backlog of large arguments does not fill the supervisor's
        memory; and beyond the tasks idle workers take at once, a claim never brings in
        more arguments than the 64 MiB leave room for, however small the tasks before
        it were.
    :param send_ahead_below: while tasks take less than this many seconds on average,
        each worker is sent its next task as it starts one, so it never waits a round
        trip to the supervisor between short tasks; tasks far under a millisecond are
        sent up to three ahead, so that a worker runs several per wake-up. A task sent
        ahead waits behind those before it, so longer tasks are not sent ahead, and when
        the task in front runs ten times longer than the average (at least 100 ms: it
        hangs, or waits on something), those behind it are taken back and run on other
        workers; 0 turns this off.
    :param start_method: ``"forkserver"`` or ``"spawn"``.
    :param sqlite_synchronous: ``"FULL"`` (an acknowledged enqueue survives power loss) or
        ``"NORMAL"`` (survives process crashes only).
    :param max_crashes: starts whose process dies (segfault, OOM kill, memory limit, lost
        supervisor) a task may have before it is quarantined as DEAD.
    :param result_ttl: seconds a finished task (and its result) is kept; None keeps it.
    :param max_memory_per_child: bytes (or "1GB") of RSS past which a worker process is
        replaced between tasks.
    :param purge_interval: seconds between a supervisor's purges of expired tasks.
    :param retry_delay: delay before the first retry, in seconds; doubles per retry.
    :param retry_delay_max: largest retry delay before jitter, in seconds.
    :param event_storage_type: where task and worker events go: ``"sqlite"`` (``events.db``
        beside the queue), ``"file"``, ``"memory"``, ``"postgres"``, ``"redis"``, ``"nats"``
        or ``"none"``; by default ``"memory"`` for the memory backend, ``"postgres"`` (the
        queue's database) for the postgres backend and ``"sqlite"`` otherwise.
    :param event_storage_path: the event database file (sqlite; in a folder that exists,
        ``events.db`` inside it) or folder (file); default in ``base_dir``.
    :param event_storage_url: Redis or NATS server of the event store (default: local).
    :param event_storage_dsn: PostgreSQL DSN of the event store (default: ``dsn``).
    :param event_ttl: seconds events are kept; None keeps them.
    :param result_storage_type: a store results are also written to, configured apart from
        the queue: ``"sqlite"``, ``"file"`` (fsspec: a folder or URL), ``"memory"``,
        ``"postgres"``, ``"redis"`` or ``"nats"``. None (default): results live in the
        queue store only. Either way ``get_result`` finds them.
    :param result_storage_path: its SQLite file (in a folder that exists, ``results.db``
        inside it) or file-store folder/URL (default in ``base_dir``).
    :param result_storage_url: its Redis or NATS server (default: local, standard port).
    :param result_storage_dsn: its PostgreSQL DSN (default: ``dsn``).
    :param event_storage_base_dir: another name for ``event_storage_path``.
    :param result_storage_base_dir: another name for ``result_storage_path``.
    :param signing_key: a secret of at least 32 bytes (``OMNIQ_SIGNING_KEY``) that turns
        on HMAC-SHA256 signing: producers sign payloads, workers sign results, and nothing
        is unpickled before its signature checks out, so writing the store no longer means
        running code. Unsigned payloads are then refused (drain the queue before turning it
        on). Never stored, logged or shown by ``repr``. None (default): signing off.
    :param signing_key_id: the name new signatures carry, so keys can be rotated.
    :param signing_keys_old: ``"k0:secret0,kz:secretz"``: retired keys, still accepted
        when verifying (never used to sign); secrets cannot contain commas.
    """

    backend: str = "sqlite"
    base_dir: Path = Path("./omniq_data")
    dsn: str | None = None
    postgres_schema: str = "omniq"
    procs: int = field(default_factory=lambda: os.cpu_count() or 1)
    queues: tuple[str, ...] = ("default",)
    max_retries: int = 3
    default_timeout: float | None = None
    lease_ttl: float = 30.0
    poll_interval: float = 0.05
    kill_grace: float = 0.5
    shutdown_grace: float = 10.0
    read_only_timeout: float = 60.0
    max_tasks_per_child: int | None = None
    max_payload_size: int | str | None = "256MB"
    max_result_size: int | str | None = "256MB"
    worker_init: str | None = None
    worker_init_timeout: float = 60.0
    max_start_failures: int = 5
    prefetch: int = 128
    send_ahead_below: float = 0.05
    start_method: str = field(default_factory=_default_start_method)
    sqlite_synchronous: str = "FULL"
    max_crashes: int = 3
    result_ttl: float | None = 7 * 24 * 3600.0
    max_memory_per_child: int | str | None = None
    purge_interval: float = 60.0
    retry_delay: float = 1.0
    retry_delay_max: float = 60.0
    event_storage_type: str | None = None
    event_storage_path: Path | None = None
    event_storage_url: str | None = None
    event_storage_dsn: str | None = None
    event_ttl: float | None = 7 * 24 * 3600.0
    result_storage_type: str | None = None
    result_storage_path: str | Path | None = None
    result_storage_url: str | None = None
    result_storage_dsn: str | None = None
    event_storage_base_dir: Path | None = None
    result_storage_base_dir: str | Path | None = None
    signing_key: str | None = field(default=None, repr=False)
    signing_key_id: str = "k1"
    signing_keys_old: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_text_fields(self)  # before _normalise, which calls str and Path methods
        self._normalise()
        for name, choices in (
            ("backend", BACKENDS),
            ("event_storage_type", EVENT_BACKENDS),
            ("result_storage_type", (*RESULT_BACKENDS, None)),
            ("start_method", START_METHODS),
        ):
            _check_choice(name, getattr(self, name), choices)
        _check_choice("sqlite_synchronous", self.sqlite_synchronous.upper(), ("FULL", "NORMAL"))
        for name, minimum in (
            ("procs", 1),
            ("max_retries", 0),
            ("prefetch", 0),
            ("max_crashes", 1),
            ("max_start_failures", 1),
        ):
            check_int(name, getattr(self, name), minimum=minimum)
        if self.worker_init is not None and not is_dotted_path(self.worker_init):
            raise ConfigError(
                "worker_init must be a dotted path like 'package.module.function' or "
                f"'package.module:function', got {self.worker_init!r}"
            )
        if self.max_tasks_per_child is not None:
            check_int("max_tasks_per_child", self.max_tasks_per_child, minimum=1)
        for name in _DURATIONS:
            allow_zero = name in ("shutdown_grace", "send_ahead_below")
            check_seconds(name, getattr(self, name), allow_zero=allow_zero)
        for name in _OPTIONAL_DURATIONS:
            if getattr(self, name) is not None:
                check_seconds(name, getattr(self, name))
        _check_lease_and_schema(self)
        _check_dsns(self)
        if not self.queues or not all(isinstance(q, str) and q for q in self.queues):
            raise ConfigError(f"queues must be non-empty names, got {self.queues!r}")
        _check_signing(self)

    def _normalise(self) -> None:
        # Accept the forms users and the environment give: str paths, "a,b" queues,
        # "1GB" sizes; fill the event store kind from the backend when not chosen.
        set_ = object.__setattr__
        set_(self, "base_dir", Path(self.base_dir))
        for name in ("backend", "event_storage_type", "result_storage_type"):
            value = getattr(self, name)
            if isinstance(value, str):
                set_(self, name, _ALIASES.get(value.lower(), value.lower()))
        for alias, name in (
            ("event_storage_base_dir", "event_storage_path"),
            ("result_storage_base_dir", "result_storage_path"),
        ):
            if getattr(self, alias) is not None and getattr(self, name) is None:
                set_(self, name, getattr(self, alias))
        set_(self, "queues", _queue_names(self.queues))
        if self.event_storage_type is None:
            # Events live beside the queue: in one process, on one machine, or on the
            # database that all hosts share.
            default = {"memory": "memory", "postgres": "postgres"}.get(self.backend, "sqlite")
            set_(self, "event_storage_type", default)
        if self.event_storage_path is not None:
            set_(self, "event_storage_path", Path(self.event_storage_path))
        for name in ("max_memory_per_child", "max_payload_size", "max_result_size"):
            if getattr(self, name) is not None:
                set_(self, name, parse_bytes(name, getattr(self, name)))

    def task_queue(self, storage: Storage) -> AsyncTaskQueue:
        """An :class:`AsyncTaskQueue` over ``storage`` with this retry and crash policy, and
        this signing key (if any)."""
        from omniq_mp.queue import AsyncTaskQueue
        from omniq_mp.retry import RetryPolicy

        policy = RetryPolicy(base=self.retry_delay, cap=self.retry_delay_max)
        return AsyncTaskQueue(
            storage,
            retry_policy=policy,
            max_crashes=self.max_crashes,
            signer=Signer.from_settings(self),
        )

    @property
    def events_path(self) -> Path:
        """The event store's file (sqlite) or folder (file)."""
        if self.event_storage_path is not None:
            return Path(self.event_storage_path)
        name = "events.db" if self.event_storage_type == "sqlite" else "events"
        return Path(self.base_dir) / name

    @property
    def wake_dir(self) -> Path | None:
        """Where processes sharing this store announce their wake-up sockets (None when
        the store has its own way: one process for memory, NOTIFY for PostgreSQL)."""
        return None if self.backend in ("memory", "postgres") else self.base_dir / "wake"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database file inside ``base_dir``."""
        return self.base_dir / "omniq.db"

    @property
    def postgres_dsn(self) -> str:
        """The PostgreSQL DSN of the queue (and the default of the other stores)."""
        from omniq_mp.pg import DEFAULT_DSN

        return self.dsn or DEFAULT_DSN

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
        **explicit: Any,
    ) -> Settings:
        """Settings from ``explicit`` arguments, over ``OMNIQ_*`` variables, over the
        config file (``config_file`` or ``OMNIQ_CONFIG``), over the defaults."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        config_file = config_file or env.get("OMNIQ_CONFIG") or None
        if config_file is not None:
            from omniq_mp.config_file import read_config_file

            known = {f.name for f in fields(cls)}
            for name, value in read_config_file(config_file, known).items():
                values[name] = _from_file(name, value, hints[name], config_file)
        from_file = set(values)
        for f in fields(cls):
            raw = env.get(f"OMNIQ_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse_env(f.name, raw, hints[f.name])
                from_file.discard(f.name)
        given = {k: v for k, v in explicit.items() if v is not None}
        values.update(given)
        from_file -= set(given)
        try:
            return cls(**values)
        except ConfigError as exc:
            if config_file is not None:
                _blame_file(cls, exc, {n: values[n] for n in from_file}, config_file)
            raise


OmniQConfig = Settings

MIN_LEASE_TTL = 1.0

_DURATIONS = (
    "lease_ttl",
    "poll_interval",
    "kill_grace",
    "shutdown_grace",
    "read_only_timeout",
    "worker_init_timeout",
    "purge_interval",
    "send_ahead_below",
    "retry_delay",
    "retry_delay_max",
)
_OPTIONAL_DURATIONS = ("default_timeout", "result_ttl", "event_ttl")
_INT_MINIMUMS = (
    ("procs", 1),
    ("max_retries", 0),
    ("prefetch", 0),
    ("max_crashes", 1),
    ("max_start_failures", 1),
)


def size_setting(value: int | str | None) -> int | None:
    """A size field of Settings as bytes: Settings has already parsed ``"256MB"`` and the
    like, so this only narrows the type."""
    return None if value is None else int(value)


def check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Validate a duration in seconds: a finite, positive number (or zero if allowed)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int) -> None:
    """Validate a whole number (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str | None, ...]) -> None:
    if value not in choices:
        names = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{name} must be one of {names}; got {value!r}")


def _check_lease_and_schema(settings: Settings) -> None:
    if settings.lease_ttl < MIN_LEASE_TTL:
        # Leases are renewed every lease_ttl/4 and a task whose renewals fail is killed at
        # 70% of it: a few store round trips must fit, or nothing ever finishes.
        raise ConfigError(
            f"lease_ttl must be at least {MIN_LEASE_TTL:g} s, got {settings.lease_ttl!r}"
        )
    problem = schema_problem(settings.postgres_schema)
    if problem is not None:  # refused here, not at first connect
        raise ConfigError(f"postgres_schema {problem}, got {settings.postgres_schema!r}")


def _check_dsns(settings: Settings) -> None:
    # Refused here, not at first connect, where the driver's error is a traceback or a
    # failure to reach localhost. An empty one means the default, as it always has.
    for name in ("dsn", "event_storage_dsn", "result_storage_dsn"):
        value = getattr(settings, name)
        problem = dsn_problem(value) if value else None
        if problem is not None:
            raise ConfigError(f"{name} is not a PostgreSQL address like {DSN_FORM}: {problem}")


def _check_text_fields(settings: Settings) -> None:
    """Refuse a wrongly typed text, path or queue-list value by name (a config file can give
    any type: ``queues = 5``, ``base_dir = 5``). Numbers have their own checks; the message
    gives the type only, never the value, which may be a secret."""
    for name, (accepted, kind) in _TEXT_FIELDS.items():
        value = getattr(settings, name)
        if not isinstance(value, accepted):
            raise ConfigError(f"{name} must be {kind}, not {type(value).__name__}")


def _text_field(hint: Any) -> tuple[tuple[type, ...], str] | None:
    """The types a text-like field may hold, from its type hint, and their description;
    None for other fields."""
    parts = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if any(part in (int, float) for part in parts):
        return None  # a number (or a size like "1GB"): checked by its own rule
    accepted: list[type] = []
    kinds: list[str] = []
    for part in parts:
        if get_origin(part) is tuple:
            accepted += [tuple, list, str]  # queues: a list, or "a,b" text
            kinds.append("a list of names")
        elif part is Path:
            accepted += [str, os.PathLike]
            kinds.append("a path")
        elif part is type(None):
            accepted.append(part)
            kinds.append("none")
        else:
            accepted.append(part)
            kinds.append("text")
    return tuple(accepted), " or ".join(dict.fromkeys(kinds))


def _check_signing(settings: Settings) -> None:
    # The check hands back a message: no line this error passes through holds a secret.
    problem = settings_problem(
        settings.signing_key, settings.signing_key_id, settings.signing_keys_old
    )
    if problem is not None:
        raise ConfigError(problem)


def _queue_names(queues: Any) -> Any:
    """``queues`` as the tuple its type says: "a,b" split, a list copied (a caller's list
    would stay mutable through a frozen Settings, and make it unhashable); anything else
    is left for the checks to refuse by name."""
    if isinstance(queues, str):
        return _split_queues(queues)
    if isinstance(queues, list):
        return tuple(queues)
    return queues


def _split_queues(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _from_file(name: str, value: Any, hint: Any, source: str | Path) -> Any:
    # YAML and TOML give typed values; text goes through the environment's parsing so
    # "1GB", "none" and "a,b" mean the same in a file as in OMNIQ_* variables.
    if isinstance(value, list) and "tuple" in str(hint):
        return tuple(str(v) for v in value)
    if isinstance(value, str):
        try:
            return _parse_env(name, value, hint)
        except ConfigError as exc:
            raise _in_file(source, name, exc) from None
    return value


def _in_file(source: str | Path, name: str, exc: ConfigError) -> ConfigError:
    """``exc``, about the value of ``name`` that came from the config file ``source``,
    as an error naming the file (and the field as the file spells it)."""
    return ConfigError(f"{source}: {exc}".replace(f"OMNIQ_{name.upper()}=", f"{name}="))


def _blame_file(
    cls: type[Settings], exc: ConfigError, file_values: Mapping[str, Any], source: str | Path
) -> None:
    """Raise ``exc`` naming the config file when a value the file gave (and nothing
    overrode) fails the same way on its own: a number, a choice, a list the file got wrong.
    An error that needs several fields, or comes from elsewhere, is left as it is."""
    for name, value in file_values.items():
        try:
            cls(**{name: value})
        except ConfigError as alone:
            if str(alone) == str(exc):
                raise _in_file(source, name, exc) from None


# Fields where "none" is one of the choices (events off), not "unset, use the default".
_NONE_IS_A_CHOICE = frozenset({"event_storage_type"})


def _parse_env(name: str, raw: str, hint: Any) -> Any:
    text = str(hint)
    try:
        if "tuple" in text:
            return _split_queues(raw)
        if "Path" in text:
            return Path(raw)
        if raw.lower() == "none" and "None" in text and name not in _NONE_IS_A_CHOICE:
            return None
        if "str" in text:
            return raw  # parsed by the field's own check (sizes like "1GB")
        if "int" in text and "float" not in text:
            return None if raw.lower() == "none" else int(raw)
        if "float" in text:
            return None if raw.lower() == "none" else float(raw)
    except ValueError:
        raise ConfigError(f"OMNIQ_{name.upper()}={raw!r} is not a valid {_kind(hint)}") from None
    return raw


def _kind(hint: Any) -> str:
    """A field's type hint as a reader says it: "int", "float or none" (not "<class 'int'>")."""
    parts = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    names = (
        "none" if part is type(None) else getattr(part, "__name__", str(part)) for part in parts
    )
    return " or ".join(names)


# Derived from the hints once: a text field added to Settings is checked without an edit.
# The signing fields are left to signing.settings_problem, which has its own wording.
_TEXT_FIELDS = {
    name: checked
    for name, hint in get_type_hints(Settings).items()
    if (checked := _text_field(hint)) is not None and not name.startswith("signing_")
}


def describe_store(settings: Settings) -> str:
    """Where the queue of ``settings`` is, for humans (a DSN's password is never shown)."""
    if settings.backend == "postgres":
        return f"postgres {redact(settings.postgres_dsn)} schema {settings.postgres_schema}"
    return f"{settings.backend} at {settings.base_dir}"
