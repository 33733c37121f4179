"""Event loops: uvloop when installed, and a private loop thread for the synchronous API.

The synchronous :class:`~omniq_mp.core.OmniQ` runs everything on its own loop in a
background thread. That is what makes it work inside Jupyter, whose main thread already
runs a loop that we must neither block on nor nest in.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from omniq_mp.errors import ClientClosedError

__all__ = ["LoopThread", "call_at_exit", "new_event_loop", "run"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop if uvloop is installed, else the stdlib's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def call_at_exit(func: Callable[[], None]) -> Callable[[], None]:
    """Call ``func`` when the interpreter exits, while thread pools still take work;
    returns a function that cancels the call.

    ``atexit`` is too late for a close that goes through a thread pool (a SQLite
    connection's thread, ``asyncio.to_thread``): as the interpreter starts to exit,
    ``concurrent.futures`` ends every pool's threads and refuses new work, before any
    ``atexit`` handler runs. CPython's ``threading._register_atexit``, which
    ``concurrent.futures`` itself uses for that, runs its hooks newest first, so a hook
    registered here runs while the pools still work.
    """
    pending: list[Callable[[], None]] = [func]  # emptied by cancel: nothing is kept alive

    def hook() -> None:
        if pending:
            pending.pop()()

    def cancel() -> None:
        pending.clear()
        atexit.unregister(hook)

    register = getattr(threading, "_register_atexit", atexit.register)  # CPython's, or not
    try:
        register(hook)
    except RuntimeError:  # the interpreter is exiting already: atexit still runs it
        atexit.register(hook)
    return cancel


class LoopThread:
    """An event loop running forever in a daemon thread; ``call`` runs a coroutine on it."""

    def __init__(self, name: str = "omniq-loop") -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def on_loop_thread(self) -> bool:
        """The caller runs on this loop's own thread (where blocking would stall it)."""
        return threading.current_thread() is self._thread

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it; Ctrl-C cancels it."""
        if self.on_loop_thread():
            coro.close()
            raise RuntimeError(
                "a blocking omniq_mp call was made from a callback on omniq_mp's own loop "
                "thread (e.g. a future's done-callback); call it from another thread"
            )
        future = self.submit(coro)  # a closed loop raises here, before any wait
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop without waiting (for pipelining: the caller prepares
        the next piece of work while this one runs).

        :raises ClientClosedError: the loop was stopped (its client closed)."""
        if not self.running:
            coro.close()  # never to run: no "coroutine was never awaited" warning
            raise ClientClosedError("this omniq_mp client is closed; make a new one to go on")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop and join the thread (idempotent)."""
        if self.loop.is_closed():
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.stop() called from its own loop")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    @property
    def running(self) -> bool:
        """True while the loop accepts work."""
        return not self.loop.is_closed() and self._thread.is_alive()
