"""Real storage faults under a store folder, made with mounts (rows 18 and 19).

* a small **tmpfs** that a ballast file fills to the last block: SQLite's writes then get
  ENOSPC from the kernel (``SQLITE_FULL``); deleting the ballast gives the space back;
* ``mount -o remount,ro``: a read-only store. Linux refuses that remount (EBUSY) while any
  file on it is open for writing, so it serves stores that nothing has open (startup);
* an **ext4 image** mounted with ``errors=remount-ro``: writing to its
  ``/sys/fs/ext4/<dev>/trigger_fs_error`` is a file-system error as a failing disk causes
  one, and the kernel turns the mount read-only under the processes that have files open
  on it (the honest "read-only at runtime"). It stays so until unmounted and repaired.

Mounting needs root (CAP_SYS_ADMIN); :func:`mount_problem` says why it cannot be done
here, for a visible skip. Every mount made here is undone by its context manager, on
failure too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

__all__ = [
    "Ext4",
    "ext4_image",
    "fill",
    "mount_problem",
    "remount",
    "tmpfs",
    "unmount",
]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _must(*argv: str) -> None:
    done = _run(*argv)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


@cache
def mount_problem(ext4: bool = False) -> str | None:
    """Why these mounts cannot be made here (for ``pytest.skip``), or None. Tried for
    real once per process: a tmpfs (and with ``ext4``, a loop-mounted ext4 image)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs or an ext4 image needs root (CAP_SYS_ADMIN)"
    for tool in ("mount", "umount", *(("mkfs.ext4", "e2fsck", "losetup") if ext4 else ())):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    with tempfile.TemporaryDirectory(prefix="omniq-mount-probe-") as probe:
        try:
            if ext4:
                with ext4_image(Path(probe) / "mnt", Path(probe) / "img", size_mib=8) as fs:
                    if not fs.trigger_path().exists():
                        return "this kernel's ext4 has no trigger_fs_error"
            else:
                with tmpfs(Path(probe) / "mnt", "1m"):
                    pass
        except OSError as exc:
            return f"cannot mount here: {exc}"
    return None


def unmount(path: Path) -> None:
    """Unmount ``path``; a busy mount is retried for a few seconds (a process that is
    exiting may still hold a file), then detached lazily so teardown never leaves it."""
    deadline = time.monotonic() + 5.0
    while True:
        done = _run("umount", str(path))
        if done.returncode == 0 or "not mounted" in done.stderr:
            return
        if time.monotonic() > deadline:
            _must("umount", "-l", str(path))
            return
        time.sleep(0.05)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (created if missing) for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    _must("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        unmount(path)


def remount(path: Path, *, read_only: bool) -> None:
    """Remount ``path`` read-only or read-write (refused, EBUSY, for read-only while a
    file on it is open for writing)."""
    _must("mount", "-o", "remount,ro" if read_only else "remount,rw", str(path))


def fill(folder: Path) -> Path:
    """Write a ballast file in ``folder`` until the file system has no block left (real
    ENOSPC); returns it. Deleting it gives the space back."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = b"\0" * 65536
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return ballast


class Ext4:
    """A loop-mounted ext4 image (``errors=remount-ro``) at ``path``."""

    def __init__(self, path: Path, image: Path) -> None:
        self.path = path
        self.image = image

    def device(self) -> str:
        """The block device's name (``loop3``), as /sys/fs/ext4 knows it."""
        done = _run("findmnt", "-n", "-o", "SOURCE", str(self.path))
        return done.stdout.strip().rsplit("/", 1)[-1]

    def trigger_path(self) -> Path:
        """The sysfs file whose write is a file-system error."""
        return Path("/sys/fs/ext4") / self.device() / "trigger_fs_error"

    def fail(self) -> None:
        """A file-system error now: the kernel turns the mount read-only at once, open
        files included (their writes get EROFS)."""
        self.trigger_path().write_text("omniq reliability test: read-only at runtime\n")

    def read_only(self) -> bool:
        """True once the mount refuses a new file (EROFS). After an error the kernel may
        mark the file system "emergency read-only" without ``ST_RDONLY`` in statvfs."""
        try:
            fd, probe = tempfile.mkstemp(dir=self.path)
        except OSError as exc:
            return exc.errno == errno.EROFS
        os.close(fd)
        os.unlink(probe)
        return False

    def mount(self) -> None:
        """Mount the image (read-write) on ``path``."""
        _must("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path))

    def repair(self) -> None:
        """Unmount, let e2fsck clear the error (exit 1: "errors corrected"), mount again:
        the store as an administrator gives it back after a disk error."""
        unmount(self.path)
        done = _run("e2fsck", "-f", "-y", str(self.image))
        if done.returncode not in (0, 1):
            raise OSError(f"e2fsck failed ({done.returncode}): {done.stdout}{done.stderr}")
        self.mount()


@contextlib.contextmanager
def ext4_image(path: Path, image: Path, size_mib: int = 32) -> Iterator[Ext4]:
    """A fresh ext4 image of ``size_mib`` loop-mounted on ``path`` for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as f:
        f.truncate(size_mib * 2**20)
    _must("mkfs.ext4", "-q", "-F", str(image))
    fs = Ext4(path, image)
    fs.mount()
    try:
        yield fs
    finally:
        unmount(path)
        image.unlink(missing_ok=True)
