"""Fault-matrix rows 18 (disk full), 19 (read-only database) and 21 (WAL growth from a long
reader) for the SQLite store, with real faults (tests/reliability/mounts.py):

* row 18: the store folder is a 4 MiB tmpfs; a ballast file fills it to the last block,
  so SQLite's writes get ENOSPC from the kernel (``SQLITE_FULL``); deleting it gives the
  space back;
* row 19 at startup: the tmpfs remounted read-only under a closed store;
* row 19 at runtime: the store on a loop-mounted ext4 image with ``errors=remount-ro``,
  made read-only by a file-system error (``trigger_fs_error``) under the running
  supervisor, as a failing disk does. (``mount -o remount,ro`` cannot do it: Linux
  refuses it while a file is open for writing, and SQLite's are);
* row 21: an external connection holding a read transaction while thousands of tasks
  complete, on the ordinary disk.

The mount tests skip, saying why, without root. Figures (buffered outcomes, times to
recover, WAL sizes) are printed in the "reliability figures" summary.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings
from omniq_mp.errors import StorageFullError, StorageReadOnlyError
from tests.malformed.objects import Run, runtime_error
from tests.reliability import ledger
from tests.reliability.harness import LEASE_TTL, PROCS, Rig, wait_until
from tests.reliability.mounts import Ext4, fill, remount
from tests.reliability.test_fault_matrix import TERMINAL, assert_clean

pytestmark = [pytest.mark.slow, pytest.mark.process]

PREFETCH = 4  # a small claim limit, so the bound on held outcomes is tight and visible
WAL_LIMIT = 64 * 2**20  # reliability.md row 21 (the store's journal_size_limit)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: size and mtime (ns), to show nothing was touched."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def ended(rig: Rig, after_ns: int) -> dict[str, int]:
    """Key -> attempt of the attempts that wrote their ``end`` line after ``after_ns``."""
    return {
        a.key: a.n for a in ledger.parse(rig.ledger).all() if a.end is not None and a.end > after_ns
    }


# -- row 18: disk full ------------------------------------------------------------------------


def test_enqueue_on_a_full_store_raises_storage_full_and_stores_nothing(tmpfs_rig: Rig) -> None:
    """Row 18, producer side: with the store's file system full, ``enqueue`` raises
    StorageFullError and no row of the batch exists; the CLI says so in one line and exits
    1; once space is back the same store takes enqueues and the tasks run."""
    rig = tmpfs_rig
    p = rig.producer
    p.add(ledger.sleep, "before", 0.01)
    ballast = fill(rig.base_dir)
    batch = [(f"full{i}", p.build(ledger.sleep, f"full{i}", 0.01, "x" * 8192)) for i in range(20)]
    with pytest.raises(StorageFullError, match="no room"):
        p.enqueue(batch)
    assert not rig.store.rows([t.id for _, t in batch]), "a refused enqueue left rows"
    # The CLI's producer opens its event store first: whichever write meets the full
    # disk first, the user gets one line saying so.
    line = runtime_error(Run(rig.base_dir)("enqueue", "math.sqrt", "4", timeout=30))
    rig.figures.count("row 18: enqueues refused while full", 2)
    assert "no room" in line or "disk is full" in line, line
    ballast.unlink()
    p.add(ledger.sleep, "after", 0.01)
    assert rig.supervisor("--burst", wait=False).wait(60) == 0
    assert_clean(rig)


def test_a_supervisor_whose_store_fills_holds_its_outcomes_and_stores_them_later(
    tmpfs_rig: Rig,
) -> None:
    """Row 18, supervisor side: the store fills while both children work and tasks are
    prefetched. The supervisor claims nothing new (every start during the fault is of a
    task claimed before it), holds the outcomes that finish meanwhile (at most procs +
    prefetch: the claim limit) and retries storing them with backoff, also past the
    point where its leases could no longer be renewed; once the ballast goes, every held
    outcome is stored as the result of its one attempt (none re-run), PRAGMA
    integrity_check is ok and I1-I7 hold."""
    rig = tmpfs_rig
    p = rig.producer
    sup = rig.supervisor(env={"OMNIQ_PREFETCH": str(PREFETCH)})
    p.enqueue([(f"q{i:02d}", p.build(ledger.sleep, f"q{i:02d}", 0.25)) for i in range(24)])
    rig.wait_started(PROCS)
    ballast = fill(rig.base_dir)
    full_at = time.monotonic_ns()
    # The store cannot change while full: what it says now is what was claimed before.
    held = {r.id for r in rig.store.rows().values() if r.status == "RUNNING"}
    assert 0 < len(held) <= PROCS + PREFETCH, held
    # The fault lasts past the lease (so renewals fail past the 70% mark) and until the
    # supervisor holds finished outcomes it could not store.
    wait_until(
        lambda: (
            time.monotonic_ns() - full_at > 1.25 * LEASE_TTL * 1e9
            and len(ended(rig, full_at)) >= PROCS
            and sup.stderr().count("cannot record outcomes") >= 3
        ),
        30,
        "outcomes held while the store is full",
    )
    buffered = ended(rig, full_at)
    ids = {key: task_id for task_id, key in p.committed.items()}
    started = {a.key for a in ledger.parse(rig.ledger).all() if a.start > full_at}
    assert {ids[k] for k in started} <= held, "a task claimed during the fault started"
    ballast.unlink()
    back = time.monotonic()
    wait_until(
        lambda: all(
            r.status in TERMINAL for r in rig.store.rows([ids[k] for k in buffered]).values()
        ),
        10,
        "every held outcome stored after the space came back",
    )
    rig.figures.sample("row 18: space back -> held outcomes stored", time.monotonic() - back)
    rig.figures.count("row 18: outcomes held while full", len(buffered))
    rig.drain(60)
    assert sup.running(), f"the supervisor died of a full disk:\n{sup.stderr()}"
    assert_clean(rig)
    attempts = ledger.parse(rig.ledger).attempts
    rows = rig.store.rows([ids[k] for k in buffered])
    for key, n in buffered.items():
        assert len(attempts[key]) == 1 and n == 1, f"{key}: its held outcome was not stored"
        assert rows[ids[key]].status == "COMPLETED", rows[ids[key]]


# -- row 19: read-only database ----------------------------------------------------------------


def test_a_read_only_store_is_refused_at_start_in_one_line_and_nothing_is_created(
    tmpfs_rig: Rig,
) -> None:
    """Row 19 at startup, on a file system mounted read-only (as root, chmod would not
    stop a write; the mount does): ``omniq-mp workers`` on an existing store, on an empty
    folder and on a missing one exits 1 with one line, no traceback, within 1 s, and
    nothing on the mount changes; ``enqueue`` raises StorageReadOnlyError and the CLI's
    ``enqueue`` is one line too. Writable again, the store runs its tasks."""
    rig = tmpfs_rig
    p = rig.producer
    p.add(ledger.sleep, "queued", 0.01)
    (rig.base_dir / "empty").mkdir()
    p.close()  # nothing may be open for writing, or the kernel refuses the remount
    rig.store.close()
    remount(rig.base_dir, read_only=True)
    try:
        before = listing(rig.base_dir)
        for where in (rig.base_dir, rig.base_dir / "empty", rig.base_dir / "missing" / "x"):
            run = Run(where)
            line = runtime_error(run("workers", "--procs", "1", timeout=30))
            rig.figures.sample("row 19: read-only at start -> exit", run.took)
            assert "read-only" in line.lower() or "unable to open" in line, line
            assert run.took <= 1.0, f"{where}: took {run.took:.2f}s"
        runtime_error(Run(rig.base_dir)("enqueue", "math.sqrt", "4", timeout=30))
        q = OmniQ(Settings(base_dir=rig.base_dir, event_storage_type="none"))
        try:  # said by type, so a caller can tell it from a damaged store
            with pytest.raises(StorageReadOnlyError):
                q.enqueue("math.sqrt", 4)
        finally:
            q.close()
        assert listing(rig.base_dir) == before, "a refused start changed the store"
    finally:
        remount(rig.base_dir, read_only=False)
    assert rig.supervisor("--burst", wait=False).wait(60) == 0
    assert_clean(rig)


READ_ONLY_TIMEOUT = 1.0


def test_a_store_turning_read_only_under_a_supervisor_stops_it_before_its_leases_lapse(
    ext4_rig: tuple[Rig, Ext4],
) -> None:
    """Row 19 at runtime: the store's file system turns read-only (an ext4 error) while
    both children run long tasks and short ones finish. The supervisor holds what it
    cannot store, stops its children before the leases it last wrote end, and after
    ``read_only_timeout`` exits 1 with an error line, no traceback, nothing of it left
    running. Repaired and mounted again, the next supervisor re-runs what was not
    stored: nothing is lost (I1-I7)."""
    rig, fs = ext4_rig
    p = rig.producer
    sup = rig.supervisor(
        env={"OMNIQ_READ_ONLY_TIMEOUT": str(READ_ONLY_TIMEOUT), "OMNIQ_PREFETCH": "2"}
    )
    p.enqueue([(f"long{i}", p.build(ledger.sleep, f"long{i}", 6.0, 0.1)) for i in range(2)])
    p.enqueue([(f"short{i}", p.build(ledger.sleep, f"short{i}", 0.2)) for i in range(6)])
    running = rig.wait_started(PROCS, lambda k: k.startswith("long"))
    rig.store.rows()  # our view's connection is opened while the store is writable
    tree = sup.tree()
    fs.fail()
    fault = rig.faults.add("store read-only", sup.name)
    assert fs.read_only()
    # Nothing can renew now: the lease ends in the store are final.
    offset = time.monotonic() - time.time()
    lease_end = {r.id: (r.lease_until or 0) + offset for r in rig.store.rows().values()}
    code = sup.wait(READ_ONLY_TIMEOUT + 3 * LEASE_TTL + 10)
    rig.figures.sample("row 19: read-only -> supervisor exited", time.monotonic() - fault.at / 1e9)
    err = sup.stderr()
    assert code == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "read-only" in last, last
    rig.expect_gone(tree, "the read-only supervisor's processes after it exited")
    rig.watch.sync()
    ids = {key: task_id for task_id, key in p.committed.items()}
    attempts = ledger.parse(rig.ledger).attempts
    for rec in running:
        first = attempts[rec.key][0]
        assert first.end is None and first.dead_by is not None, f"{rec.key} was not stopped"
        margin = lease_end[ids[rec.key]] - first.dead_by / 1e9
        rig.figures.sample("row 19: child stopped before its lease end, by", margin)
        assert margin > 0, f"{rec.key}: child outlived its lease by {-margin:.3f}s"
    p.close()
    rig.store.close()
    fs.repair()
    fault.until = time.monotonic_ns()
    rig.supervisor(name="after-repair")
    rig.drain(60)
    assert_clean(rig)


# -- row 21: WAL growth from a long reader -----------------------------------------------------

WAL_TASKS = 4000
RESULT_BYTES = 16384  # each result adds pages to the WAL: thousands make it grow past 64 MiB


def wal_size(rig: Rig) -> int:
    """The WAL file's size in bytes (0 when absent)."""
    wal = rig.base_dir / "omniq.db-wal"
    return wal.stat().st_size if wal.exists() else 0


def test_a_long_reader_lets_the_wal_grow_and_it_shrinks_once_the_reader_leaves(
    rig: Rig,
) -> None:
    """Row 21: an external connection holds a read transaction while 4,000 tasks complete
    (their results grow the WAL well past 64 MiB, since nothing can be checkpointed past
    the reader's snapshot). After it leaves, the supervisor's own commits let SQLite's
    automatic checkpoint run and journal_size_limit cut the WAL back to at most 64 MiB.
    And the supervisor never pins the WAL itself: while more tasks complete, a passive
    checkpoint from outside finds frames held back by a reader for at most short spells."""
    p = rig.producer
    rig.supervisor()
    q = p.queue()
    db = rig.base_dir / "omniq.db"
    p.add(ledger.sleep, "first", 0.01)  # the store exists
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tasks").fetchone()  # the snapshot is now held
    ids: list[str] = []
    for start in range(0, WAL_TASKS, 500):
        batch = [(f"wal{i}", q.build(os.urandom, RESULT_BYTES)) for i in range(start, start + 500)]
        ids += p.enqueue(batch)
    rig.drain(120)
    peak = wal_size(rig)
    rig.figures.count("row 21: WAL with the reader in, MiB", peak // 2**20)
    assert peak > WAL_LIMIT, f"the WAL only reached {peak / 2**20:.1f} MiB: no fault injected"
    reader.execute("ROLLBACK")
    reader.close()
    left = time.monotonic()
    wait_until(lambda: wal_size(rig) <= WAL_LIMIT, 30, "the WAL back under 64 MiB")
    rig.figures.sample("row 21: reader left -> WAL <= 64 MiB", time.monotonic() - left)
    rig.figures.count("row 21: WAL after the reader left, MiB", wal_size(rig) // 2**20)

    more = p.enqueue([(f"more{i}", q.build(os.urandom, 1024)) for i in range(1000)])
    probe = sqlite3.connect(db, isolation_level=None)
    pinned_since: float | None = None
    longest = 0.0

    def watch() -> bool:
        nonlocal pinned_since, longest
        busy, log, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        now = time.monotonic()
        if not busy and done < log:  # frames a reader's snapshot keeps from the database
            pinned_since = now if pinned_since is None else pinned_since
            longest = max(longest, now - pinned_since)
        else:
            pinned_since = None
        rows = rig.store.rows(more)
        return all(r.status in TERMINAL for r in rows.values())

    try:
        wait_until(watch, 60, "1,000 more tasks complete")
    finally:
        probe.close()
    rig.figures.sample("row 21: longest WAL pin while the supervisor works", longest)
    assert longest < 1.0, f"something held a read transaction for {longest:.2f}s"
    assert_clean(rig)
