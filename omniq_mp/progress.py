"""Progress bars for long waits: a widget in Jupyter, text in a terminal (tqdm)."""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

__all__ = ["ProgressBar"]


def _tqdm_class() -> Any:
    # tqdm.auto picks a widget under Jupyter, but warns there when ipywidgets is missing:
    # plain text is better than a warning in every cell that shows progress.
    if importlib.util.find_spec("ipywidgets") is not None:
        import tqdm.auto

        return tqdm.auto.tqdm
    import tqdm.std

    return tqdm.std.tqdm


class ProgressBar:
    """Counts finished futures: done, failed (errors and cancellations), and the rate.

    Safe to update from any thread (futures complete on the client's loop thread).
    """

    def __init__(self, total: int | None, desc: str = "tasks", enabled: bool = True) -> None:
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        if enabled:
            self._bar = _tqdm_class()(total=total, desc=desc, unit="task", smoothing=0.1)

    def grow_to(self, seen: int) -> None:
        """At least ``seen`` items exist (the total was unknown or too small)."""
        if self._bar is not None:
            with self._lock:
                if (self._bar.total or 0) < seen:
                    self._bar.total = seen
                    self._bar.refresh()

    def count(self, ok: bool, items: int = 1) -> None:
        """Record ``items`` finished items (a chunk of calls ends as one task)."""
        with self._lock:
            self.done += items
            self.failed += 0 if ok else items
            if self._bar is not None:
                if self._bar.total is not None and self.done > self._bar.total:
                    self._bar.total = self.done  # tasks arrived after the bar began
                self._bar.update(items)
                if not ok:
                    self._bar.set_postfix(failed=self.failed, refresh=False)

    def close(self) -> None:
        """Draw the final state and release the bar."""
        if self._bar is not None:
            with self._lock:
                self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
