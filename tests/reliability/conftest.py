"""The ``rig`` fixture (tests/reliability/harness.py ``Rig``) and the figures summary.

Every figure a test records (latency samples, counts) is merged into one session-wide
collection, written to ``<pytest basetemp>/reliability_figures.json`` and printed in the
terminal summary, so it shows without ``-s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import Figures, Rig, subreaper, write_json

FIGURES = Figures()
_FIGURES_FILE: list[Path] = []


@pytest.fixture
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """A store (SQLite; another backend by indirect parametrization) with its ledger,
    DeathWatch, producer and fault log; every process the test starts is killed
    afterwards if it is still running."""
    with subreaper():
        setup = Rig(tmp_path / "rig", backend=getattr(request, "param", "sqlite"))
        try:
            yield setup
        finally:
            setup.close()
            FIGURES.merge(setup.figures)


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
