"""The Huey instance compare.py measures, and its tasks (Huey's consumer imports this
module by name). Opening SqliteHuey creates its database, so only Huey's runs import it.

The database path comes from ``BENCH_HUEY_DB`` so the consumer subprocess and the
benchmark open the same file.
"""

from __future__ import annotations

import os

from anchor_tasks import burn, noop
from huey import SqliteHuey

huey = SqliteHuey(
    "bench",
    filename=os.environ.get("BENCH_HUEY_DB", "/tmp/omniq-bench-huey.db"),
    fsync=True,  # synchronous=FULL, the same durability as omniq_mp's default
    journal_mode="wal",
)

huey_noop = huey.task()(noop)
huey_burn = huey.task()(burn)
