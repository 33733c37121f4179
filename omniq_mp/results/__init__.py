"""Result storage backends behind :class:`~omniq_mp.results.base.ResultStorage`."""

from __future__ import annotations

from omniq_mp.results.base import ResultStorage, TaskResult

__all__ = ["ResultStorage", "TaskResult"]
