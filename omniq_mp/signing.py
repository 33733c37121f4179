"""HMAC-SHA256 signing of task payloads and results (on when ``Settings.signing_key`` is set).

Payloads and results are pickles, and unpickling runs code: whoever can write the store
could otherwise run anything in a worker (through a payload) or in a client (through a
result). With signing on, a blob is only unpickled after its MAC checks out.

A signed blob is a second header in front of the bytes that would be stored unsigned (for a
payload the envelope header of envelope.py plus the pickle; for a result the pickle)::

    signed = MAGIC "OMQS" | version (1 byte) | scope (1 byte) | key id length (1 byte)
             | key id (ASCII) | MAC (32 bytes) | inner bytes

    MAC = HMAC-SHA256(key, "omniq-mp-sig" | version | key id | kind | binding | inner),
          each field after the label prefixed by its length (4 bytes, big-endian)

``kind`` is ``"payload"`` or ``"result"``; ``binding`` is ``"task:<id>"`` for a blob made
for one task, so a blob copied into another row, or an old task's blob re-inserted under a
new id, does not verify. Recurring tasks are the one exception: an interval task's next run
and each firing of a cron schedule are new tasks (new ids) carrying the same payload, so
their producer signs the payload with scope ``ANY`` (binding ``"any-task"``). Such a payload
can be replayed under another id; this gives a writer of the store nothing it does not have
already, since it can edit a recurring task's ``interval`` and ``eta`` columns. Results are
always bound to their task.

The scope byte is not trusted: it only selects the binding, which is inside the MAC, so
flipping it makes the MAC fail. Only the key id is read before verification, to pick the
key. Everything is rejected with :class:`~omniq_mp.errors.SignatureError`: a flipped bit,
truncation, a missing or damaged header, an unknown key id, and (with signing on) an
unsigned blob. With signing on, payloads written before it was turned on are therefore
refused: drain the queue first. With signing off, a signed blob is read without checking
(the header is skipped), so turning signing off needs no migration.

Keys live in memory only (never in the store): the supervisor hands them to its worker
processes at start, through the process's start arguments (a pipe, not the environment or
the command line). A verified task runs in the same process and could find them there;
it is the producer's own code, and the producer holds the key anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from omniq_mp.errors import SignatureError

if TYPE_CHECKING:
    from omniq_mp.config import Settings

__all__ = [
    "ANY",
    "MAC_SIZE",
    "MAGIC",
    "MIN_KEY_BYTES",
    "PAYLOAD",
    "RESULT",
    "Signer",
    "is_signed",
    "key_id_problem",
    "open_blob",
    "parse_old_keys",
    "same_call",
    "settings_problem",
    "strip",
]

MAGIC: Final = b"OMQS"
VERSION: Final = 1
PAYLOAD: Final = "payload"
RESULT: Final = "result"
ANY: Final = None  # the task id a recurring payload is signed for: any task
MAC_SIZE: Final = hashlib.sha256().digest_size
MIN_KEY_BYTES: Final = 32

_KINDS = (PAYLOAD, RESULT)
_SCOPE_TASK = 0
_SCOPE_ANY = 1
_LABEL = b"omniq-mp-sig"
_LENGTH = struct.Struct(">I")


class _Key:
    """Key material that never shows itself: a repr in a traceback or a log prints a mask."""

    __slots__ = ("material",)

    def __init__(self, material: bytes) -> None:
        self.material = material

    def __repr__(self) -> str:
        return "<signing key hidden>"


class Signer:
    """Signs with the active key; verifies with any key it knows, by key id.

    :param keys: key id -> secret (at least 32 bytes each).
    :param active: the id of the key new signatures use.
    :raises ValueError: a short key, a bad key id, or an active id without a key.
    """

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        self._keys = {key_id: _Key(bytes(secret)) for key_id, secret in keys.items()}
        self._active = active
        if (problem := self._problem()) is not None:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        for key_id, key in self._keys.items():
            if (problem := key_id_problem(key_id, "a signing key id")) is not None:
                return problem
            if len(key.material) < MIN_KEY_BYTES:
                return f"signing key {key_id!r} is shorter than {MIN_KEY_BYTES} bytes"
        if self._active not in self._keys:
            return f"no signing key has the active id {self._active!r}"
        return None

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer | None:
        """The signer ``settings`` describe, or None when signing is off."""
        if settings.signing_key is None:
            return None
        keys = dict(parse_old_keys(settings.signing_keys_old or ""))
        keys[settings.signing_key_id] = settings.signing_key.encode()
        return cls(keys, settings.signing_key_id)

    @property
    def key_id(self) -> str:
        """The id of the key new signatures use."""
        return self._active

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id accepted when verifying."""
        return tuple(sorted(self._keys))

    def __repr__(self) -> str:
        return f"Signer(active={self._active!r}, key_ids={list(self.key_ids)!r})"

    # -- the MAC ------------------------------------------------------------------------------

    def sign(self, task_id: str | None, kind: str, data: bytes | memoryview) -> tuple[str, bytes]:
        """The active key id and the MAC binding ``data`` to ``task_id`` (``ANY``: to any
        task, for recurring payloads) and to ``kind`` (``"payload"`` or ``"result"``)."""
        return self._active, _mac(self._keys[self._active], self._active, kind, task_id, data)

    def verify(
        self, task_id: str | None, kind: str, data: bytes | memoryview, key_id: str, mac: bytes
    ) -> None:
        """Check a MAC made by :meth:`sign`, in constant time.

        :raises SignatureError: unknown key id, or a MAC that does not match.
        """
        key = self._keys.get(key_id)
        if key is None:
            known = ", ".join(self.key_ids)
            raise SignatureError(
                f"the {kind} is signed with key id {key_id!r}, which this process does not "
                f"know (it knows {known}); add that key to signing_keys_old"
            )
        expected = _mac(key, key_id, kind, task_id, data)
        if not hmac.compare_digest(expected, mac):
            raise SignatureError(_mismatch(kind, task_id))

    # -- signed blobs -------------------------------------------------------------------------

    def seal(self, task_id: str | None, kind: str, data: bytes) -> bytes:
        """``data`` with a signature header in front (see the module docstring)."""
        key_id, mac = self.sign(task_id, kind, data)
        scope = _SCOPE_ANY if task_id is ANY else _SCOPE_TASK
        raw_id = key_id.encode("ascii")
        head = MAGIC + bytes((VERSION, scope, len(raw_id))) + raw_id + mac
        return head + data

    def unseal(self, task_id: str, kind: str, blob: bytes) -> bytes:
        """The inner bytes of a blob signed for ``task_id`` (or for any task, if a payload),
        once its MAC checks out; nothing inside is parsed before that.

        :raises SignatureError: unsigned, damaged, unknown key id, or MAC mismatch.
        """
        if not is_signed(blob):
            raise SignatureError(
                f"the {kind} of task {task_id} is not signed, and signing is on: it was "
                "written without the key (by someone else, or before signing was turned on)"
            )
        scope, key_id, mac, start = _parse(blob, kind)
        if scope == _SCOPE_ANY and kind != PAYLOAD:
            raise SignatureError(f"the {kind} of task {task_id} claims a scope only payloads use")
        inner = memoryview(blob)[start:]
        self.verify(ANY if scope == _SCOPE_ANY else task_id, kind, inner, key_id, mac)
        return bytes(inner)


def is_signed(blob: bytes) -> bool:
    """Whether ``blob`` starts with a signature header (verified or not)."""
    return blob[: len(MAGIC)] == MAGIC


def strip(blob: bytes) -> bytes:
    """The inner bytes of a signed blob without checking them (signing off), or ``blob``
    itself when it is not signed.

    :raises SignatureError: a signature header too damaged to skip.
    """
    if not is_signed(blob):
        return blob
    return blob[_parse(blob, "blob")[3] :]


def same_call(first: bytes, second: bytes) -> bool:
    """Whether two payloads carry the same bytes, whichever task each is signed for (for
    messages only: nothing is verified; a header too damaged to skip compares unequal)."""
    try:
        return strip(first) == strip(second)
    except SignatureError:
        return False


def open_blob(signer: Signer | None, task_id: str, kind: str, blob: bytes) -> bytes:
    """What a reader unpickles: verified inner bytes with a signer, else :func:`strip`."""
    return strip(blob) if signer is None else signer.unseal(task_id, kind, blob)


def _parse(blob: bytes, kind: str) -> tuple[int, str, bytes, int]:
    """Scope, key id, MAC and where the inner bytes start; checks lengths only."""
    fixed = len(MAGIC) + 3
    if len(blob) < fixed:
        raise SignatureError(f"the {kind}'s signature header is truncated")
    version, scope, id_len = blob[len(MAGIC) : fixed]
    if version != VERSION:
        raise SignatureError(f"the {kind}'s signature header has unknown version {version}")
    if scope not in (_SCOPE_TASK, _SCOPE_ANY):
        raise SignatureError(f"the {kind}'s signature header is damaged (scope {scope})")
    start = fixed + id_len + MAC_SIZE
    if id_len == 0 or len(blob) < start:
        raise SignatureError(f"the {kind}'s signature header is truncated or damaged")
    try:
        key_id = blob[fixed : fixed + id_len].decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError(f"the {kind}'s signature header is damaged (key id)") from None
    return scope, key_id, bytes(blob[fixed + id_len : start]), start


def _mac(key: _Key, key_id: str, kind: str, task_id: str | None, data: bytes | memoryview) -> bytes:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    binding = "any-task" if task_id is ANY else f"task:{task_id}"
    mac = hmac.new(key.material, _LABEL, hashlib.sha256)
    for field in (bytes((VERSION,)), key_id.encode("ascii"), kind.encode(), binding.encode()):
        mac.update(_LENGTH.pack(len(field)))
        mac.update(field)
    mac.update(_LENGTH.pack(len(data)))
    mac.update(data)
    return mac.digest()


def _mismatch(kind: str, task_id: str | None) -> str:
    whose = "a recurring task" if task_id is ANY else f"task {task_id}"
    return (
        f"the {kind} of {whose} does not match its signature: it was altered or truncated, "
        "signed for another task, or signed with another key under the same key id"
    )


# -- key settings ---------------------------------------------------------------------------
#
# Checks return a message instead of raising where a secret is in scope: loguru's diagnose
# mode prints the variables of each line an exception passes through, and a raise line
# that mentions a secret would print it. Messages name fields, key ids and lengths only.

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def key_id_problem(key_id: object, field: str = "signing_key_id") -> str | None:
    """What is wrong with a key id (it must be 1 to 64 letters, digits, ``.``, ``_`` or
    ``-``; it is not secret), or None."""
    if not isinstance(key_id, str) or not 0 < len(key_id) <= 64 or set(key_id) - _ID_CHARS:
        return f"{field} must be 1 to 64 letters, digits, '.', '_' or '-', got {key_id!r}"
    return None


def settings_problem(key: object, key_id: object, old: object) -> str | None:
    """What is wrong with ``signing_key``, ``signing_key_id`` and ``signing_keys_old``, or
    None. The message never quotes a secret."""
    if (problem := key_id_problem(key_id)) is not None:
        return problem
    if old is not None and not isinstance(old, str):
        return f"signing_keys_old must be a string, got a {type(old).__name__}"
    if key is None:
        return "signing_keys_old needs signing_key: set the active key too" if old else None
    if not isinstance(key, str):
        return f"signing_key must be a string, got a {type(key).__name__}"
    if (size := len(key.encode())) < MIN_KEY_BYTES:
        return (
            f"signing_key must be at least {MIN_KEY_BYTES} bytes, got {size}; make one "
            "with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    pairs, problem = _old_keys(old or "")
    if problem is None and any(old_id == key_id for old_id, _ in pairs):
        problem = f"signing_keys_old must not repeat the active key id {key_id!r}"
    return problem


def parse_old_keys(text: str) -> list[tuple[str, bytes]]:
    """``"k0:secret0,kz:secretz"`` as (key id, secret) pairs.

    :raises ValueError: an entry without ``:``, a bad or repeated id, or a short secret
        (the message never quotes a secret).
    """
    pairs, problem = _old_keys(text)
    if problem is not None:
        raise ValueError(problem)
    return [(key_id, key.material) for key_id, key in pairs]


def _old_keys(text: str) -> tuple[list[tuple[str, _Key]], str | None]:
    pairs: list[tuple[str, _Key]] = []
    for number, entry in enumerate((e for e in text.split(",") if e.strip()), 1):
        key_id, sep, secret = entry.strip().partition(":")
        key, size = _Key(secret.encode()), len(secret.encode())
        problem = key_id_problem(key_id, f"signing_keys_old entry {number}: the key id")
        if not sep:
            problem = (
                f"signing_keys_old entry {number} must look like key_id:secret "
                "(entries separated by commas)"
            )
        elif problem is None and any(key_id == seen for seen, _ in pairs):
            problem = f"signing_keys_old names key id {key_id!r} twice"
        elif problem is None and size < MIN_KEY_BYTES:
            problem = (
                f"signing_keys_old key {key_id!r} must be at least {MIN_KEY_BYTES} bytes "
                f"(got {size})"
            )
        if problem is not None:
            return [], problem
        pairs.append((key_id, key))
    return pairs, None
