"""Prometheus metrics for ops: ``omniq-mp workers --metrics-port 9100``.

Fed by the supervisor's events (a listener, so the dispatch path gains one dict lookup)
and by a periodic refresh of queue depths. Served on loopback by default.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from omniq_mp.eventstore import Event, EventType

if TYPE_CHECKING:
    from omniq_mp.worker import AsyncWorkerPool

__all__ = ["Metrics"]

_OUTCOMES = {
    EventType.COMPLETED: "completed",
    EventType.FAILED: "failed",
    EventType.TIMED_OUT: "timed_out",
    EventType.CANCELLED: "cancelled",
    EventType.DEAD: "dead",
}


class Metrics:
    """The supervisor's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks = Counter(
            "omniq_tasks", "Attempts settled, by queue and outcome.", ["queue", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "omniq_task_duration_seconds", "Attempt wall time, by queue.", ["queue"],
            registry=self.registry,
        )  # fmt: skip
        self.depth = Gauge(
            "omniq_queue_depth", "Tasks due and waiting, by queue.", ["queue"],
            registry=self.registry,
        )  # fmt: skip
        self.busy = Gauge("omniq_workers_busy", "Worker processes running a task.",
                          registry=self.registry)  # fmt: skip
        self.alive = Gauge("omniq_workers_alive", "Worker processes alive.",
                           registry=self.registry)  # fmt: skip
        self.restarts = Counter("omniq_worker_restarts", "Worker processes replaced.",
                                registry=self.registry)  # fmt: skip
        self.kills = Counter("omniq_task_kills", "Tasks killed, by reason.", ["reason"],
                             registry=self.registry)  # fmt: skip

    def on_event(self, event: Event) -> None:
        """Count one supervisor event."""
        outcome = _OUTCOMES.get(event.event_type)
        if outcome is None:
            if event.event_type is EventType.WORKER_HEARTBEAT:
                self.busy.set(event.details.get("active", 0))
            return
        queue = event.queue or "default"
        self.tasks.labels(queue, outcome).inc()
        if event.duration is not None:
            self.duration.labels(queue).observe(event.duration)
        if event.event_type is EventType.TIMED_OUT:
            self.kills.labels("timeout").inc()
        elif event.event_type is EventType.CANCELLED and event.duration is not None:
            self.kills.labels("cancel").inc()  # a cancel that killed a running process
        error = str(event.details.get("error", ""))
        if "MemoryLimitExceeded" in error:
            self.kills.labels("memory").inc()

    def attach(self, workers: AsyncWorkerPool) -> None:
        """Listen to a supervisor's events and its pool's replacements."""
        workers.events.listeners.append(self.on_event)
        self.alive.set(workers.pool.size)

        def replaced(old_pid: int, new_pid: int) -> None:
            self.restarts.inc()

        workers.pool.on_respawn = replaced

    async def refresh_depths(self, workers: AsyncWorkerPool, period: float = 5.0) -> None:
        """Keep the queue-depth gauges current (runs until cancelled)."""
        while True:
            for queue in workers.settings.queues:
                with contextlib.suppress(Exception):
                    stats = await workers.queue.stats([queue])
                    self.depth.labels(queue).set(stats.due)
            self.alive.set(len(workers.pool.pids()))
            await asyncio.sleep(period)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` over HTTP from a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
