"""Wake-ups between processes sharing a store on one machine.

A producer that commits a task pokes every supervisor of the store, and a supervisor
that stores outcomes pokes every client waiting for results, so neither side has to poll
to react within a millisecond. Polling remains the fallback: a lost or refused poke only
costs the wait until the next poll.

Each listener binds a datagram socket in Linux's abstract namespace (no file to clean
up, no 108-byte path limit) and announces it with an empty file named after it in the
store's ``wake/`` folder: ``s-<token>`` for supervisors, ``c-<token>`` for clients. A
sender lists the folder and sends one datagram to each; a name nobody listens on any
more (its process died) is refused, and the sender removes its file. Elsewhere than
Linux, this module does nothing.

A datagram is one byte ("look now"), or, when the work it announces falls due later
(tasks with an ETA), that time as a big-endian double: the supervisor then looks again
at that time instead of at its next idle poll.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger

__all__ = ["Poker", "WakeListener"]

SUPERVISORS = "s-"
CLIENTS = "c-"
_SUPPORTED = sys.platform.startswith("linux")
_LIST_TTL = 0.5  # seconds a sender reuses its listing of the folder
_NOW = b"!"
_DUE = struct.Struct("!d")


def _address(name: str) -> str:
    return f"\0omniq-wake-{name}"


class WakeListener:
    """Calls ``on_wake`` on the event loop whenever another process pokes this one, after
    ``on_due`` with the earliest due time the pokes carried, if any did."""

    def __init__(
        self,
        folder: Path,
        kind: str,
        on_wake: Callable[[], None],
        on_due: Callable[[float], None] | None = None,
    ) -> None:
        self.folder = folder
        self.name = f"{kind}{secrets.token_hex(8)}"
        self._on_wake = on_wake
        self._on_due = on_due
        self._sock: socket.socket | None = None

    def start(self) -> None:
        """Bind and announce (a failure only disables the fast path, with a debug log)."""
        if not _SUPPORTED or self._sock is not None:
            return
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(_address(self.name))
            (self.folder / self.name).touch(mode=0o600)
        except OSError as exc:
            logger.bind(action="wakeup_disabled").debug("no cross-process wake-ups: {}", exc)
            return
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        due: float | None = None
        try:
            while data := self._sock.recv(64):  # one wake-up however many pokes queued up
                if len(data) == _DUE.size:
                    (when,) = _DUE.unpack(data)
                    if math.isfinite(when):  # anyone on the host may send us anything
                        due = when if due is None else min(due, when)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return
        if due is not None and self._on_due is not None:
            self._on_due(due)
        self._on_wake()

    def stop(self) -> None:
        """Withdraw the announcement and close the socket (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        except RuntimeError:  # the loop is already gone
            pass
        sock.close()
        try:
            (self.folder / self.name).unlink()
        except OSError:
            pass


class Poker:
    """Pokes every listener of one kind announced in ``folder``."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder = folder
        self.kind = kind
        self._names: list[str] = []
        self._listed_at = -_LIST_TTL
        self._sock: socket.socket | None = None

    def poke(self, due: float | None = None) -> None:
        """Wake each listener; ``due``: the announced work falls due only then (an ETA's
        time), so the listener looks again at that time. Never raises, never blocks."""
        if not _SUPPORTED:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        message = _NOW if due is None else _DUE.pack(due)
        for name in self._listeners():
            try:
                self._sock.sendto(message, _address(name))
            except (BlockingIOError, InterruptedError):
                pass  # its queue is full: it has plenty of wake-ups pending already
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(name)  # its process is gone
            except OSError:
                pass

    def close(self) -> None:
        """Close the sending socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _listeners(self) -> list[str]:
        now = time.monotonic()
        if now - self._listed_at >= _LIST_TTL:
            try:
                self._names = [n for n in os.listdir(self.folder) if n.startswith(self.kind)]
            except OSError:
                self._names = []
            self._listed_at = now
        return self._names

    def _forget(self, name: str) -> None:
        try:
            (self.folder / name).unlink()
        except OSError:
            pass
        if name in self._names:
            self._names.remove(name)
