"""Helpers to run ``omniq-mp`` and producer scripts as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]


def cli_env(base_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMNIQ_BASE_DIR=str(base_dir), OMNIQ_LOG_LEVEL="WARNING", **extra)
    return env


@pytest.fixture
def omniq(tmp_path: Path) -> Cli:
    """Run ``omniq-mp ARGS`` against a store in tmp_path; returns the completed process."""

    def run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "omniq_mp", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=cli_env(tmp_path / "store", **env),
        )

    return run


def start_workers(base_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``omniq-mp workers`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "workers", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(base_dir, **env),
    )
