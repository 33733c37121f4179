"""Cross-process wake-ups: what a poke carries and what the listener makes of it."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from pathlib import Path

import pytest

from omniq_mp.storage.postgres_notify import WorkListener
from omniq_mp.wakeup import SUPERVISORS, Poker, WakeListener

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="wake-ups use Linux abstract sockets"
)


async def _listen(folder: Path) -> tuple[WakeListener, list[str], list[float]]:
    wakes: list[str] = []
    dues: list[float] = []
    listener = WakeListener(folder, SUPERVISORS, lambda: wakes.append("wake"), dues.append)
    listener.start()
    return listener, wakes, dues


async def _settle(condition: list[str]) -> None:
    for _ in range(200):
        if condition:
            return
        await asyncio.sleep(0.005)


async def test_pokes_wake_the_listener_once_with_the_earliest_due_time(tmp_path: Path) -> None:
    listener, wakes, dues = await _listen(tmp_path)
    poker = Poker(tmp_path, SUPERVISORS)
    try:
        poker.poke(2_000.0)
        poker.poke(1_000.0)
        poker.poke()  # due now: a wake-up without a time
        await _settle(wakes)
        assert wakes == ["wake"] and dues == [1_000.0]

        wakes.clear()
        poker.poke()
        await _settle(wakes)
        assert wakes == ["wake"] and dues == [1_000.0]  # no time announced this time
    finally:
        poker.close()
        listener.stop()


async def test_a_datagram_that_is_not_a_finite_time_only_wakes(tmp_path: Path) -> None:
    # Anyone on the host may send to the socket: a NaN, an infinity or a stray length
    # must never become a due time (a NaN would compare false with every clock reading).
    listener, wakes, dues = await _listen(tmp_path)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for data in (b"\x7f\xf8" + bytes(6), b"\x7f\xf0" + bytes(6), b"abc", bytes(9)):
            sender.sendto(data, f"\0omniq-wake-{listener.name}")
        await _settle(wakes)
        assert wakes == ["wake"] and dues == []

        wakes.clear()  # a bad datagram does not hide a good one beside it
        sender.sendto(b"\x7f\xf8" + bytes(6), f"\0omniq-wake-{listener.name}")
        sender.sendto(struct.pack("!d", 1_500.0), f"\0omniq-wake-{listener.name}")
        await _settle(wakes)
        assert wakes == ["wake"] and dues == [1_500.0]
    finally:
        sender.close()
        listener.stop()


def test_postgres_notifications_keep_the_earliest_finite_due_time() -> None:
    # The listener callback asyncpg calls with each NOTIFY payload on the channel, which
    # any client of the database may send to: only finite numbers count.
    listener = WorkListener("postgresql://unused", "omniq_work")
    for payload in ("2000.5", "", "nan", "inf", "soon", "1000.25"):
        listener._notified(None, 0, "omniq_work", payload)
    assert listener.take_due() == 1000.25
    assert listener.take_due() is None  # taken: the next call reports only newer ones
