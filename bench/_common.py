"""Helpers shared by the benchmark scripts: a timer, percentiles, the machine description,
Markdown tables, and the ``--quick`` / ``--json`` command line every script accepts.

A script reports :class:`Figure` objects: it prints them all as a table and, given
``--json PATH``, writes them there so ``bench/run_all.py`` can collect the headline ones.
Figures are measurements only; nothing here decides pass or fail.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

from omniq_mp import AsyncOmniQ, Settings

__all__ = [
    "Figure",
    "Timer",
    "fresh_store",
    "load_figures",
    "machine_line",
    "markdown_table",
    "parse_args",
    "percentile",
    "print_figures",
    "report",
    "save_figures",
    "scratch_dir",
    "spread",
]


@dataclass(frozen=True)
class Figure:
    """One measured number.

    :param bench: the script that measured it (``throughput``).
    :param metric: what it is, in words.
    :param value: the number.
    :param unit: its unit (``tasks/s``, ``ms``, ``%``, ``x``).
    :param target: the goal it is compared with, as text ("" if none).
    :param headline: whether ``run_all.py`` puts it in the summary table.
    """

    bench: str
    metric: str
    value: float
    unit: str
    target: str = ""
    headline: bool = False

    def shown(self) -> str:
        """The value with its unit, rounded for reading."""
        gap = "" if self.unit in ("x", "%") else " "
        return f"{format_number(self.value)}{gap}{self.unit}".strip()


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (perf_counter, read once at exit)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self.start


def format_number(value: float) -> str:
    """Thousands separators for big numbers, a few significant digits for small ones."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0-100), interpolating linearly between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> str:
    """``median (min-max)`` of repeated measurements, for the detailed output."""
    if len(values) == 1:
        return format_number(values[0])
    low, high = format_number(min(values)), format_number(max(values))
    return f"{format_number(statistics.median(values))} ({low}-{high})"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with left-aligned, padded columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def figures_table(figures: Sequence[Figure], *, with_bench: bool) -> str:
    """Figures as a Markdown table; ``with_bench`` adds a column naming the script."""
    headers = ["Metric", "Value", "Target"]
    rows = [[f.metric, f.shown(), f.target] for f in figures]
    if with_bench:
        headers = ["Benchmark", *headers]
        rows = [[f.bench, *row] for f, row in zip(figures, rows, strict=True)]
    return markdown_table(headers, rows)


def print_figures(figures: Sequence[Figure], *, with_bench: bool = False) -> None:
    """Print the figures as a Markdown table."""
    print(figures_table(figures, with_bench=with_bench), flush=True)


# -- stores ----------------------------------------------------------------------------------


def env_for(base_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``omniq-mp workers`` (or producer) process a benchmark
    starts on ``base_dir``: none of the caller's OMNIQ_* settings, errors-only logs, this
    folder and the repository importable (the task functions live here); ``extra``
    overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    here = Path(__file__).resolve().parent
    env.update(
        OMNIQ_BASE_DIR=str(base_dir),
        OMNIQ_LOG_LEVEL="ERROR",
        PYTHONPATH=os.pathsep.join([str(here), str(here.parent)]),
    )
    env.update(extra)
    return env


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory (under ``$TMPDIR``), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="omniq-bench-") as path:
        yield Path(path)


@asynccontextmanager
async def fresh_store(**settings: Any) -> AsyncIterator[AsyncOmniQ]:
    """An opened producer (no embedded supervisor) over an empty SQLite store in a scratch
    directory; ``settings`` are :class:`Settings` fields such as ``procs=2``."""
    with scratch_dir() as base_dir:
        q = AsyncOmniQ(Settings(base_dir=base_dir, **settings))
        await q.open()
        try:
            yield q
        finally:
            await q.close()


# -- command line and hand-off to run_all ----------------------------------------------------


def parse_args(description: str | None) -> argparse.Namespace:
    """``--quick`` (small sizes, for CI) and ``--json PATH`` (where to write the figures)."""
    first = (description or "").strip().splitlines()
    parser = argparse.ArgumentParser(description=first[0] if first else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args()


def main_of(measure: Callable[[bool], list[Figure]], description: str | None) -> None:
    """The command line of a benchmark script: measure (``--quick`` or not), then print
    the figures and write them where ``--json`` says."""
    args = parse_args(description)
    report(measure(args.quick), args.json)


def report(figures: Sequence[Figure], json_path: Path | None) -> None:
    """Print every figure; write them to ``json_path`` if given."""
    print()
    print_figures(figures)
    if json_path is not None:
        save_figures(figures, json_path)


def save_figures(figures: Sequence[Figure], path: Path) -> None:
    """Write figures as JSON (read back with :func:`load_figures`)."""
    path.write_text(json.dumps([asdict(f) for f in figures], indent=1))


def load_figures(path: Path) -> list[Figure]:
    """Figures written by :func:`report`."""
    return [Figure(**item) for item in json.loads(path.read_text())]


# -- the machine -----------------------------------------------------------------------------


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo, or what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def filesystem_of(path: str) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts), e.g. ``ext4`` or ``tmpfs``."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    real = os.path.realpath(path)
    for entry in mounts:
        parts = entry.split()
        if len(parts) >= 3 and _is_under(real, parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def _is_under(path: str, mount: str) -> bool:
    return mount == "/" or path == mount or path.startswith(mount.rstrip("/") + "/")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_line() -> str:
    """One line: CPU, cores, OS, Python, SQLite, uvloop, the temp dir's filesystem (it
    decides what an fsync costs) and the load average (other work skews every figure)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tmp = tempfile.gettempdir()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({usable} usable), "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()} ({sys.implementation.name}), "
        f"SQLite {sqlite3.sqlite_version}, uvloop {_version('uvloop')}, "
        f"temp dir {tmp} on {filesystem_of(tmp)}, load average {load}"
    )
