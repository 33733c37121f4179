"""Row 24 with a real ENOSPC: the file store's folder is a 4 MiB tmpfs that a ballast file
fills (tests/reliability/mounts.py), so its writes run out of room in the middle of an
entry's temp file, as on a full disk.

* producer side: an enqueue of four entries of about 400 KiB each, with room left for one
  and a half: the kernel refuses the second entry's temp file halfway. The enqueue raises
  StorageFullError and stores nothing of its batch; what was stored before stays whole; the
  half-written temp file is gone after the next open; with space back, the same enqueue
  succeeds and a supervisor runs everything exactly once;
* supervisor side: a task whose entry is about 400 KiB finishes with room left for half
  of it, so storing its outcome (a settle, which rewrites the entry) meets ENOSPC halfway
  through the temp file. The supervisor holds the outcome and retries, the entry stays
  whole; once space returns the outcome is stored as the result of the task's one attempt.

Both skip, saying why, where mounting a tmpfs is not permitted (root only).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from omniq_mp import StorageFullError, TaskStatus
from omniq_mp.models import Task
from omniq_mp.storage.file_codec import encode_task, entry_name
from tests.reliability import ledger
from tests.reliability.harness import Rig, subreaper
from tests.reliability.mounts import fill, mount_problem, tmpfs
from tests.reliability.test_fault_matrix import assert_clean
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.process]

BEFORE = 2  # entries stored before the disk fills
BATCH = 4  # entries of the enqueue that runs out of room
PAYLOAD = 300 * 1024  # bytes of argument per task: about 400 KiB of entry (base64 in JSON)


# -- task bodies (run in the supervisors' workers) ------------------------------------------


def carry(key: str, payload: bytes, digest: str) -> str:
    """A ledger task with a large argument: fails unless ``payload`` arrived intact."""
    with ledger._attempt(key) as n:
        if hashlib.sha256(payload).hexdigest() != digest:
            raise ValueError(f"{key}: its payload was damaged in the store")
        return ledger._token(key, n)


def gated(key: str, gate: str, bulk: bytes = b"") -> str:
    """A ledger task that runs until the file ``gate`` exists (at most 60 s); ``bulk``
    only makes its entry in the store large."""
    del bulk
    with ledger._attempt(key) as n:
        wait_for(lambda: os.path.exists(gate), 60, f"the gate {gate}")
        return ledger._token(key, n)


# -- setup -----------------------------------------------------------------------------------


@pytest.fixture
def file_rig(tmp_path: Path) -> Iterator[Rig]:
    """A rig on the file store whose store folder is a 4 MiB tmpfs; skipped, saying why,
    where mounting is not permitted. The rig is closed before the tmpfs is unmounted."""
    if (problem := mount_problem()) is not None:
        pytest.skip(problem)
    with tmpfs(tmp_path / "rig" / "store", "4m"), subreaper():
        setup = Rig(tmp_path / "rig", backend="file")
        try:
            yield setup
        finally:
            setup.close()


def free_bytes(folder: Path) -> int:
    """Room left for an unprivileged writer on ``folder``'s file system."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def make_room(ballast: Path, size: int) -> None:
    """Give back about ``size`` bytes (whole pages) of a full file system's ballast."""
    os.truncate(ballast, ballast.stat().st_size - size)


def size(path: Path) -> int:
    """The size of the file at ``path``; 0 when there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def big(rig: Rig, key: str) -> tuple[str, Task]:
    """A ``carry`` task with PAYLOAD random bytes of argument."""
    payload = os.urandom(PAYLOAD)
    return key, rig.producer.build(carry, key, payload, hashlib.sha256(payload).hexdigest())


# -- producer side ---------------------------------------------------------------------------


def test_an_enqueue_that_runs_out_of_room_midway_stores_none_of_its_batch(file_rig: Rig) -> None:
    """ENOSPC in the middle of one entry's temp file, after earlier entries of the batch
    were staged whole: StorageFullError, none of the batch visible, earlier entries intact,
    no temp file after the next open; with space back the same enqueue succeeds and every
    task runs exactly once."""
    rig = file_rig
    p = rig.producer
    q = p.queue()
    before = [big(rig, f"before{i}") for i in range(BEFORE)]
    p.enqueue(before)
    batch = [big(rig, f"batch{i}") for i in range(BATCH)]
    entry = len(encode_task(batch[0][1], 0))  # the bytes of one staged entry
    ballast = fill(rig.base_dir)
    make_room(ballast, entry + entry // 2)
    room = free_bytes(rig.base_dir)
    assert entry < room < 2 * entry, (entry, room)  # the second entry cannot fit

    with pytest.raises(StorageFullError, match="no room to write"):
        q.enqueue_tasks([task for _, task in batch])

    # Where the kernel stopped it: inside a later entry's temp file, half written.
    temps = list(rig.base_dir.rglob("*.tmp"))
    assert len(temps) == 1, f"expected the one half-written temp file: {temps}"
    [partial] = temps
    index = next(i for i, (_, t) in enumerate(batch) if entry_name(t.id) in partial.name)
    assert index >= 1, f"the first entry of the batch did not fit: {partial.name}"
    assert 0 < partial.stat().st_size < entry, partial.stat().st_size
    # Seen through the producer's open store (no reopen, so nothing was tidied yet):
    # nothing of the batch, the earlier entries whole and PENDING.
    shown = [task.id for _, task in batch if q.get_task(task.id) is not None]
    assert not shown, f"entries of the refused batch show: {shown}"
    assert q.stats().pending == BEFORE
    for _, task in before:
        stored = q.get_task(task.id)
        assert stored is not None, f"{task.id}: stored before the fault, now gone"
        assert stored.status is TaskStatus.PENDING, (task.id, stored.status)
        assert stored.payload == task.payload, f"{task.id}: its payload changed"

    assert not rig.store.rows([t.id for _, t in batch])  # the next open ...
    assert not list(rig.base_dir.rglob("*.tmp"))  # ... removed the half-written temp file

    ballast.unlink()
    assert p.enqueue(batch) == [task.id for _, task in batch]
    assert rig.supervisor("--burst", wait=False).wait(120) == 0
    rows = rig.store.rows()
    assert sorted(rows) == sorted(p.committed), "the store holds other tasks than enqueued"
    unfinished = {k: (r.status, r.error) for k, r in rows.items() if r.status != "COMPLETED"}
    assert not unfinished, unfinished
    attempts = ledger.parse(rig.ledger).attempts
    assert {k: len(a) for k, a in attempts.items()} == {k: 1 for k, _ in before + batch}
    assert_clean(rig)


# -- supervisor side -------------------------------------------------------------------------


def test_an_outcome_that_meets_a_full_file_store_is_held_and_stored_later(file_rig: Rig) -> None:
    """A task with a large entry finishes while the store has room for half of it: storing
    its outcome (a settle, which rewrites the entry) runs out of room halfway through the
    temp file. The supervisor says StorageFullError, the store still shows the task RUNNING
    with its entry whole; once the ballast goes the outcome is stored as the result of the
    task's one attempt, and the supervisor stays up."""
    rig = file_rig
    p = rig.producer
    gate = rig.root / "gate"  # outside the tmpfs
    sup = rig.supervisor()
    task = p.build(gated, "held", str(gate), os.urandom(PAYLOAD))
    [task_id] = p.enqueue([("held", task)])
    entry = len(encode_task(task, 0))
    rig.wait_started(1)
    ballast = fill(rig.base_dir)
    make_room(ballast, entry // 2)
    assert free_bytes(rig.base_dir) < entry
    gate.touch()  # the task ends now, its outcome cannot be stored whole

    def refusals() -> list[str]:
        return [line for line in sup.stderr().splitlines() if "cannot record outcomes" in line]

    wait_for(lambda: len(refusals()) >= 2, 30, "the outcome refused, then refused again")
    assert all("no room to write" in line for line in refusals()), refusals()
    temp = rig.base_dir / "running" / f"{entry_name(task_id)}.json.tmp"
    wait_for(lambda: 0 < size(temp) < entry, 10, "the entry's temp file half written")
    [attempt] = ledger.parse(rig.ledger).attempts["held"]
    assert attempt.end is not None, "the task had not finished"
    row = rig.store.row(task_id)  # reads the entry in place: it is whole, and untouched
    assert row is not None and row.status == "RUNNING", row

    ballast.unlink()
    wait_for(
        lambda: (r := rig.store.row(task_id)) is not None and r.status == "COMPLETED",
        30,
        "the held outcome stored once space returned",
    )
    assert sup.running(), f"the supervisor died of a full disk:\n{sup.stderr()}"
    assert len(ledger.parse(rig.ledger).attempts["held"]) == 1, "the task ran again"
    assert_clean(rig)  # I5: the stored result is the one that attempt returned
