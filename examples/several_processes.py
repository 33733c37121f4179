"""Several processes on one store: a worker server and two producers, all on ./omniq_data.

python examples/several_processes.py

The same thing by hand: `omniq-mp workers --procs 2` in one terminal, and any number of
`python examples/producer.py` in others.
"""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys

from omniq_mp import OmniQ


def produce(name: str) -> None:
    q = OmniQ()  # a producer only: the workers run in another process
    ids = [q.enqueue(lambda who, n: f"{who}:{n * n}", name, n) for n in range(20)]
    results = [q.get_result(task_id, timeout=60) for task_id in ids]
    print(f"{name} got {len(results)} results, last {results[-1]}")
    q.close()


if __name__ == "__main__":
    workers = subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "--log-level", "WARNING", "workers", "--procs", "2"]
    )
    try:
        producers = [
            multiprocessing.Process(target=produce, args=(name,)) for name in ("alice", "bob")
        ]
        for p in producers:
            p.start()
        for p in producers:
            p.join(120)
        assert all(p.exitcode == 0 for p in producers), "a producer failed"
    finally:
        workers.send_signal(signal.SIGTERM)  # graceful: running tasks finish first
        workers.wait(60)
    print(f"workers exited with {workers.returncode}")
