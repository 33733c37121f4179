"""``omniq-mp top``: a live terminal view of supervisors, worker processes and queues.

Redraws once a second from the store (any process can run it). ``q`` or Ctrl-C exits;
the terminal is put in cbreak mode only while the view runs, and restored on exit.

In batch mode (``top -b``: chosen when stdout is not a terminal) it prints one plain-text
snapshot per interval instead, each flushed as it is printed, and leaves the terminal
alone: a redrawn screen in a file or a pipe is nothing but control codes, and a pager
reading the same terminal needs its keys.
"""

from __future__ import annotations

import contextlib
import io
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from datetime import datetime

from rich.console import Console, Group
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from omniq_mp.config import Settings, describe_store
from omniq_mp.core import AsyncOmniQ
from omniq_mp.runtime import LoopThread
from omniq_mp.stats import GlobalStatistics, QueueStatistics, WorkerStatistics

__all__ = ["run_top"]

Snapshot = tuple[GlobalStatistics, dict[str, QueueStatistics], list[WorkerStatistics]]


async def _snapshot(q: AsyncOmniQ) -> Snapshot:
    return await q.get_global_stats(), await q.get_all_queue_stats(), await q.get_worker_stats()


def render(settings: Settings, snapshot: Snapshot, *, keys: bool = True) -> Group:
    """The whole screen for one snapshot; ``keys``: the view reads ``q`` to quit."""
    totals, queues, workers = snapshot
    title = Text(
        f"omniq-mp top — {describe_store(settings)} — "
        f"{datetime.now():%H:%M:%S}{' — q to quit' if keys else ''}",
        style="bold",
    )
    return Group(title, _queue_table(queues), _worker_table(workers, totals))


def _queue_table(queues: dict[str, QueueStatistics]) -> Table:
    table = Table("queue", "due", "scheduled", "running", "done", "failed", "dead", "done/min")
    for name, s in queues.items():
        table.add_row(
            name, *map(str, (s.depth, s.scheduled, s.running, s.completed, s.failed, s.dead,
                             s.throughput))
        )  # fmt: skip
    return table


def _worker_table(workers: list[WorkerStatistics], totals: GlobalStatistics) -> Table:
    table = Table(
        "supervisor / pid", "task", "running for", "memory", "cpu",
        title=f"{totals.supervisors} supervisor(s), {totals.worker_processes} process(es)",
    )  # fmt: skip
    for w in workers:
        # Red so that a supervisor whose workers cannot start stands out in a long list.
        health = w.health_text() if w.health == "ok" else f"[bold red]{w.health_text()}[/]"
        table.add_row(
            f"[bold]{w.worker_id}[/]",
            f"{w.active}/{w.procs} busy, {w.processed} done, {health}",
            "",
            "",
            "",
        )
        for c in w.children:
            table.add_row(
                f"  {c.pid}",
                c.task_id,
                f"{c.running_for:.1f}s",
                f"{c.rss / 2**20:.0f} MiB",
                f"{c.cpu_seconds:.1f}s",
            )
    return table


@contextlib.contextmanager
def _keys() -> Iterator[None]:
    """Read single key presses without echo while the view runs (if stdin is a tty)."""
    if not sys.stdin.isatty():
        yield
        return
    saved = termios.tcgetattr(sys.stdin)
    try:
        tty.setcbreak(sys.stdin.fileno())
        yield
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def _quit_pressed(timeout: float) -> bool:
    if not sys.stdin.isatty():
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and sys.stdin.read(1).lower() == "q"


def run_top(
    settings: Settings,
    interval: float = 1.0,
    iterations: int | None = None,
    *,
    batch: bool = False,
) -> None:
    """Show the live view until ``q``, Ctrl-C, or ``iterations`` redraws; with ``batch``,
    print a plain-text snapshot every ``interval`` seconds instead, until Ctrl-C or
    ``iterations`` snapshots."""
    loop = LoopThread()
    q = AsyncOmniQ(settings)

    def snapshot() -> Snapshot:
        return loop.call(_snapshot(q))

    try:
        if batch:
            _print_snapshots(settings, snapshot, interval, iterations)
        else:
            _live_view(settings, snapshot, interval, iterations)
    except KeyboardInterrupt:
        pass
    finally:
        loop.call(q.close())
        loop.stop()


def _live_view(
    settings: Settings, snapshot: Callable[[], Snapshot], interval: float, iterations: int | None
) -> None:
    with _keys(), Live(auto_refresh=False, screen=False) as live:
        count = 0
        while iterations is None or count < iterations:
            live.update(render(settings, snapshot()), refresh=True)
            count += 1
            if _quit_pressed(interval):
                break


def _print_snapshots(
    settings: Settings, snapshot: Callable[[], Snapshot], interval: float, iterations: int | None
) -> None:
    count = 0
    while True:
        if count:
            sys.stdout.write("\n")
        print_plain(render(settings, snapshot(), keys=False))
        # A pipe's buffer would otherwise hold the snapshots back until it fills up.
        sys.stdout.flush()
        count += 1
        if iterations is not None and count >= iterations:
            return
        time.sleep(interval)


def print_plain(screen: Group) -> None:
    """Print ``screen`` on stdout without colours or other control codes, as wide as its
    widest row: a file or a pipe has no width, and a task id cut short or wrapped would be
    lost to grep."""
    probe = Console(file=io.StringIO(), width=10_000, color_system=None)
    width = Measurement.get(probe, probe.options, screen).maximum
    console = Console(
        file=sys.stdout, width=width, color_system=None, force_terminal=False, highlight=False
    )
    console.print(screen)
