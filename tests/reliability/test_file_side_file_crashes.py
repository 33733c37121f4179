"""Row 24 with a large argument: a producer killed at every write of an enqueue whose
payload goes to a side file (file store). After the next open each task is absent with
no file of its own left behind, or present with its payload whole, and a supervisor runs
what is present with the bytes the producer sent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniq_mp import OmniQ
from omniq_mp.crashpoints import CRASH_EXIT_STATUS, CRASHPOINT_ENV
from omniq_mp.storage.side_files import SIDE_FILE_MIN
from tests.reliability.test_file_store_crashes import child_env, file_settings

pytestmark = [pytest.mark.slow, pytest.mark.process]

PRODUCER = f"""
import hashlib, os, sys
from omniq_mp import OmniQ
q = OmniQ(backend="file", base_dir=sys.argv[1], event_storage_type="none")
data = os.urandom({SIDE_FILE_MIN + 5})
task = q.build(lambda b: hashlib.sha256(b).hexdigest(), data)
print(task.id, hashlib.sha256(data).hexdigest(), flush=True)
q.enqueue_tasks([task])
print("returned", flush=True)
q.close()
"""


def _side_files(base_dir: Path) -> set[str]:
    return {n for n in os.listdir(base_dir / "large") if n.endswith(".payload")}


def test_a_crash_at_any_write_of_a_large_enqueue_leaves_no_orphan_and_loses_no_byte(
    tmp_path: Path,
) -> None:
    base_dir = tmp_path / "store"
    present: dict[str, str] = {}  # task id -> sha256 of its payload
    for point in ("file_before_fsync", "file_before_rename"):
        hit = 0
        while True:  # every hit of the point in one enqueue, then one run that passes it
            hit += 1
            run = subprocess.run(
                [sys.executable, "-c", PRODUCER, str(base_dir)],
                env=child_env(**{CRASHPOINT_ENV: f"{point}:{hit}"}),
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            task_id, digest = run.stdout.splitlines()[0].split()
            if run.returncode == 0:
                assert "returned" in run.stdout
                present[task_id] = digest
                break
            assert run.returncode == CRASH_EXIT_STATUS, (point, hit, run.stderr)
            with OmniQ(file_settings(base_dir)) as q:  # the open sweeps what the crash left
                q.stats()
                task = q.get_task(task_id)
                if task is not None:  # whole: the supervisor below checks its bytes
                    assert len(task.payload) > SIDE_FILE_MIN, (point, hit)
                    present[task_id] = digest
            assert not (base_dir / "large" / ".sweep").exists(), (point, hit)
            assert len(_side_files(base_dir)) == len(present), (point, hit)
        assert hit > 2  # the points were met: the side file and the entry's own writes

    with OmniQ(file_settings(base_dir)) as q:  # a supervisor runs everything present
        for task_id, digest in present.items():
            assert q.get_result(task_id, timeout=60) == digest
