"""Enqueue while the workers run flat out (fault matrix row 32).

``omniq-mp workers --procs 2`` is kept busy with CPU-bound tasks of 5 s, while this
process enqueues no-op tasks one call at a time at 200 a second for 60 s (5 s with
``--quick``), each a fully synced commit. Printed: how many enqueues succeeded (all must),
their latency p50 / p99 / max, the time until every no-op had run once the CPU tasks
were done (they start as the workers free up), and the supervisor's worst event-loop lag
while the producer ran, from its heartbeats (each carries the worst lag since the one
before, so reading them all covers the whole run).
"""

from __future__ import annotations

import subprocess
import sys
import time

from _common import Figure, env_for, main_of, percentile, scratch_dir
from anchor_tasks import burn, noop

from omniq_mp import OmniQ, Settings
from omniq_mp.worker import HEARTBEAT_INTERVAL

BENCH = "enqueue_under_load"
RATE = 200  # enqueues per second
BURN = 5.0  # seconds of CPU per busy task


def measure(quick: bool) -> list[Figure]:
    seconds = 5 if quick else 60  # quick: one busy task per worker, for CI to run it
    with scratch_dir() as base_dir:
        q = OmniQ(Settings(base_dir=base_dir, event_storage_type="none"))
        busy = [q.enqueue(burn, BURN) for _ in range(2 * int(seconds / BURN))]
        env = env_for(base_dir, OMNIQ_EVENT_STORAGE_TYPE="none")
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniq_mp", "workers", "--procs", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while q.stats().running < 2:  # both workers on a CPU task
                time.sleep(0.05)
            latencies, failures, ids = [], 0, []
            lags: dict[float, float] = {}  # heartbeat time -> its loop lag (s), one per beat
            began, began_wall = time.monotonic(), time.time()
            for i in range(RATE * seconds):
                if i % RATE == 0:  # once a second, between two timed enqueues
                    lags.update(_heartbeat_lags(q, began_wall))
                time.sleep(max(0.0, began + i / RATE - time.monotonic()))
                t0 = time.perf_counter()
                try:
                    ids.append(q.enqueue(noop))
                except Exception:
                    failures += 1
                latencies.append((time.perf_counter() - t0) * 1000)
            _wait_for_a_heartbeat_after(q, time.time(), lags, began_wall)
            for task_id in busy + ids:
                q.get_result(task_id, timeout=300)
            finished = time.monotonic() - began
        finally:
            proc.terminate()
            proc.wait(30)
            q.close()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    lag = max(lags.values(), default=0.0) * 1000
    print(f"{len(ids):,} of {RATE * seconds:,} enqueues stored ({failures} failed) while 2 "
          f"workers burned CPU: latency p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {max(latencies):.1f} ms; supervisor loop lag max {lag:.0f} ms over "
          f"{len(lags)} heartbeats; all done {finished:.1f} s after the start")  # fmt: skip
    return [
        Figure(BENCH, "enqueues stored", len(ids), "tasks"),
        Figure(BENCH, "enqueues failed", failures, "tasks"),
        Figure(BENCH, "enqueue p50 under full load", p50, "ms"),
        Figure(BENCH, "enqueue p99 under full load", p99, "ms", headline=True),
        Figure(BENCH, "supervisor loop lag max under full load", lag, "ms"),
    ]


def _wait_for_a_heartbeat_after(
    q: OmniQ, ended: float, lags: dict[float, float], since: float
) -> None:
    """Add heartbeats to ``lags`` until one taken after ``ended`` (wall clock) is in: it
    covers the producer's last seconds, which the beat read before it does not."""
    deadline = time.monotonic() + 3 * HEARTBEAT_INTERVAL
    while not any(t > ended for t in lags) and time.monotonic() < deadline:
        time.sleep(0.1)
        lags.update(_heartbeat_lags(q, since))


def _heartbeat_lags(q: OmniQ, since: float) -> dict[float, float]:
    """The supervisor's last heartbeat if taken after ``since`` (wall clock), as {its time:
    the worst loop lag it reports}; earlier ones cover the supervisor's start-up."""
    return {w.last_heartbeat: w.loop_lag for w in q.get_worker_stats() if w.last_heartbeat > since}


if __name__ == "__main__":
    main_of(measure, __doc__)
