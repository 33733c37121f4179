"""Results as files, one per task, on a local disk or any fsspec filesystem (S3, GCS,
``memory://``...)::

    <base_dir>/<task_id[-2:]>/<task_id>.result

Each file is one JSON header line, then exactly ``size`` raw value bytes::

    {"omniq_result": 1, "task_id": "...", "status": "COMPLETED", "error": null,
     "finished_at": 1700000000.5, "expires_at": null, "size": 12, "crc32": 305419896}
    <the 12 bytes the worker pickled>

``size`` and ``crc32`` are null when the value is None. Nothing here unpickles: the value
travels as the opaque bytes the worker produced, and ``head -1`` tells what a file holds.

On a local disk a write goes to a temp file (mode 0600) beside its target, is fsync'ed and
renamed over it, and the folder is fsync'ed: a reader sees the old result or the new one,
never half of one. Folders are made mode 0700. Elsewhere each result is one ``pipe`` (a
single PUT on object stores, which replace whole objects). fsspec calls block, so every
operation runs in a worker thread.

A file that does not decode (truncated, not JSON, another task's, a newer format) makes
``get`` and ``get_many`` raise :class:`~omniq_mp.errors.StorageError` naming its task id
rather than read as missing: a caller waiting for that result learns it is damaged instead
of waiting for ever. ``purge_expired`` passes such files over (counted once in
:attr:`FileResultStorage.damaged` and logged once) so one bad file cannot stop purges;
``delete`` removes them. A purge racing with a new write of the same task id may delete
the new result: task ids are written once in practice, so the race is accepted.

Task ids become file names: an empty one, one starting with ``.``, holding ``/``, ``\\``
or a control character, or longer than 200 UTF-8 bytes is refused with ``ValueError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from loguru import logger

from omniq_mp.errors import ConfigError, StorageError
from omniq_mp.extras import require
from omniq_mp.file_modes import make_private_dirs
from omniq_mp.models import TaskStatus
from omniq_mp.results.base import TaskResult, check_terminal, is_expired

__all__ = ["FileResultStorage"]

T = TypeVar("T")
FORMAT = 1  # the "omniq_result" header field
_SUFFIX = ".result"
_MAX_ID_BYTES = 200  # with the suffix and a temp file's decorations, under NAME_MAX (255)
_STALE_TEMP = 3600.0  # seconds after which a temp file is a crashed writer's, not a live one


class FileResultStorage:
    """A result store in a folder, local or remote, shared safely by several processes.

    A result whose ``expires_at`` has passed is no longer returned, even before
    :meth:`purge_expired` deletes it.

    :param base_dir: a local path or an fsspec URL (``s3://bucket/results``,
        ``memory://x``); created with its parents by :meth:`open`.
    :param storage_options: passed to the fsspec filesystem (credentials, endpoint...).
    :raises ConfigError: fsspec is not installed.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] = "./omniq_results",
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._fsspec = require("fsspec", "fsspec", "File result storage")
        self.base_dir = os.fspath(base_dir)
        self.storage_options = dict(storage_options or {})
        self.damaged = 0  #: damaged files purge_expired passed over, each counted once
        self._damaged_names: set[str] = set()
        self._state = threading.Lock()  # purges of one instance may run in several threads
        self._objects: _Objects | None = None

    async def open(self) -> None:
        """Reach the filesystem and create the folder (idempotent).

        :raises ConfigError: the URL's protocol is unknown or its package is missing.
        :raises StorageError: the folder cannot be created.
        """
        if self._objects is None:
            self._objects = await self._thread(self._connect)

    async def close(self) -> None:
        """Forget the filesystem; nothing is held between calls (idempotent)."""
        self._objects = None

    async def drop(self) -> None:
        """Delete everything this store created: its result files, its shard folders, and
        the base folder if :meth:`open` made it. Tests use it to clean up."""
        objects = self._opened()
        await self._thread(objects.drop)

    async def store(self, results: Sequence[TaskResult]) -> None:
        """Write one file per result, replacing any stored under the same ids.

        :raises ValueError: a status is not terminal or a task id cannot be a file name
            (nothing is stored).
        """
        check_terminal(results)
        files = {_name(r.task_id): _encode(r) for r in results}
        if files:
            objects = self._opened()
            await self._thread(lambda: objects.write(files))

    async def get(self, task_id: str) -> TaskResult | None:
        """The result, or None when unknown or expired.

        :raises StorageError: its file is damaged.
        """
        found = await self.get_many([task_id])
        return found.get(task_id)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """The known, unexpired results among ``task_ids``, by id.

        :raises StorageError: a file among them is damaged.
        """
        names = {_name(task_id): task_id for task_id in task_ids}
        if not names:
            return {}
        objects = self._opened()

        def read() -> dict[str, bytes]:
            found = objects.read(list(names))
            legacy = {
                _legacy_name(task_id): task_id
                for name, task_id in names.items()
                if name not in found and _legacy_name(task_id) != name
            }
            if legacy:
                names.update(legacy)
                found.update(objects.read(list(legacy)))
            return found

        found = await self._thread(read)
        now, results = time.time(), {}
        for name, data in found.items():
            result = self._decode(names[name], name, data)
            if not is_expired(result, now):
                results[result.task_id] = result
        return results

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Delete the results' files, damaged ones included; return how many existed."""
        names = list(dict.fromkeys(name for task_id in task_ids for name in _names_ever(task_id)))
        if not names:
            return 0
        objects = self._opened()
        return await self._thread(lambda: objects.remove(names))

    async def purge_expired(self, now: float) -> int:
        """Delete results whose ``expires_at`` is before ``now`` (and, on a local disk,
        temp files crashed writers left); return how many results."""
        objects = self._opened()
        return await self._thread(lambda: self._purge(objects, now))

    # -- helpers -----------------------------------------------------------------------------

    def _opened(self) -> _Objects:
        if self._objects is None:
            raise StorageError(f"result store {self.base_dir} is not open; call open() first")
        return self._objects

    async def _thread(self, op: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(op)
        except OSError as exc:
            raise StorageError(f"result store {self.base_dir}: {_one_line(exc)}") from exc

    def _connect(self) -> _Objects:
        try:
            fs, root = self._fsspec.core.url_to_fs(self.base_dir, **self.storage_options)
        except (ImportError, ValueError) as exc:  # unknown protocol, or its package missing
            raise ConfigError(f"result store {self.base_dir}: {_one_line(exc)}") from exc
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        objects: _Objects = _LocalObjects(root) if "file" in protocols else _FsspecObjects(fs, root)
        objects.prepare()
        return objects

    def _decode(self, task_id: str, name: str, data: bytes) -> TaskResult:
        try:
            return _decode(task_id, data)
        except _DamagedError as exc:
            raise StorageError(
                f"result store {self.base_dir}: the result of task {task_id!r} ({name}) "
                f"is damaged: {exc}"
            ) from None

    def _purge(self, objects: _Objects, now: float) -> int:
        expired = []
        for name in objects.names():
            head = objects.read_header(name)
            if head is None:
                continue  # deleted since it was listed
            try:
                expires_at = _parse_header(head).get("expires_at")
            except _DamagedError as exc:
                self._note_damaged(name, str(exc))
                continue
            if isinstance(expires_at, int | float) and expires_at < now:
                expired.append(name)
        objects.sweep(time.time() - _STALE_TEMP)
        return objects.remove(expired) if expired else 0

    def _note_damaged(self, name: str, why: str) -> None:
        with self._state:
            if name in self._damaged_names:
                return
            self._damaged_names.add(name)
            self.damaged += 1
        logger.warning("{}: purge passed over damaged result file {}: {}", self.base_dir, name, why)


# -- the format --------------------------------------------------------------------------------


class _DamagedError(ValueError):
    """A result file that does not decode; the message says why."""


def _name(task_id: str) -> str:
    """The file name of a task's result, relative to the base folder."""
    if (
        not isinstance(task_id, str)
        or not task_id
        or task_id.startswith(".")
        or "/" in task_id
        or "\\" in task_id
        or not task_id.isprintable()
        or len(task_id.encode()) > _MAX_ID_BYTES
    ):
        raise ValueError(
            f"task id {task_id!r} cannot name a result file: it must be 1 to {_MAX_ID_BYTES} "
            "bytes, not start with '.', and hold no '/', '\\' or control character"
        )
    # Sharded by the id's last two characters: the first ones of a task id are a clock's
    # high digits, the same for years.
    return f"{task_id[-2:]}/{task_id}{_SUFFIX}"


def _legacy_name(task_id: str) -> str:
    """Where stores written before ids began with a clock kept a result: sharded by the
    first two characters. Reads and deletes still look there."""
    return f"{task_id[:2]}/{task_id}{_SUFFIX}"


def _names_ever(task_id: str) -> tuple[str, ...]:
    name, legacy = _name(task_id), _legacy_name(task_id)
    return (name,) if name == legacy else (name, legacy)


def _encode(result: TaskResult) -> bytes:
    value = result.result
    header = {
        "omniq_result": FORMAT,
        "task_id": result.task_id,
        "status": TaskStatus(result.status).value,
        "error": None if result.error is None else result.error.to_dict(),
        "finished_at": result.finished_at,
        "expires_at": result.expires_at,
        "size": None if value is None else len(value),
        "crc32": None if value is None else zlib.crc32(value),
    }
    # ensure_ascii (the default) escapes every newline, so the header is one line.
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + (value or b"")


def _parse_header(head: bytes) -> dict[str, Any]:
    try:
        header = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise _DamagedError("its header line is not JSON") from exc
    version = header.get("omniq_result") if isinstance(header, dict) else None
    if type(version) is int and version > FORMAT:
        raise _DamagedError(f"written in format {version}, newer than this omniq_mp reads")
    if version != FORMAT or not isinstance(header, dict):
        raise _DamagedError("its header is not an omniq_mp result header")
    return header


def _decode(task_id: str, data: bytes) -> TaskResult:
    head, newline, value = data.partition(b"\n")
    if not newline:
        raise _DamagedError("its header line is cut short")
    header = _parse_header(head)
    if header.get("task_id") != task_id:
        raise _DamagedError(f"it holds the result of task {header.get('task_id')!r}")
    size, crc = header.get("size"), header.get("crc32")
    if size is None and value:
        raise _DamagedError("it has value bytes but its header says there is no value")
    if size is not None and len(value) != size:
        raise _DamagedError(f"it has {len(value)} value bytes, its header says {size}")
    if size is not None and zlib.crc32(value) != crc:
        raise _DamagedError("its value does not match its checksum")
    error = header.get("error")
    numbers = (header.get("finished_at"), header.get("expires_at") or 0.0)
    if not isinstance(error, dict | None) or not all(_is_number(n) for n in numbers):
        raise _DamagedError("its header has a field of the wrong type")
    try:
        return TaskResult.from_dict({**header, "result": None if size is None else value})
    except (ValueError, TypeError, KeyError) as exc:
        raise _DamagedError(_one_line(exc)) from exc


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- where the files live ----------------------------------------------------------------------


class _Objects(Protocol):
    """Blocking file operations, by name relative to the base folder (``ab/abc.result``);
    always called in a worker thread."""

    def prepare(self) -> None: ...
    def write(self, files: Mapping[str, bytes]) -> None: ...
    def read(self, names: Sequence[str]) -> dict[str, bytes]: ...  # missing ones left out
    def read_header(self, name: str) -> bytes | None: ...  # the first line; None if missing
    def remove(self, names: Sequence[str]) -> int: ...  # how many existed
    def names(self) -> Iterator[str]: ...  # every result file
    def sweep(self, before: float) -> None: ...  # delete temp files older than ``before``
    def drop(self) -> None: ...


def _is_result_name(shard: str, file: str) -> bool:
    if file.startswith(".") or not file.endswith(_SUFFIX):
        return False
    task_id = file.removesuffix(_SUFFIX)
    return task_id.endswith(shard) or task_id.startswith(shard)  # the layout, or the legacy one


class _LocalObjects:
    """A local folder: atomic replace by rename, fsync'ed, private modes."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._made_root = False

    def prepare(self) -> None:
        if os.path.isdir(self.root):
            return
        try:
            self._made_root = make_private_dirs(self.root)  # parents 0700 too
        except FileExistsError as exc:
            if not os.path.isdir(self.root):
                raise StorageError(f"result store {self.root}: a file is in the way") from exc
        except NotADirectoryError as exc:
            raise StorageError(f"result store {self.root}: a file is in the way") from exc

    def write(self, files: Mapping[str, bytes]) -> None:
        folders: set[str] = set()
        made_folder = False
        for name, data in files.items():
            folder, file = os.path.split(os.path.join(self.root, name))
            if folder not in folders:
                folders.add(folder)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder, 0o700)
                    made_folder = True
            _write_atomically(folder, file, data)
        for folder in folders:  # the renames must survive a power cut too
            _fsync_dir(folder)
        if made_folder:
            _fsync_dir(self.root)

    def read(self, names: Sequence[str]) -> dict[str, bytes]:
        found = {}
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                with open(os.path.join(self.root, name), "rb") as f:
                    found[name] = f.read()
        return found

    def read_header(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, name), "rb") as f:
                return f.readline().rstrip(b"\n")
        except FileNotFoundError:
            return None

    def remove(self, names: Sequence[str]) -> int:
        removed, folders = 0, set()
        for name in names:
            path = os.path.join(self.root, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
                folders.add(os.path.dirname(path))
        for folder in folders:
            _fsync_dir(folder)
        return removed

    def names(self) -> Iterator[str]:
        for shard in self._shards():
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(os.path.join(self.root, shard)):
                    if _is_result_name(shard, entry.name):
                        yield f"{shard}/{entry.name}"

    def sweep(self, before: float) -> None:
        for shard in self._shards():
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(os.path.join(self.root, shard)):
                    if _is_temp_name(entry.name) and entry.stat().st_mtime < before:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)

    def drop(self) -> None:
        self.remove(list(self.names()))
        self.sweep(float("inf"))
        for shard in self._shards():
            with contextlib.suppress(OSError):  # not empty: holds files not ours
                os.rmdir(os.path.join(self.root, shard))
        if self._made_root:
            with contextlib.suppress(OSError):
                os.rmdir(self.root)

    def _shards(self) -> list[str]:
        with os.scandir(self.root) as entries:
            return [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]


def _temp_name(file: str) -> str:
    return f".{file}.{secrets.token_hex(6)}.tmp"


def _is_temp_name(file: str) -> bool:
    return file.startswith(".") and file.endswith(".tmp") and f"{_SUFFIX}." in file


def _write_atomically(folder: str, file: str, data: bytes) -> None:
    temp = os.path.join(folder, _temp_name(file))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, os.path.join(folder, file))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FsspecObjects:
    """Any other fsspec filesystem: one whole-object write per result."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self._made_root = False

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def prepare(self) -> None:
        if not self.fs.exists(self.root):
            self.fs.makedirs(self.root, exist_ok=True)
            self._made_root = True

    def write(self, files: Mapping[str, bytes]) -> None:
        # Only literal-path calls here and below (pipe, cat_ranges, rm_file...): the
        # glob-expanding ones would read '*' or '[' in a task id as a pattern.
        for shard in {name.split("/")[0] for name in files}:
            self.fs.makedirs(self._path(shard), exist_ok=True)
        self.fs.pipe({self._path(name): data for name, data in files.items()})

    def read(self, names: Sequence[str]) -> dict[str, bytes]:
        paths = [self._path(name) for name in names]
        found = {}
        for name, data in zip(names, self.fs.cat_ranges(paths, None, None), strict=True):
            if isinstance(data, FileNotFoundError):
                continue
            if isinstance(data, BaseException):
                raise data
            found[name] = bytes(data)
        return found

    def read_header(self, name: str) -> bytes | None:
        size = 64 << 10
        try:
            while True:  # a range, not the whole file: values can be megabytes
                data = bytes(self.fs.cat_file(self._path(name), start=0, end=size))
                newline = data.find(b"\n")
                if newline >= 0 or len(data) < size:
                    return data if newline < 0 else data[:newline]
                size *= 4
        except FileNotFoundError:
            return None

    def remove(self, names: Sequence[str]) -> int:
        removed = 0
        for name in names:
            path = self._path(name)
            # exists first: object stores delete a missing key without complaint
            if self.fs.exists(path):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)
                    removed += 1
        return removed

    def names(self) -> Iterator[str]:
        prefix = f"{self.root}/"
        for path in self.fs.find(self.root):
            shard, _, file = path.removeprefix(prefix).partition("/")
            if path.startswith(prefix) and "/" not in file and _is_result_name(shard, file):
                yield f"{shard}/{file}"

    def sweep(self, before: float) -> None:
        """Nothing to sweep: no temp files are written here."""

    def drop(self) -> None:
        names = list(self.names())
        self.remove(names)
        for shard in {name.split("/")[0] for name in names}:
            with contextlib.suppress(OSError, ValueError, NotImplementedError):
                self.fs.rmdir(self._path(shard))
        if self._made_root:
            with contextlib.suppress(OSError, ValueError, NotImplementedError):
                self.fs.rmdir(self.root)
