"""A warning when a call pickles big: usually a closure or a notebook global that drags a
data set into every task."""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from omniq_mp.units import format_bytes

__all__ = ["LARGE_PAYLOAD_BYTES", "LargePayloadWarning", "warn_if_large"]

LARGE_PAYLOAD_BYTES = 1 << 20  # 1 MiB per task is where storage and IPC costs show


class LargePayloadWarning(UserWarning):
    """A task's pickled call is large; the message names what makes it so."""


def warn_if_large(
    target: Callable[..., Any] | str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    size: int,
    limit: int = LARGE_PAYLOAD_BYTES,
) -> None:
    """Warn, naming the biggest captured parts, when a pickled call exceeds ``limit``."""
    if size <= limit:
        return
    parts = sorted(_part_sizes(target, args, kwargs), key=lambda p: p[1], reverse=True)
    named = ", ".join(f"{label} {format_bytes(n)}" for label, n in parts[:3] if n > limit // 8)
    name = getattr(target, "__qualname__", str(target))
    warnings.warn(
        f"each {name} task pickles to {format_bytes(size)}"
        + (f" (largest: {named})" if named else "")
        + "; every task stores and sends it: pass a file path or load the data inside the "
        "task instead",
        LargePayloadWarning,
        stacklevel=_caller_stacklevel(),
    )


def _part_sizes(
    target: Callable[..., Any] | str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> list[tuple[str, int]]:
    parts: list[tuple[str, Any]] = [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    if isinstance(target, types.FunctionType):
        code = target.__code__
        cells = target.__closure__ or ()
        for name, cell in zip(code.co_freevars, cells, strict=False):
            try:
                parts.append((f"captured variable {name!r}", cell.cell_contents))
            except ValueError:  # an empty cell
                continue
        for name in code.co_names:
            value = target.__globals__.get(name)
            if value is not None and not isinstance(value, types.ModuleType):
                parts.append((f"global {name!r}", value))
    sizes = []
    for label, value in parts:
        try:
            sizes.append((f"{label} ({type(value).__name__})", len(cloudpickle.dumps(value))))
        except Exception:
            continue
    return sizes


def _caller_stacklevel() -> int:
    # Point the warning at the user's line, above every frame of this package.
    package = str(Path(__file__).parent)
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
