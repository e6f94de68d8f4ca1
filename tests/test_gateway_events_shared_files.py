"""The SQLite files the workers of one host share (counters.db, events.db): processes that open a
fresh file at the same moment all get it (`--workers N` starting, or one started again while the
others serve). Before the setup lock, switching the file to WAL mode answered one of them
"database is locked" at once, and that worker died at start."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from gateway.control.counters_sqlite import SqliteCounters
from gateway.events.disk import WriterLock
from gateway.events.store import EventStore

PROCESSES = 6
ROUNDS = 15


def open_together(kind: str, path: str, start: threading.Barrier) -> str:
    """Open `path` as `kind` once every process is at `start` (so they open it at the same moment); what happened."""
    start.wait(30)
    try:
        (SqliteCounters if kind == "counters" else EventStore)(path).close()
    except Exception as exc:  # the test reports what each process saw
        return repr(exc)
    return "ok"


@pytest.fixture(scope="module")
def pool():
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(PROCESSES, mp_context=context) as executor:
        yield executor, manager.Barrier(PROCESSES)  # a task waits there, so the six run in six processes at once


@pytest.mark.parametrize("kind", ["counters", "events"])
def test_processes_opening_one_fresh_file_at_once_all_get_it(tmp_path: Path, pool, kind: str) -> None:
    executor, start = pool
    for round_ in range(ROUNDS):
        path = str(tmp_path / f"{round_}.db")
        outcomes = list(executor.map(open_together, [kind] * PROCESSES, [path] * PROCESSES, [start] * PROCESSES))
        assert outcomes == ["ok"] * PROCESSES, f"round {round_}: {outcomes}"


def _gone(lock_path: Path, how: str) -> None:
    if how == "deleted":  # an operator cleaning the state dir, a tmp cleaner
        lock_path.unlink()
    else:  # another file put in its place
        other = lock_path.with_name("other")
        other.write_text("")
        os.replace(other, lock_path)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_deleted_or_replaced_lock_file_still_admits_one_writer(tmp_path: Path, how: str) -> None:
    """A writer that opened `<db>-lock` before it went and one that opened it after lock the same file."""
    path = tmp_path / "events.db-lock"
    early = WriterLock(path)
    _gone(path, how)
    late = WriterLock(path)  # a worker started again, or one that opened the path anew
    try:
        for first, second in ((late, early), (early, late)):
            with first.held(), pytest.raises(sqlite3.OperationalError, match="locked by another"), second.held(0.05):
                pass
            with second.held(0.05):  # and free again once released
                pass
        _gone(path, how)  # again while neither holds it: still one file between them
        with late.held(), pytest.raises(sqlite3.OperationalError), early.held(0.05):
            pass
        assert path.exists()
    finally:
        early.close()
        late.close()
