"""``omniq-mp`` commands that act on stored tasks and schedules: cancel, dead, retry,
purge, periodic, pause, resume.

Unknown ids are one line on stderr and exit 1; so is a store that cannot be opened.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import click

from omniq_mp.cli_common import INT64_MAX, fail, handles_errors, store_options, store_settings
from omniq_mp.errors import ConfigError, TaskNotFoundError
from omniq_mp.models import Task, TaskStatus, finished_statuses
from omniq_mp.sync import OmniQ
from omniq_mp.units import parse_duration

__all__ = ["cancel", "dead", "pause", "periodic", "purge", "resume", "retry"]


def _open(**options: Any) -> OmniQ:
    return OmniQ(store_settings(**options))


@click.command()
@store_options
@click.argument("task_id")
@handles_errors
def cancel(task_id: str, **options: Any) -> None:
    """Cancel TASK_ID: a pending task never starts; a running one is killed. Any run's id
    of an interval task stops its series."""
    q = _open(**options)
    try:
        before = q.get_task(task_id)
        if before is None:
            raise TaskNotFoundError(f"no such task: {task_id}")
        if not q.cancel(task_id):
            click.echo(f"task {task_id} already finished ({before.status.value}); nothing to do")
            return
        if before.status.is_terminal:  # a finished run of an interval task: its series
            click.echo(f"interval task {task_id} stopped: no more runs")
            return
        running = before.status is TaskStatus.RUNNING
        click.echo(f"task {task_id} " + ("is being killed" if running else "cancelled"))
    finally:
        q.close()


@click.command()
@store_options
@click.option("--limit", type=click.IntRange(min=1, max=INT64_MAX), default=100, show_default=True)
@handles_errors
def dead(limit: int, **options: Any) -> None:
    """List quarantined (DEAD) tasks with the reason of every attempt."""
    q = _open(**options)
    try:
        tasks = q.dead(limit)
    finally:
        q.close()
    if not tasks:
        click.echo("no dead tasks")
    for task in tasks:
        click.echo(f"{task.id}  {task.func_name}  {task.attempts} starts  queue={task.queue}")
        for number, error in enumerate(task.history, start=1):
            click.echo(f"    {number}. {error}")


@click.command()
@store_options
@click.argument("task_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Re-queue every DEAD task.")
@handles_errors
def retry(task_ids: tuple[str, ...], every: bool, **options: Any) -> None:
    """Re-queue DEAD (or FAILED) TASK_IDS, or --all DEAD tasks, with fresh budgets. A
    task whose key an unfinished task holds (a failed run of a live interval series) is
    left as it is."""
    if every == bool(task_ids):
        raise click.UsageError("give task ids or --all (not both)")
    q = _open(**options)
    try:
        revived = q.retry(None if every else list(task_ids))
        left = {t: q.get_task(t) for t in task_ids if t not in revived}
    finally:
        q.close()
    for task_id in revived:
        click.echo(f"re-queued {task_id}")
    if every and not revived:
        click.echo("no dead tasks")  # as `dead` says; silence reads like a hang or a fault
    missing = [t for t, task in left.items() if task is None]
    if missing:
        fail(f"no such task: {', '.join(missing)}")
    # Revivable, but another unfinished task holds the key (an interval series' next run).
    held = [f"{t} (key {task.key!r})" for t, task in left.items() if task and _revivable(task)]
    if held:
        fail(f"an unfinished task holds their key, left as they are: {', '.join(held)}")
    if left:
        fail(f"not DEAD or FAILED, left as they are: {', '.join(left)}")


def _revivable(task: Task) -> bool:
    return task.status in (TaskStatus.DEAD, TaskStatus.FAILED)


@click.command()
@store_options
@click.option("--older-than", required=True, help="Age of finished tasks to delete: 90m, 7d ...")
@click.option(
    "--status",
    "statuses",
    default="completed,failed",
    show_default=True,
    help="Comma-separated terminal statuses: completed, failed, cancelled, dead.",
)
@handles_errors
def purge(older_than: str, statuses: str, **options: Any) -> None:
    """Delete finished tasks older than --older-than."""
    try:
        parse_duration("--older-than", older_than)
        chosen = finished_statuses(statuses, "--status")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    q = _open(**options)
    try:
        removed = q.purge(older_than, chosen)
    finally:
        q.close()
    click.echo(f"purged {removed} task(s)")


@click.command()
@store_options
@handles_errors
def periodic(**options: Any) -> None:
    """List cron schedules with their next run."""
    q = _open(**options)
    try:
        schedules = q.periodic()
    finally:
        q.close()
    if not schedules:
        click.echo("no schedules")
    for s in schedules:
        when = datetime.fromtimestamp(s.next_run, ZoneInfo(s.tz)).isoformat(timespec="seconds")
        state = "paused" if s.paused else f"next {when}"
        click.echo(f"{s.id}  {s.cron!r} {s.tz}  {s.template.func_name}  {state}")


def _set_paused(schedule_id: str, paused: bool, options: dict[str, Any]) -> None:
    q = _open(**options)
    try:
        q.pause(schedule_id, paused)
    finally:
        q.close()
    click.echo(f"{schedule_id} {'paused' if paused else 'resumed'}")


@click.command()
@store_options
@click.argument("schedule_id")
@handles_errors
def pause(schedule_id: str, **options: Any) -> None:
    """Pause the cron schedule SCHEDULE_ID."""
    _set_paused(schedule_id, True, options)


@click.command()
@store_options
@click.argument("schedule_id")
@handles_errors
def resume(schedule_id: str, **options: Any) -> None:
    """Resume SCHEDULE_ID; a due time missed while paused runs once, at once."""
    _set_paused(schedule_id, False, options)
