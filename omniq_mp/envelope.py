"""The header every pickled call carries, so a worker can tell whether it can run it
faithfully before it unpickles anything.

A payload is ``MAGIC | header length (2 bytes, big-endian) | JSON header | pickle``. The
header records the producer's Python and cloudpickle versions and, when the callable
travels by value (lambdas, closures, ``__main__`` and notebook functions), a hash of its
code. By-value code is bytecode, which does not move between Python minor versions: a
worker on another version fails the task with a message naming both versions instead of
crashing somewhere inside the unpickler. Payloads without the magic (written before the
header existed) are plain pickles and are still accepted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import marshal
import platform
import struct
import sys
import types
import weakref
from dataclasses import dataclass
from typing import Any

import cloudpickle

__all__ = ["Header", "VersionSkewError", "code_hash", "local_header", "seal", "split"]

MAGIC = b"OMQ\x01"
_LENGTH = struct.Struct(">H")


class VersionSkewError(Exception):
    """This interpreter cannot faithfully run a call pickled by another one."""


@dataclass(frozen=True)
class Header:
    """Who pickled a call. ``code`` is None when the callable travels by reference."""

    python: str  # "3.11.7"
    cloudpickle: str
    code: str | None = None

    @property
    def python_minor(self) -> str:
        """``"3.11"``: bytecode is compatible within a minor version."""
        return ".".join(self.python.split(".")[:2])

    def describe(self) -> str:
        """``Python 3.11.7 with cloudpickle 3.1.1``."""
        return f"Python {self.python} with cloudpickle {self.cloudpickle}"

    def check_runnable_here(self) -> None:
        """Raise :class:`VersionSkewError` if this interpreter cannot run by-value code
        pickled under this header."""
        here = local_header()
        if self.code is not None and self.python_minor != here.python_minor:
            raise VersionSkewError(
                f"the task's code was pickled by value under {self.describe()}, but this "
                f"worker runs {here.describe()}: bytecode does not carry across Python "
                f"versions; run workers on Python {self.python_minor}, or enqueue a dotted "
                "path to an importable function instead"
            )


@functools.lru_cache(maxsize=1024)
def local_header(code: str | None = None) -> Header:
    """The header this interpreter writes (cached: versions do not change while we run)."""
    return Header(platform.python_version(), str(cloudpickle.__version__), code)


def code_hash(target: Any) -> str | None:
    """A short hash of ``target``'s code if cloudpickle will carry it by value, else None."""
    if isinstance(target, str):
        return None
    try:
        return _HASHES[target]
    except (KeyError, TypeError):  # not seen yet, or not weak-referenceable
        pass
    found = _code_hash(target)
    try:
        _HASHES[target] = found
    except TypeError:
        pass
    return found


# Per function object: map() and enqueue loops build many tasks of one function.
_HASHES: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def _code_hash(target: Any) -> str | None:
    if not _by_value(target):
        return None
    code = getattr(target, "__code__", None)
    if not isinstance(code, types.CodeType):
        return None
    return hashlib.sha256(marshal.dumps(code)).hexdigest()[:16]


def _by_value(target: Any) -> bool:
    # cloudpickle refers to a function by module and name when importing that module in
    # the worker gives back the very same object; otherwise it pickles the code itself.
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", "")
    if module is None or module == "__main__" or "<" in qualname:
        return True
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj is not target


def seal(header: Header, body: bytes) -> bytes:
    """Prefix ``body`` with the header."""
    return _prefix(header) + body


@functools.lru_cache(maxsize=1024)
def _prefix(header: Header) -> bytes:
    # The same few headers are written for every task of a run: encode each once.
    raw = json.dumps(
        {"py": header.python, "cp": header.cloudpickle, "code": header.code},
        separators=(",", ":"),
    ).encode()
    return MAGIC + _LENGTH.pack(len(raw)) + raw


def split(payload: bytes) -> tuple[Header | None, memoryview]:
    """The header (None for a header-less payload) and the pickle that follows it.

    :raises ValueError: a header that is truncated or not the JSON it should be.
    """
    view = memoryview(payload)
    if not payload.startswith(MAGIC):
        return None, view
    start = len(MAGIC) + _LENGTH.size
    if len(payload) < start:
        raise ValueError("the task payload's header is truncated")
    (length,) = _LENGTH.unpack_from(payload, len(MAGIC))
    if len(payload) < start + length:
        raise ValueError("the task payload's header is truncated")
    return _parse_header(bytes(view[start : start + length])), view[start + length :]


@functools.lru_cache(maxsize=64)
def _parse_header(raw: bytes) -> Header:
    # A worker meets the same few headers task after task: each is parsed once (a fifth
    # of unpickling a no-op call).
    try:
        data = json.loads(raw)
        return Header(str(data["py"]), str(data["cp"]), data.get("code"))
    # RecursionError: up to 64 KiB of "[" is absurd nesting, not a header.
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"the task payload's header is damaged: {exc}") from None
