"""The ``rig`` fixture (tests/reliability/harness.py ``Rig``) and the figures summary.

Every figure a test records (latency samples, counts) is merged into one session-wide
collection, written to ``<pytest basetemp>/reliability_figures.json`` and printed in the
terminal summary, so it shows without ``-s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.reliability.harness import Figures, Rig, subreaper, write_json
from tests.reliability.mounts import Ext4, ext4_image, mount_problem, tmpfs

FIGURES = Figures()
_FIGURES_FILE: list[Path] = []


@pytest.fixture
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """A store (SQLite; by indirect parametrization another backend, or ``"sqlite+spawn"``
    for workers started with spawn rather than forkserver) with its ledger, DeathWatch,
    producer and fault log; every process the test starts is killed afterwards if it is
    still running."""
    backend, _, start_method = getattr(request, "param", "sqlite").partition("+")
    with subreaper():
        setup = Rig(tmp_path / "rig", backend=backend, start_method=start_method)
        try:
            yield setup
        finally:
            setup.close()
            FIGURES.merge(setup.figures)


@contextmanager
def _rig_on(tmp_path: Path) -> Iterator[Rig]:
    # The rig is closed (its supervisors killed, its connections closed) before the
    # caller unmounts the store's file system.
    with subreaper():
        setup = Rig(tmp_path / "rig")
        try:
            yield setup
        finally:
            setup.close()
            FIGURES.merge(setup.figures)


@pytest.fixture
def tmpfs_rig(tmp_path: Path) -> Iterator[Rig]:
    """A rig whose store folder is a 4 MiB tmpfs (row 18: filled by a ballast file; row 19:
    remounted read-only). Skipped, saying why, where mounting is not permitted."""
    if (problem := mount_problem()) is not None:
        pytest.skip(problem)
    with tmpfs(tmp_path / "rig" / "store", "4m"), _rig_on(tmp_path) as setup:
        yield setup


@pytest.fixture
def ext4_rig(tmp_path: Path) -> Iterator[tuple[Rig, Ext4]]:
    """A rig whose store folder is a loop-mounted ext4 image with ``errors=remount-ro``
    (row 19 at runtime); skipped, saying why, where that cannot be mounted."""
    if (problem := mount_problem(ext4=True)) is not None:
        pytest.skip(problem)
    with (
        ext4_image(tmp_path / "rig" / "store", tmp_path / "store.img") as fs,
        _rig_on(tmp_path) as setup,
    ):
        yield setup, fs


@pytest.fixture(scope="session", autouse=True)
def _figures_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if FIGURES.samples or FIGURES.counts:
        path = tmp_path_factory.getbasetemp() / "reliability_figures.json"
        write_json(path, FIGURES.to_json())
        _FIGURES_FILE.append(path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (FIGURES.samples or FIGURES.counts):
        return
    terminalreporter.section("reliability figures")
    for line in FIGURES.summary():
        terminalreporter.write_line(line)
    for path in _FIGURES_FILE:
        terminalreporter.write_line(f"(all samples: {path})")
