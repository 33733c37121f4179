"""The ``omniq-mp`` command.

Usage errors exit 2 (click's convention), runtime errors (an unusable store, a failed
task in ``result``) exit 1 with one line on stderr; no tracebacks for expected failures.
SIGTERM, SIGINT or SIGHUP (its terminal closed) stops ``workers`` gracefully; a second
one stops it at once, and either way unfinished tasks go back to the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from omniq_mp import logging as omniq_logging
from omniq_mp.cli_common import (
    INT64_MAX,
    INT64_MIN,
    Seconds,
    TaskArgsCommand,
    describe_store,
    fail,
    handles_errors,
    store_options,
    store_settings,
)
from omniq_mp.cli_control import cancel, dead, pause, periodic, purge, resume, retry
from omniq_mp.cli_db import db
from omniq_mp.cli_events import events, stats, top
from omniq_mp.config import START_METHODS, Settings
from omniq_mp.core import AsyncOmniQ
from omniq_mp.dotted_path import is_dotted_path
from omniq_mp.errors import ConfigError, ResultTimeoutError, TaskFailedError
from omniq_mp.models import Settlement, Task, TaskStatus
from omniq_mp.progress import ProgressBar
from omniq_mp.runtime import run
from omniq_mp.sync import OmniQ
from omniq_mp.task_builder import MAX_RETRIES
from omniq_mp.worker import HEARTBEAT_INTERVAL, AsyncWorkerPool

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING ... [env OMNIQ_LOG_LEVEL].")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A YAML or TOML settings file [env OMNIQ_CONFIG]; options and OMNIQ_* win over it.",
)
@click.version_option(package_name="omniq_mp")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, config: Path | None) -> None:
    """omniq-mp: a durable multiprocess task queue."""
    ctx.obj = {"config": config}
    if log_level is None and ctx.invoked_subcommand == "demo":
        log_level = os.environ.get("OMNIQ_LOG_LEVEL", "WARNING")  # keep the demo readable
    try:
        omniq_logging.configure(level=log_level)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@cli.command()
@store_options
@click.option("--procs", type=click.IntRange(min=1), default=None, help="Worker processes.")
@click.option("--queues", default=None, help="Comma-separated queues to serve.")
@click.option("--burst", is_flag=True, help="Exit once no task is due, running or retrying.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar of finished tasks [default: with --burst on a terminal].",
)
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), default=None)
@click.option(
    "--max-memory-per-child",
    default=None,
    help="Replace a worker whose memory grows past this (e.g. 1GB) between tasks.",
)
@click.option("--start-method", type=click.Choice(START_METHODS), default=None)
@click.option(
    "--worker-init",
    default=None,
    metavar="PACKAGE.MODULE.FUNCTION",
    help="Run this in each worker process once, before its first task (load a model...).",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds running tasks get on SIGTERM before they are killed and requeued.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    default=None,
    help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.",
)
@handles_errors
def workers(burst: bool, progress: bool | None, metrics_port: int | None, **options: Any) -> None:
    """Run a supervisor and its worker processes against the store."""
    settings = store_settings(**options)
    if progress is None:
        progress = burst and sys.stderr.isatty()
    done = run(_serve(settings, burst, metrics_port, progress))
    click.echo(f"omniq-mp workers: {done} task attempt(s) settled", err=True)


async def _serve(
    settings: Settings, burst: bool, metrics_port: int | None = None, progress: bool = False
) -> int:
    omniq = AsyncOmniQ(settings)
    await omniq.open()
    bar = None
    try:
        workers = omniq.worker_pool()
        refresher = _start_metrics(workers, metrics_port)
        _install_signal_handlers(workers)
        if progress:
            bar = await _progress_bar(omniq, workers)
        await workers.start()
        try:
            await workers.process_tasks(burst=burst)
        finally:
            await workers.stop()
            if refresher is not None:
                refresher.cancel()
        # Counted after stop(), not from process_tasks: on SIGTERM the tasks that finish
        # within the shutdown grace settle in stop().
        return workers.processed
    finally:
        if bar is not None:
            bar.close()
        await omniq.close()


async def _progress_bar(omniq: AsyncOmniQ, workers: AsyncWorkerPool) -> ProgressBar:
    """A bar over the tasks unfinished at start; tasks that arrive later extend it."""
    backlog = await omniq.stats(workers.settings.queues)
    bar = ProgressBar(backlog.unfinished, "tasks")

    def on_settled(_: Task, settlement: Settlement) -> None:
        if settlement.status.is_terminal:
            bar.count(settlement.status is TaskStatus.COMPLETED)

    workers.on_settled.append(on_settled)
    return bar


def _start_metrics(workers: AsyncWorkerPool, port: int | None) -> asyncio.Task[None] | None:
    if port is None:
        return None
    from omniq_mp.metrics import Metrics

    metrics = Metrics()
    try:
        metrics.serve(port)
    except OSError as exc:
        raise click.UsageError(f"--metrics-port {port}: {exc.strerror}") from None
    metrics.attach(workers)
    return asyncio.create_task(metrics.refresh_depths(workers), name="omniq-metrics")


def _install_signal_handlers(workers: AsyncWorkerPool) -> None:
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
                click.echo(
                    "omniq-mp workers: stopping gracefully (signal again to force)", err=True
                )
            workers.request_stop()
        else:
            workers.pool.abort_all(f"fast shutdown on signal {signum}")

    # SIGHUP: a closed terminal or ssh session would otherwise kill the supervisor at once
    # and leave its tasks RUNNING until their leases lapse.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)


# The longest delay a timedelta holds (in whole days: its exact maximum rounds past it).
_MAX_DELAY = float(timedelta.max.days * 86400)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@cli.command(cls=TaskArgsCommand)
@store_options
@click.argument("func_path")
@click.argument("args", nargs=-1)
@click.option("--kwargs", "kwargs_json", default=None, help="JSON object, e.g. '{\"x\": 1}'.")
@click.option("--queue", default=None)
@click.option("--priority", type=click.IntRange(INT64_MIN, INT64_MAX), default=0)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--max-retries", type=click.IntRange(min=0, max=MAX_RETRIES), default=None)
@click.option(
    "--delay",
    type=Seconds(limit=_MAX_DELAY),
    default=None,
    help="Seconds to wait before the task is due.",
)
@click.option("--key", default=None, help="Unique key: one unfinished task per key.")
@click.option("--cron", default=None, help="Run on this 5-field cron schedule instead.")
@click.option("--tz", default=None, help="Timezone of --cron (IANA name; default UTC).")
@click.option("--max-memory", default=None, help="Kill the task past this RSS (e.g. 512MB).")
@handles_errors
def enqueue(
    func_path: str,
    args: tuple[str, ...],
    kwargs_json: str | None,
    delay: float | None,
    backend: str | None,
    base_dir: Path | None,
    dsn: str | None,
    postgres_schema: str | None,
    **options: Any,
) -> None:
    """Enqueue FUNC_PATH (package.module.function) with ARGS (each parsed as JSON when it
    is valid JSON, else taken as a string; put -- before them when one starts with a
    dash, as a negative number does); prints the task id."""
    if not is_dotted_path(func_path):
        raise click.BadParameter(
            f"expected a dotted path like package.module.function, got {func_path!r}",
            param_hint="FUNC_PATH",
        )
    if options["tz"] is not None and options["cron"] is None:
        # Without --cron, enqueue would pass tz= on to the function as an argument.
        raise click.UsageError("--tz is the timezone of --cron; it needs --cron")
    if delay is not None and options["cron"] is not None:
        # A schedule's runs fall due at its cron times; the delay would be dropped unseen.
        raise click.UsageError("--delay cannot be combined with --cron: the cron times say when")
    kwargs = _parse_kwargs(kwargs_json)
    chosen = {name: value for name, value in options.items() if value is not None}
    if delay is not None:
        chosen["eta"] = timedelta(seconds=delay)
    q = OmniQ(
        store_settings(backend=backend, base_dir=base_dir, dsn=dsn, postgres_schema=postgres_schema)
    )
    try:
        task_id = q.enqueue(
            func_path, args=[_parse_value(a) for a in args], kwargs=kwargs, **chosen
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        q.close()
    click.echo(task_id)


def _parse_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--kwargs") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--kwargs")
    return value


@cli.command()
@store_options
@click.argument("task_id")
@click.option(
    "--wait",
    type=Seconds(),
    default=0.0,
    help="Seconds to wait for the task to finish.",
)
@click.option(
    "--traceback",
    "show_traceback",
    is_flag=True,
    help="For a failed task, print the worker's traceback before the error line.",
)
@handles_errors
def result(task_id: str, wait: float, show_traceback: bool, **options: Any) -> None:
    """Print the result of TASK_ID (exit 1 if it failed or is not finished)."""
    q = OmniQ(store_settings(**options))
    try:
        value = q.get_result(task_id, timeout=wait)
    except TaskFailedError as exc:
        # One line by default, like every runtime error (scripts read stderr); the worker's
        # traceback is there for whoever debugs the task.
        if show_traceback and exc.traceback:
            click.echo(exc.traceback.rstrip("\n"), err=True)
        fail(str(exc))
    except ResultTimeoutError as exc:
        fail(str(exc))
    finally:
        q.close()
    click.echo(repr(value))


@cli.command()
@store_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handles_errors
def status(as_json: bool, **options: Any) -> None:
    """Show task counts by status and the live workers."""
    settings = store_settings(**options)
    stats, live = run(_status(settings))
    if as_json:
        click.echo(json.dumps({"tasks": stats.__dict__, "workers": [w.__dict__ for w in live]}))
        return
    click.echo(f"store: {describe_store(settings)}")
    for name, count in stats.__dict__.items():
        click.echo(f"  {name:<10} {count}")
    click.echo(f"workers alive: {len(live)}")
    for w in live:
        health = w.details.get("health", "ok")
        click.echo(f"  {w.worker_id}  procs={w.procs} queues={','.join(w.queues)} health={health}")


async def _status(settings: Settings) -> tuple[Any, list[Any]]:
    omniq = AsyncOmniQ(settings)
    try:
        stats = await omniq.stats()
        live = await omniq.storage.workers(time.time() - 3 * HEARTBEAT_INTERVAL)
        return stats, live
    finally:
        await omniq.close()


@cli.command()
@store_options
@click.option("--procs", type=click.IntRange(min=1), default=None, help="Worker processes.")
@handles_errors
def demo(**options: Any) -> None:
    """Enqueue a mix of tasks into the store, run them, and print a summary."""
    from omniq_mp.demo import demo_tasks

    settings = store_settings(in_process=True, **options)
    began = time.perf_counter()
    with OmniQ(settings) as q, tempfile.TemporaryDirectory() as scratch:
        labelled = [
            (label, q.enqueue(fn, *args, **opts))
            for label, fn, args, opts in demo_tasks(Path(scratch))
        ]
        click.echo(
            f"enqueued {len(labelled)} tasks into the {describe_store(settings)}; "
            f"running on {settings.procs} processes",
            err=True,
        )
        _follow(q, [tid for _, tid in labelled])
        click.echo(_summary(q, labelled, time.perf_counter() - began))


def _follow(q: OmniQ, ids: list[str]) -> None:
    futures = [q.future_of(tid) for tid in ids]
    with ProgressBar(len(ids), "tasks") as bar:
        for future in concurrent.futures.as_completed(futures):
            bar.count(not future.cancelled() and future.exception() is None)


def _summary(q: OmniQ, labelled: list[tuple[str, str]], elapsed: float) -> str:
    lines = [f"{'task':<22} {'status':<10} {'runs':>4}  result or error"]
    counts: dict[str, int] = {}
    for label, tid in labelled:
        task = q.get_task(tid)
        assert task is not None
        counts[task.status.value] = counts.get(task.status.value, 0) + 1
        if task.status is TaskStatus.COMPLETED:
            shown = repr(q.get_result(tid))
        else:
            shown = str(task.error)
        lines.append(f"{label:<22} {task.status.value:<10} {task.attempts:>4}  {shown[:90]}")
    totals = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    lines.append(f"\n{len(labelled)} tasks in {elapsed:.1f}s: {totals}")
    return "\n".join(lines)


for _command in (cancel, dead, retry, purge, periodic, pause, resume, events, stats, top, db):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="omniq-mp")
