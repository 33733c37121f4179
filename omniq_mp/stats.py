"""Queue, worker and global statistics, read from the store by any process (no server).

Queue figures come from the task store; worker figures from the supervisors' heartbeat
records, which carry each worker process's current task, memory and CPU time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from omniq_mp.storage.base import QueueStats, Storage, WorkerInfo

__all__ = [
    "ChildStatistics",
    "GlobalStatistics",
    "QueueStatistics",
    "WorkerStatistics",
    "all_queue_statistics",
    "global_statistics",
    "queue_statistics",
    "worker_statistics",
]

THROUGHPUT_WINDOW = 60.0  # seconds: "completed in the last minute"


@dataclass(frozen=True, kw_only=True)
class _Counts:
    """``depth`` tasks due now, ``scheduled`` waiting for their eta (retries included),
    ``running``, terminal totals, and ``throughput`` (completed in the last minute)."""

    depth: int
    scheduled: int
    running: int
    completed: int
    failed: int
    cancelled: int
    dead: int
    throughput: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class QueueStatistics(_Counts):
    """One queue's counts."""

    queue: str


@dataclass(frozen=True, kw_only=True)
class GlobalStatistics(_Counts):
    """All queues together, plus the number of live supervisors and worker processes."""

    queues: int
    supervisors: int
    worker_processes: int


@dataclass(frozen=True)
class ChildStatistics:
    """A worker process busy with a task, as of the last heartbeat."""

    pid: int
    task_id: str
    running_for: float
    rss: int
    cpu_seconds: float


@dataclass(frozen=True)
class WorkerStatistics:
    """A live supervisor and its busy worker processes.

    ``health`` is "ok" while all ``procs`` workers are up, "degraded" while some are being
    started again; ``start_failures`` counts the failed starts in a row (0 once one works);
    ``loop_lag`` is the supervisor's worst event-loop lag in seconds between its last two
    heartbeats. A heartbeat from a version that did not report them reads as "ok", 0, 0.0.
    """

    worker_id: str
    hostname: str
    pid: int
    procs: int
    queues: tuple[str, ...]
    uptime: float
    last_heartbeat: float
    active: int
    processed: int
    children: tuple[ChildStatistics, ...]
    health: str = "ok"
    start_failures: int = 0
    loop_lag: float = 0.0

    def health_text(self) -> str:
        """``ok``, or ``degraded`` with the failed starts, for the CLI's displays."""
        if self.health == "ok":
            return "ok"
        return f"{self.health} ({self.start_failures} failed start(s) in a row)"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def _counts(s: QueueStats, throughput: int) -> dict[str, int]:
    return {
        "depth": s.due,
        "scheduled": s.pending - s.due,
        "running": s.running,
        "completed": s.completed,
        "failed": s.failed,
        "cancelled": s.cancelled,
        "dead": s.dead,
        "throughput": throughput,
    }


async def queue_statistics(storage: Storage, queue: str, now: float) -> QueueStatistics:
    """Statistics of one queue."""
    counts = await storage.stats([queue], now)
    done = await storage.completed_since([queue], now - THROUGHPUT_WINDOW)
    return QueueStatistics(queue=queue, **_counts(counts, done))


async def all_queue_statistics(storage: Storage, now: float) -> dict[str, QueueStatistics]:
    """Statistics of every queue that holds tasks, by name."""
    return {q: await queue_statistics(storage, q, now) for q in await storage.queue_names()}


async def worker_statistics(
    storage: Storage, now: float, alive_since: float
) -> list[WorkerStatistics]:
    """Every supervisor with a heartbeat since ``alive_since``."""
    return [_worker_row(w, now) for w in await storage.workers(alive_since)]


def _worker_row(info: WorkerInfo, now: float) -> WorkerStatistics:
    details = info.details
    children = tuple(
        ChildStatistics(
            pid=int(c.get("pid", 0)),
            task_id=str(c.get("task_id", "")),
            running_for=max(0.0, info.heartbeat_at - float(c.get("started_at") or now)),
            rss=int(c.get("rss", 0)),
            cpu_seconds=float(c.get("cpu_seconds", 0.0)),
        )
        for c in details.get("children", [])
    )
    return WorkerStatistics(
        worker_id=info.worker_id,
        hostname=info.hostname,
        pid=info.pid,
        procs=info.procs,
        queues=info.queues,
        uptime=now - info.started_at,
        last_heartbeat=info.heartbeat_at,
        active=int(details.get("active", len(children))),
        processed=int(details.get("processed", 0)),
        children=children,
        health=str(details.get("health", "ok")),
        start_failures=int(details.get("start_failures", 0)),
        loop_lag=float(details.get("loop_lag", 0.0)),
    )


async def global_statistics(storage: Storage, now: float, alive_since: float) -> GlobalStatistics:
    """Totals across queues, and the live supervisors and their processes."""
    done = await storage.completed_since(None, now - THROUGHPUT_WINDOW)
    totals = _counts(await storage.stats(None, now), done)
    workers = await storage.workers(alive_since)
    return GlobalStatistics(
        queues=len(await storage.queue_names()),
        supervisors=len(workers),
        worker_processes=sum(w.procs for w in workers),
        **totals,
    )
