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


def sending_every_frame(sock: socket.socket) -> threading.Thread:
    """A started thread that writes FRAMES to ``sock`` with ``send_frame``, then ends
    the stream (a thread: the socket buffer is smaller than the frames)."""

    def send() -> None:
        for kind, meta, body in FRAMES:
            ipc.send_frame(sock, kind, meta, body)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    return sender


def test_frames_sent_by_the_worker_side_parse_on_the_supervisor_side() -> None:
    ours, theirs = socket.socketpair()
    sender = sending_every_frame(theirs)
    with ours, theirs:
        parser, frames = ipc.FrameParser(), []
        while chunk := ours.recv(65_536):
            frames += parser.feed(chunk)
        sender.join()
    assert frames == expected()


# -- the worker side: FrameReader over a blocking socket ------------------------------------


def _read_all(reader: ipc.FrameReader) -> list[ipc.Frame | None]:
    frames: list[ipc.Frame | None] = []
    while not frames or frames[-1] is not None:
        frames += reader.wait()
    return frames


def test_the_worker_reads_every_frame_whole_and_in_order_then_the_end() -> None:
    ours, theirs = socket.socketpair()
    sender = sending_every_frame(ours)
    with ours, theirs:
        frames = _read_all(ipc.FrameReader(theirs))
        sender.join()
    assert frames == [*expected(), None]
    large = frames[4]
    assert large is not None and isinstance(large.body, bytearray)  # read into its own buffer


def test_frames_sent_together_come_out_of_one_look_without_waiting() -> None:
    small = [f for f in FRAMES if len(f[2]) < 1000]
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader = ipc.FrameReader(theirs)
        assert reader.arrived() == []  # nothing yet: no wait
        stream = b"".join(b"".join(ipc.encode(kind, meta, body)) for kind, meta, body in small)
        ours.sendall(stream[:7])  # a frame's first bytes: not a frame yet
        assert reader.arrived() == []
        ours.sendall(stream[7:])
        assert reader.arrived() == [ipc.Frame(kind, meta, body) for kind, meta, body in small]
        assert reader.arrived() == []


def test_a_frame_cut_short_by_the_end_of_the_stream_is_never_delivered() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(STREAM[: len(b"".join(ipc.encode(*FRAMES[0]))) + 5])
        ours.shutdown(socket.SHUT_WR)
        reader = ipc.FrameReader(theirs)
        assert _read_all(reader) == [expected()[0], None]
        assert reader.wait() == [None]  # asked again: still the end, at once
