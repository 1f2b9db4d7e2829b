"""An exclusive, non-blocking lock that tells the loser who holds it.

An edge shard opened by two processes at once fails in the second and corrupts the
first one's next flush, so every open of an embedded collection takes this lock
first. flock is released by the kernel when the holder dies, even by kill -9, so a
crashed ingest never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import ClipsearchError


class InUseError(ClipsearchError):
    pass


class ExclusiveLock:
    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "ExclusiveLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder(fd)
            os.close(fd)
            raise InUseError(f"{self.what} is in use by pid {holder}; wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    @staticmethod
    def _read_holder(fd: int) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 64).decode().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
