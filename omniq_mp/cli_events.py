"""``omniq-mp events`` (stored events, optionally followed live) and ``omniq-mp stats``."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import datetime
from types import FrameType
from typing import Any, TextIO

import click

from omniq_mp.cli_common import INT64_MAX, handles_errors, store_options, store_settings
from omniq_mp.core import AsyncOmniQ
from omniq_mp.eventstore import Event, EventType
from omniq_mp.runtime import run

__all__ = ["events", "stats", "top"]


def _parse_types(text: str | None) -> list[EventType] | None:
    if text is None:
        return None
    chosen = []
    for name in (part.strip().upper() for part in text.split(",") if part.strip()):
        try:
            chosen.append(EventType(name))
        except ValueError:
            known = ", ".join(t.value for t in EventType)
            raise click.BadParameter(
                f"unknown event type {name!r}; known: {known}", param_hint="--type"
            ) from None
    if not chosen:
        raise click.BadParameter("give at least one event type", param_hint="--type")
    return chosen


def _line(position: int, event: Event) -> str:
    when = datetime.fromtimestamp(event.timestamp).isoformat(timespec="milliseconds")
    who = event.task_id or event.worker_id or "-"
    details = " ".join(f"{k}={v}" for k, v in event.details.items() if k != "children")
    return f"{position:>8} {when} {event.event_type.value:<20} {who}  {details}".rstrip()


@click.command()
@store_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events (Ctrl-C stops).")
@click.option("--task", "task_id", default=None, help="Only this task's events.")
@click.option("--type", "types", default=None, help="Comma-separated types, e.g. FAILED,DEAD.")
@click.option(
    "--after",
    type=click.IntRange(min=0, max=INT64_MAX),
    default=0,
    help="Start after this position.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@handles_errors
def events(
    follow: bool, task_id: str | None, types: str | None, after: int, as_json: bool, **options: Any
) -> None:
    """Print task and worker events, oldest first."""
    chosen = _parse_types(types)
    settings = store_settings(**options)

    async def show() -> None:
        q = AsyncOmniQ(settings)
        main = asyncio.current_task()
        if follow and main is not None:
            # Explicit handlers: a process started with SIGINT ignored (as a shell does for
            # background jobs) would otherwise never stop following.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, main.cancel)
        try:
            stream = q.events(follow=follow, after=after, task_id=task_id, types=chosen)
            async for stored in stream:
                if as_json:
                    click.echo(json.dumps({"position": stored.position, **stored.event.to_dict()}))
                else:
                    click.echo(_line(stored.position, stored.event))
        finally:
            await q.close()

    try:
        run(show())
    except (KeyboardInterrupt, asyncio.CancelledError):  # --follow ends with Ctrl-C
        pass


@click.command()
@store_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handles_errors
def stats(as_json: bool, **options: Any) -> None:
    """Show queue depths, totals, last-minute throughput and what each worker runs."""
    settings = store_settings(**options)

    async def collect() -> tuple[Any, Any, Any]:
        q = AsyncOmniQ(settings)
        try:
            return (
                await q.get_global_stats(),
                await q.get_all_queue_stats(),
                await q.get_worker_stats(),
            )
        finally:
            await q.close()

    totals, queues, workers = run(collect())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "global": totals.to_dict(),
                    "queues": {name: s.to_dict() for name, s in queues.items()},
                    "workers": [w.to_dict() for w in workers],
                }
            )
        )
        return
    click.echo(_stats_text(totals, queues, workers))


@click.command()
@store_options
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@click.option(
    "--batch",
    "-b",
    is_flag=True,
    help="Plain-text snapshots instead of the live view (the default when stdout is not "
    "a terminal).",
)
@click.option(
    "--iterations",
    "-n",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after this many snapshots or redraws [default: run until stopped].",
)
@handles_errors
def top(interval: float, batch: bool, iterations: int | None, **options: Any) -> None:
    """Live view of supervisors, worker processes, their tasks and queue depths (q quits).

    When stdout is not a terminal (a file, a pipe), or with --batch, it prints a
    plain-text snapshot every --interval seconds instead, as top -b does: no colours or
    screen redraws, each snapshot written out at once, a blank line between them, until
    Ctrl-C, SIGTERM or --iterations snapshots (omniq-mp top -n 1 looks once).
    """
    from omniq_mp.top import run_top

    settings = store_settings(**options)
    # SIGTERM (``kill``, ``timeout 60 omniq-mp top``) ends the view as Ctrl-C does, so it
    # restores the terminal: killed outright, it would leave the shell without echo.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_top(settings, interval, iterations, batch=batch or not _is_terminal(sys.stdout))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by something without one, or closed
        return False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stats_text(totals: Any, queues: Any, workers: Any) -> str:
    lines = [
        f"{'queue':<16}{'due':>7}{'sched':>7}{'run':>6}{'done':>8}{'failed':>8}{'dead':>6}"
        f"{'/min':>7}"
    ]
    for name, s in queues.items():
        lines.append(
            f"{name:<16}{s.depth:>7}{s.scheduled:>7}{s.running:>6}{s.completed:>8}"
            f"{s.failed:>8}{s.dead:>6}{s.throughput:>7}"
        )
    lines.append(
        f"supervisors alive: {totals.supervisors}, worker processes: {totals.worker_processes}"
    )
    for w in workers:
        lines.append(
            f"  {w.worker_id}  active {w.active}/{w.procs}  processed {w.processed}  "
            f"health {w.health_text()}  loop lag {w.loop_lag * 1000:.0f} ms"
        )
        for c in w.children:
            lines.append(
                f"    pid {c.pid}  task {c.task_id}  {c.running_for:.1f}s  "
                f"rss {c.rss // 2**20} MiB  cpu {c.cpu_seconds:.1f}s"
            )
    return "\n".join(lines)
