"""The supervisor's frame parser: frames come out whole and in order, however the bytes
of the stream are cut by the reads that deliver them."""

from __future__ import annotations

import os
import socket
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from omniq_mp import ipc

FRAMES = [
    (ipc.STARTED, {"task_id": "t1", "pid": 7}, b""),
    (ipc.DONE, {"ok": True}, os.urandom(300_000)),  # larger than one read of the loop
    (ipc.LOG, {"level": "INFO", "message": "héllo"}, b""),
    (ipc.DONE, {"ok": False, "error": {"error_type": "ValueError"}}, b"x"),
    (ipc.DONE, {"ok": True}, os.urandom(ipc.LARGE_BODY + 12_345)),  # its own buffer
    (ipc.STARTED, {"task_id": "t2", "pid": 8}, b""),
]
STREAM = b"".join(b"".join(ipc.encode(kind, meta, body)) for kind, meta, body in FRAMES)


def expected() -> list[ipc.Frame]:
    return [ipc.Frame(kind, meta, body) for kind, meta, body in FRAMES]


def test_every_frame_comes_out_whole_when_the_stream_arrives_at_once() -> None:
    parser = ipc.FrameParser()
    assert parser.feed(STREAM) == expected()
    assert parser.pending == 0


def test_a_frame_comes_out_only_with_its_last_byte() -> None:
    parser = ipc.FrameParser()
    first = len(b"".join(ipc.encode(*FRAMES[0])))
    assert parser.feed(STREAM[: first - 1]) == []
    assert parser.pending == first - 1
    assert parser.feed(STREAM[first - 1 : first]) == expected()[:1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=70_000), max_size=12))
def test_any_cutting_of_the_stream_gives_the_same_frames(sizes: list[int]) -> None:
    parser, frames, at = ipc.FrameParser(), [], 0
    for size in sizes:
        frames += parser.feed(STREAM[at : at + size])
        at += size
    frames += parser.feed(STREAM[at:])
    assert frames == expected()
    assert parser.pending == 0


def test_frames_sent_by_the_worker_side_parse_on_the_supervisor_side() -> None:
    ours, theirs = socket.socketpair()

    def worker() -> None:  # a thread: the socket buffer is smaller than the frames
        for kind, meta, body in FRAMES:
            ipc.send_frame(theirs, kind, meta, body)
        theirs.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=worker)
    sender.start()
    with ours, theirs:
        parser, frames = ipc.FrameParser(), []
        while chunk := ours.recv(65_536):
            frames += parser.feed(chunk)
        sender.join()
    assert frames == expected()
