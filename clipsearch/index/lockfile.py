"""An exclusive, non-blocking lock that tells the loser who holds it.

An edge shard opened by two processes at once fails in the second and corrupts the
first one's next flush, so every open of an embedded collection takes this lock
first. flock is released by the kernel when the holder dies, even by kill -9, so a
crashed ingest never leaves a stale lock behind: the file it leaves (with a dead pid
in it) is taken over by the next open.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import BusyError, ClipsearchError


class InUseError(BusyError):
    """The lock is held by another process, or already by this one."""


class ExclusiveLock:
    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "ExclusiveLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                # The engine opens its files for writing even to search: no read-only open to offer.
                folder = os.path.dirname(self.path) or "."
                if exc.errno == errno.EROFS:
                    raise ClipsearchError(
                        f"the index folder {folder} is on a read-only file system, and the embedded index writes "
                        "even to search: copy the folder to a writable disk, or run `clipsearch serve` where it is "
                        "writable and search through it") from None
                raise ClipsearchError(
                    f"the index folder {folder} cannot be written by this user ({exc.strerror}), and the embedded "
                    "index writes even to search: run clipsearch as the user who owns it, or search through "
                    "`clipsearch serve` run by that user") from None
            raise ClipsearchError(f"cannot open the lock file {self.path} of {self.what}: {exc.strerror}; "
                                  "if no clipsearch is using the index, remove that path") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, note = self._read_holder(fd)
            os.close(fd)
            if note:  # the holder said how to reach it instead (clipsearch serve)
                raise InUseError(f"{self.what} is {note}") from None
            raise InUseError(f"{self.what} is in use by pid {holder}; wait for it to finish or stop it") from None
        except OSError as exc:  # a filesystem without locks (some network mounts)
            os.close(fd)
            raise ClipsearchError(f"cannot lock {self.path} of {self.what}: {exc.strerror}; "
                                  "put the index on a local disk") from None
        self._fd = fd
        self._write(f"{os.getpid()}\n")
        return self

    def note(self, text: str) -> None:
        """What a process that finds the lock taken is told, after the index's name:
        a long-running holder says how to reach it instead (one line)."""
        self._write(f"{os.getpid()}\n{' '.join(text.split())}\n")

    def _write(self, text: str) -> None:
        """What the loser is told. Best effort: the lock is the flock, not this text, and
        a full disk must not stop an open (the loser then reads "pid unknown")."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, text.encode())
        except OSError:
            pass

    @staticmethod
    def _read_holder(fd: int) -> tuple[str, str]:
        """(pid, note) written by the holder."""
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            lines = os.read(fd, 4096).decode(errors="replace").splitlines()
        except OSError:
            return "unknown", ""
        pid = lines[0].strip() if lines and lines[0].strip() else "unknown"
        return pid, (lines[1].strip() if len(lines) > 1 else "")

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
