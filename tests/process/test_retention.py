"""Finished tasks expire: the store does not grow without bound under a steady load."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings
from tests.process import tasks
from tests.waiting import wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow]


def test_expired_results_are_purged_so_the_database_stops_growing(tmp_path: Path) -> None:
    settings = Settings(base_dir=tmp_path, procs=2, result_ttl=0.3, purge_interval=0.2)
    db = settings.sqlite_path
    sizes = []
    with OmniQ(settings) as q:
        for _ in range(6):
            q.enqueue_tasks([q.build(tasks.blob_kib, 16) for _ in range(300)])
            wait_for(lambda: q.stats().unfinished == 0, 60, "the round to finish")
            wait_for(lambda: q.stats().completed == 0, 10, "expired results to be purged")
            sizes.append(db.stat().st_size)
    # Each round writes ~5 MiB of results; freed pages are reused, so after the first
    # rounds the file stays the same size instead of growing by ~5 MiB a round.
    assert sizes[-1] <= sizes[1] * 1.2, sizes
    assert sizes[-1] < 6 * 300 * 16 * 1024, sizes
