"""Message frames between the supervisor and one worker process.

    frame = header | meta | body
    header = struct "!IQ" (meta length, body length)
    meta = UTF-8 JSON object with a "kind" key: plain data the supervisor may read
           (fastjson: the supervisor handles several of these per task)
    body = opaque bytes (a cloudpickled call or result) the supervisor never unpickles

Each worker has its own socketpair, so a frame is only ever half-written when its writer
died, and then the whole channel is discarded with the process: no shared lock, no
"broken pool".
"""

from __future__ import annotations

import socket
import struct
from typing import Any, NamedTuple

from omniq_mp import fastjson

__all__ = ["Frame", "FrameParser", "FrameReader", "encode", "send_frame"]

_HEADER = struct.Struct("!IQ")

# Frame kinds, stable names.
READY = "ready"  # child -> parent: imports and worker_init done, waiting for work
INIT_FAILED = "init_failed"  # child -> parent: meta {error}: worker_init raised; it exits
RUN = "run"  # parent -> child: meta {task_id, attempt}, body = call payload; a second
# RUN may arrive while a task runs: the child starts it once the first one is DONE
STARTED = "started"  # child -> parent: the task is running now; the timeout clock starts
DONE = "done"  # child -> parent: meta {ok, error?, retire?}, body = result bytes
STOP = "stop"  # parent -> child: exit cleanly
SKIP = "skip"  # parent -> child: meta {task_id}: do not start that queued task after all
SKIPPED = "skipped"  # child -> parent: meta {task_id}: the queued task was not started
LOG = "log"  # child -> parent: a log record written by the task (relayed to the parent's sinks)


class Frame(NamedTuple):
    """One decoded message (a named tuple: the supervisor makes two per task, and one
    costs half a frozen dataclass)."""

    kind: str
    meta: dict[str, Any]
    body: bytes


def encode(kind: str, meta: dict[str, Any] | None = None, body: bytes = b"") -> list[bytes]:
    """The frame as buffers to write in order (the body is not copied)."""
    head = fastjson.dumpb({"kind": kind, **(meta or {})})
    return [_HEADER.pack(len(head), len(body)) + head, body]


def _decode(head: bytes, body: bytes) -> Frame:
    meta = fastjson.loads(head)
    return Frame(meta.pop("kind"), meta, body)


class FrameParser:
    """Frames out of a byte stream that arrives in arbitrary pieces (the supervisor's
    side: every piece the event loop reads is fed in, and every frame it completes comes
    out at once, with no await per header and body).

    A large body (a big result) is read straight into a buffer of its exact size, and
    comes out as that ``bytearray``: growing one stream buffer and slicing the body out
    of it held it three times over at the peak, this holds it once.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head = b""  # kind and meta of the frame whose large body is arriving
        self._body: bytearray | None = None
        self._filled = 0

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return the frames it completed, in order."""
        frames: list[Frame] = []
        while data:
            if self._body is not None:
                data = self._fill(data, frames)
                continue
            if self._buffer:  # a frame began in an earlier read
                buf = self._buffer
                buf += data
                if not _first_frame_ready(buf):  # no copy of a frame still arriving
                    break
                data = bytes(buf)
                buf.clear()
            data = self._split(data, frames)
        return frames

    def _split(self, data: bytes, frames: list[Frame]) -> bytes:
        """Decode the whole frames ``data`` starts with and keep an unfinished one for
        the next read; return what follows the start of a large body (for ``_fill``).

        Slices of the read itself: a frame that arrives in one read, as nearly all do,
        is never copied into the stream buffer and out again.
        """
        start, size = 0, len(data)
        while size - start >= _HEADER.size:
            head_len, body_len = _HEADER.unpack_from(data, start)
            head_at = start + _HEADER.size
            body_at = head_at + head_len
            end = body_at + body_len
            if body_len >= LARGE_BODY and size >= body_at:
                # The body goes to a buffer of its own; the rest of the stream follows it.
                self._head = data[head_at:body_at]
                self._body, self._filled = bytearray(body_len), 0
                return data[body_at:]
            if size < end:
                break
            frames.append(_decode(data[head_at:body_at], data[body_at:end]))
            start = end
        self._buffer += memoryview(data)[start:]
        return b""

    def _fill(self, data: bytes, frames: list[Frame]) -> bytes:
        """Copy the large body's share of ``data`` into place; return what follows."""
        body = self._body
        assert body is not None
        take = min(len(body) - self._filled, len(data))
        body[self._filled : self._filled + take] = memoryview(data)[:take]
        self._count_filled(take, frames)
        return data[take:]

    def body_room(self) -> memoryview | None:
        """The part of a large body still to arrive, for a read straight into place
        (then :meth:`body_filled`); None when no large body is arriving."""
        if self._body is None:
            return None
        return memoryview(self._body)[self._filled :]

    def body_filled(self, count: int) -> list[Frame]:
        """Count ``count`` bytes read into :meth:`body_room`; the frame they complete."""
        frames: list[Frame] = []
        self._count_filled(count, frames)
        return frames

    def _count_filled(self, count: int, frames: list[Frame]) -> None:
        body = self._body
        assert body is not None
        self._filled += count
        if self._filled == len(body):
            # The bytearray itself, not a bytes copy: the store binds any buffer.
            frames.append(_decode(self._head, body))  # type: ignore[arg-type]
            self._body, self._head, self._filled = None, b"", 0

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet complete."""
        return len(self._buffer) + self._filled


LARGE_BODY = 1 << 20  # bodies from this size get a buffer of their own


def _first_frame_ready(buf: bytearray) -> bool:
    """Whether ``buf`` holds its first frame whole, or the start of its large body."""
    if len(buf) < _HEADER.size:
        return False
    head_len, body_len = _HEADER.unpack_from(buf)
    body_at: int = _HEADER.size + head_len
    return len(buf) >= (body_at if body_len >= LARGE_BODY else body_at + body_len)


def send_frame(
    sock: socket.socket, kind: str, meta: dict[str, Any] | None = None, body: bytes = b""
) -> None:
    """Blocking write of one frame (the worker side), in one system call unless the
    socket takes only part of it (a large body)."""
    parts = encode(kind, meta, body)
    sent = sock.sendmsg(parts)
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        sock.sendall(memoryview(part)[sent:])
        sent = 0


class FrameReader:
    """Frames from a blocking socket (the worker side), in as few reads as the data
    allows: one read takes every frame that has arrived (the supervisor sends a busy
    worker its next tasks together), and a large body is read straight into its own
    buffer, never through the read chunks.

    Calls return whole frames only, in order, then None once the stream ends (the
    supervisor gone, or a half-written frame that will never end): :meth:`arrived`
    returns it once, :meth:`wait` at every call from then on.
    """

    CHUNK = 64 * 1024  # bytes asked for by one read; what is there comes, up to this

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._parser = FrameParser()
        self._ended = False

    def arrived(self) -> list[Frame | None]:
        """The frames that have arrived whole, without waiting for more."""
        frames: list[Frame | None] = []
        while not self._ended and self._read(frames, socket.MSG_DONTWAIT):
            pass
        return frames

    def wait(self) -> list[Frame | None]:
        """The frames that have arrived whole, waiting until there is at least one;
        ``[None]`` once the stream has ended."""
        frames = self.arrived()
        while not frames:
            if self._ended:
                return [None]
            self._read(frames, 0)
        return frames

    def _read(self, frames: list[Frame | None], flags: int) -> bool:
        """One read, its whole frames added to ``frames``; whether another read may find
        more (this one filled all it asked for). Non-blocking, False when nothing is
        there."""
        parser = self._parser
        room = parser.body_room()
        try:
            if room is None:
                data = self._sock.recv(self.CHUNK, flags)
                count, wanted = len(data), self.CHUNK
            else:
                with room:
                    wanted = len(room)
                    count = self._sock.recv_into(room, 0, flags)
        except BlockingIOError:
            return False
        if count == 0:
            self._ended = True
            frames.append(None)
            return False
        frames.extend(parser.feed(data) if room is None else parser.body_filled(count))
        return count == wanted
