"""Row 24: a crash in the middle of a file-store write (between writing a temp file and
its fsync, or just before a rename into place), at every position a small enqueue
reaches and inside a supervisor's claim: each entry is then absent or whole, never half
visible; temp files are cleared at the next open; everything present runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings, TaskStatus
from omniq_mp.crashpoints import CRASH_EXIT_STATUS, CRASHPOINT_ENV

pytestmark = [pytest.mark.slow, pytest.mark.process]

REPO = Path(__file__).resolve().parents[2]
BATCH = 4
PRODUCER = f"""
import json, sys
from omniq_mp import OmniQ
q = OmniQ(backend="file", base_dir=sys.argv[1], event_storage_type="none")
tasks = [q.build(pow, 2, i) for i in range({BATCH})]
print(json.dumps([t.id for t in tasks]), flush=True)
q.enqueue_tasks(tasks)
print("returned", flush=True)
q.close()
"""
# Hits of each point in one enqueue of BATCH tasks: a temp file per entry (fsync), and
# a rename per entry and per pending link.
POSITIONS = {"file_before_fsync": BATCH, "file_before_rename": 2 * BATCH}


def child_env(**extra: str) -> dict[str, str]:
    """This environment without OMNIQ_ settings, this checkout importable, ``extra`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# The crashed supervisor's claims are runnable again once their lease lapses: a short one
# spares the test the default's 30 s wait, which is not what it checks.
LEASE_TTL = 2.0


def file_settings(base_dir: Path) -> Settings:
    """A file store in ``base_dir`` with one worker, no events and a short lease."""
    return Settings(
        backend="file", base_dir=base_dir, event_storage_type="none", procs=1, lease_ttl=LEASE_TTL
    )


def test_a_crash_inside_a_file_store_write_leaves_each_entry_absent_or_whole(
    tmp_path: Path,
) -> None:
    base_dir = tmp_path / "store"
    batches: list[list[str]] = []
    for point, positions in POSITIONS.items():
        for hit in range(1, positions + 1):
            done = subprocess.run(
                [sys.executable, "-c", PRODUCER, str(base_dir)],
                env=child_env(**{CRASHPOINT_ENV: f"{point}:{hit}"}),
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            lines = done.stdout.splitlines()
            assert done.returncode == CRASH_EXIT_STATUS, (point, hit, done.stderr)
            assert "returned" not in lines  # the enqueue never reported success
            batches.append(json.loads(lines[0]))
            q = OmniQ(file_settings(base_dir))  # opening clears what the crash left half-done
            try:
                for task_id in batches[-1]:
                    task = q.get_task(task_id)  # a half-written entry would not decode
                    assert task is None or task.status is TaskStatus.PENDING, (point, hit)
            finally:
                q.close()
            assert not list(base_dir.rglob("*.tmp")), (point, hit)

    # A supervisor crashing inside one of its own writes (a claim, a heartbeat) loses
    # nothing either.
    crashed = subprocess.run(
        [sys.executable, "-m", "omniq_mp", "workers", "--burst", "--procs", "1"],
        env=child_env(OMNIQ_BACKEND="file", OMNIQ_BASE_DIR=str(base_dir),
                 OMNIQ_EVENT_STORAGE_TYPE="none", OMNIQ_LEASE_TTL=str(LEASE_TTL),
                 **{CRASHPOINT_ENV: "file_before_rename:3"}),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert crashed.returncode == CRASH_EXIT_STATUS, crashed.stderr

    with OmniQ(file_settings(base_dir)) as q:  # a supervisor that runs everything present
        present = 0
        for ids in batches:
            for i, task_id in enumerate(ids):
                if q.get_task(task_id) is not None:
                    present += 1
                    assert q.get_result(task_id, timeout=60) == 2**i
        assert present > 0
        assert q.stats().pending == 0
