"""The event store's files on disk: what they take, the reserve kept for a full disk, full-disk
errors, and the lock its writers take turns under."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

SQLITE_FULL = 13
SETUP_TIMEOUT_S = 60.0  # how long a process waits while another sets a shared file up (a VACUUM may take long)


def file_bytes(path: Path) -> int:
    """Bytes the store takes on disk: the database file, its write-ahead log, its shared-memory index, its reserve."""
    total = 0
    for name in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-reserve"))):
        with contextlib.suppress(OSError):
            total += name.stat().st_size
    return total


def make_reserve(reserve: Path, size: int) -> None:
    """Keep `<db>-reserve` (`size` bytes, the WAL's share): on a full disk, deleting it lets the WAL be
    checkpointed into the database file, where the events that make room are deleted."""
    if reserve.exists():
        return
    try:
        with open(reserve, "wb") as out:
            os.posix_fallocate(out.fileno(), 0, size)
    except OSError:
        reserve.unlink(missing_ok=True)


class WriterLock:
    """`<db>-lock`: one writer of a SQLite file at a time, across the threads and processes (`--workers`)
    that write it. The event store holds it from a batch's first row to the checkpoint after it, so no
    writer appends to the WAL while another one's checkpoint is due; every shared file holds it while it
    is set up (WAL mode, schema), which SQLite's busy timeout does not cover (two workers starting at once
    got "database is locked" at once). An flock(2): the kernel releases it when its holder dies.

    The lock is the file at the path, not a file once opened: after taking the flock the holder checks
    that its open file still is the one at the path (device and inode) and, when the path was deleted or
    replaced meanwhile, opens the path again and retries, so every holder locks the same file."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout  # as SQLite's busy_timeout: then the batch waits in memory and is retried
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _at_path(self) -> bool:
        """Whether the open file is the one at the path now (not deleted, not replaced)."""
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd)
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    @contextlib.contextmanager
    def held(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock (waiting up to `timeout`, by default the lock's, else `sqlite3.OperationalError`,
        as a busy store)."""
        deadline, pause = time.monotonic() + (self.timeout if timeout is None else timeout), 0.001
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(f"{self.path} is locked by another writer") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            if self._at_path():
                break
            fd, self._fd = self._fd, self._open()  # the file was deleted or replaced: lock the one there now
            os.close(fd)  # (closing it releases the flock on the old file)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the file; a second call does nothing (closing the number twice could close a
        file or socket opened since under the same number)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's SQLITE_FULL (ENOSPC on a write, or the file at its largest)."""
    return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc)
