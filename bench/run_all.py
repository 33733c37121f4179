"""Run every benchmark and print one Markdown table of the headline figures.

Each script runs in its own subprocess (a fresh interpreter, so no state leaks from one
measurement into the next) with ``--json`` pointing at a temporary file; its detailed
output streams through. The summary table and a line describing the machine come last,
ready to paste into the README. The exit status is non-zero only if a script crashed:
figures are never judged here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _common import (
    Figure,
    load_figures,
    machine_line,
    parse_args,
    print_figures,
    save_figures,
    scratch_dir,
)

BENCHMARKS = (
    "throughput",
    "cpu_bound",
    "timeout_kill",
    "scale_out",
    "shared_sqlite",
    "backlog",
    "enqueue_under_load",
    "idle_trace",
    "eta_lateness",
    "large_payload",
)
HERE = Path(__file__).resolve().parent


def run_script(name: str, quick: bool, out: Path) -> list[Figure] | None:
    """Run ``bench/<name>.py``; its figures, or None if it failed."""
    print(f"\n## {name}{' (quick)' if quick else ''}\n", flush=True)
    command = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)]
    if quick:
        command.append("--quick")
    status = subprocess.run(command, check=False).returncode
    if status != 0 or not out.exists():
        print(f"{name} failed with exit status {status}", file=sys.stderr)
        return None
    return load_figures(out)


def main() -> None:
    args = parse_args(__doc__)
    headlines: list[Figure] = []
    failed: list[str] = []
    with scratch_dir() as tmp:
        for name in BENCHMARKS:
            figures = run_script(name, args.quick, tmp / f"{name}.json")
            if figures is None:
                failed.append(name)
            else:
                headlines += [f for f in figures if f.headline]
    print(f"\n## Summary{' (quick mode: small sizes, not representative)' if args.quick else ''}\n")
    print_figures(headlines, with_bench=True)
    print(f"\nMachine: {machine_line()}")
    if args.json is not None:
        save_figures(headlines, args.json)
    if failed:
        print(f"\nFailed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
