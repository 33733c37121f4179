"""Human-friendly sizes and durations at the boundaries: "512MB", "1.5GiB", "7d", "90m"."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from omniq_mp.errors import ConfigError

__all__ = ["format_bytes", "parse_bytes", "parse_duration"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_bytes(name: str, value: str | int) -> int:
    """Bytes from an int or a string like ``"512MB"`` (SI) or ``"512MiB"`` (binary)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a size like '512MB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(f"{name} must be a size like '512MB' or '1GiB', got {value!r}")
        number, unit = float(match.group(1)), (match.group(2) or "").lower()
        letter = unit.replace("i", "").replace("b", "")
        if "i" in unit and letter:  # KiB, MiB ...: powers of 1024
            scale = 1024 ** ("kmgt".index(letter) + 1)
        else:
            scale = _SIZE_UNITS[letter]
        size = int(number * scale)
    if size <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return size


def parse_duration(name: str, value: str | float | timedelta) -> float:
    """Seconds from a number, a timedelta, or a string like ``"90s"``, ``"15m"``, ``"7d"``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(f"{name} must be a duration like '90s', '15m' or '7d', got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{name} must be a positive duration, got {value!r}")
    return seconds


def format_bytes(size: float) -> str:
    """``1536000`` -> ``"1.5 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"
