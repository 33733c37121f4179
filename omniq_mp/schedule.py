"""Periodic tasks by cron expression: the schedule record and its next due time.

A schedule is a stored template (the pickled call and its task options) plus a cron
expression, a timezone and ``next_run``. Supervisors fire due schedules inside one write
transaction that also moves ``next_run`` on, so however many supervisors share a store,
each due time produces exactly one task. Times missed while no supervisor ran are not
replayed: the schedule fires once and moves to its next time after now.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from omniq_mp.errors import ConfigError
from omniq_mp.models import Task

__all__ = ["Schedule", "check_cron", "next_cron_time"]

# The task options a schedule's template keeps (stored as JSON beside the payload), with
# the JSON types each may hold when read back.
_NUMBER = (int, float)
_TEMPLATE_OPTIONS: dict[str, tuple[type, ...]] = {
    "queue": (str,),
    "priority": (int,),
    "timeout": (*_NUMBER, type(None)),
    "max_retries": (int,),
    "max_memory": (int, type(None)),
    "result_ttl": (*_NUMBER, type(None)),
}


@dataclass
class Schedule:
    """A cron schedule and the task it creates at each due time.

    :param template: the task each firing copies (payload and options); its id, eta and
        status are replaced on every firing.
    """

    template: Task
    cron: str
    tz: str = "UTC"
    id: str = field(default_factory=lambda: f"sch-{uuid.uuid4().hex[:16]}")
    next_run: float = 0.0
    paused: bool = False
    last_task_id: str | None = None
    created_at: float = field(default_factory=time.time)

    def template_options(self) -> dict[str, object]:
        """The template's task options as plain data (for storage)."""
        return {name: getattr(self.template, name) for name in _TEMPLATE_OPTIONS}

    @staticmethod
    def template_from(func_name: str, payload: bytes, options: dict[str, object]) -> Task:
        """Rebuild a template task from stored parts; unknown option names are ignored.

        :raises TypeError: ``options`` is not a mapping or an option has the wrong type
            (they are read back from stored JSON, which may have been damaged).
        """
        if not isinstance(options, Mapping):
            raise TypeError(f"schedule options must be a JSON object, not {type(options).__name__}")
        known = {k: v for k, v in options.items() if k in _TEMPLATE_OPTIONS}
        for name, value in known.items():
            wanted = _TEMPLATE_OPTIONS[name]
            # bool is an int to isinstance: refuse it where a number belongs.
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise TypeError(f"schedule option {name} is {type(value).__name__}")
        return Task(func_name=func_name, payload=payload, **known)  # type: ignore[arg-type]

    def task_for(self, due: float) -> Task:
        """The task this schedule creates for the due time ``due``."""
        return self.template.rerun(due, time.time())


def _zone(tz: str) -> ZoneInfo:
    if not isinstance(tz, str):
        raise ConfigError(f"tz must be an IANA timezone name like 'Europe/Berlin', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown timezone {tz!r} (use an IANA name like 'Europe/Berlin')"
        ) from None


def check_cron(expression: str, tz: str) -> None:
    """Raise ConfigError unless ``expression`` is a valid 5-field cron and ``tz`` a zone."""
    if not isinstance(expression, str):
        raise ConfigError(f"cron must be a string like '*/5 * * * *', got {expression!r}")
    # cronsim also takes six fields, the first being seconds: "* * * * * *" would start a
    # task every second where a crontab-minded reader expects five fields.
    fields = len(expression.split())
    if fields != 5:
        raise ConfigError(
            f"invalid cron expression {expression!r}: 5 fields (minute hour day month "
            f"weekday) expected, got {fields}"
        )
    zone = _zone(tz)
    try:
        next(CronSim(expression, datetime.now(zone)))
    except (CronSimError, StopIteration) as exc:
        raise ConfigError(f"invalid cron expression {expression!r}: {exc}") from None


def next_cron_time(expression: str, tz: str, after: float) -> float:
    """The first due time of ``expression`` in ``tz`` strictly after ``after`` (epoch)."""
    start = datetime.fromtimestamp(after, _zone(tz))
    return next(CronSim(expression, start)).timestamp()
