"""The SQLite files the workers of one host share (counters.db, events.db): processes that open a
fresh file at the same moment all get it (`--workers N` starting, or one started again while the
others serve). Before the setup lock, switching the file to WAL mode answered one of them
"database is locked" at once, and that worker died at start."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from gateway.control.counters_sqlite import SqliteCounters
from gateway.events.store import EventStore

PROCESSES = 6
ROUNDS = 15


def open_at(kind: str, path: str, at: float) -> str:
    """Open `path` as `kind` at wall-clock time `at` (so the processes start together); what happened."""
    while time.time() < at:
        pass
    try:
        (SqliteCounters if kind == "counters" else EventStore)(path).close()
    except Exception as exc:  # the test reports what each process saw
        return repr(exc)
    return "ok"


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as executor:
        list(executor.map(time.sleep, [0.01] * PROCESSES))  # every process up and imported
        yield executor


@pytest.mark.parametrize("kind", ["counters", "events"])
def test_processes_opening_one_fresh_file_at_once_all_get_it(tmp_path: Path, pool, kind: str) -> None:
    for round_ in range(ROUNDS):
        path = str(tmp_path / f"{round_}.db")
        at = time.time() + 0.05
        outcomes = list(pool.map(open_at, [kind] * PROCESSES, [path] * PROCESSES, [at] * PROCESSES))
        assert outcomes == ["ok"] * PROCESSES, f"round {round_}: {outcomes}"
