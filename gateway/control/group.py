"""One view of a group of worker processes (`kt gateway run --workers N`).

Every worker writes, twice a second, its own metrics (Prometheus text) and a small status
record into the group directory the supervisor gave it (`$KEEPTRUSTS_GATEWAY_GROUP_DIR`),
each replaced by rename. Whichever worker answers `/metrics` merges its live registry with
the others' files: counters, histograms and summaries are summed; gauges are summed where
they measure load (in flight, connections, limits, backlog), the minimum where they say
"all is well" (ready, counter store up), else the maximum. `/health` and `/keeptrusts/status`
list the workers with their revision. A worker's file is at most `PUBLISH_S` old; a file
older than `STALE_S` (a dead worker) is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

WORKER_ENV = "KEEPTRUSTS_GATEWAY_WORKER"  # this worker's index, set by the supervisor
GROUP_ENV = "KEEPTRUSTS_GATEWAY_GROUP_DIR"  # where the workers of one supervisor publish
PUBLISH_S = 0.5
STALE_S = 5.0
_SUMMED_GAUGES = frozenset({
    "keeptrusts_gateway_in_flight_requests", "keeptrusts_gateway_active_connections",
    "keeptrusts_gateway_max_connections", "keeptrusts_gateway_max_concurrency", "keeptrusts_events_pending",
})
_MIN_GAUGES = frozenset({"keeptrusts_gateway_ready", "keeptrusts_state_backend_up"})


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a supervised worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def group_dir() -> Path | None:
    value = os.environ.get(GROUP_ENV)
    return Path(value) if value and worker_index() is not None else None


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class GroupPublisher:
    """The background task of one worker: publish its metrics and status for the others."""

    def __init__(self, directory: Path, index: int, render: Any, describe: Any) -> None:
        self.directory = directory
        self.index = index
        self.render = render  # () -> bytes: this worker's metrics
        self.describe = describe  # () -> dict: this worker's status record
        self._task: asyncio.Task[None] | None = None

    def publish(self) -> None:
        _write(self.directory / f"worker-{self.index}.prom", self.render())
        _write(self.directory / f"worker-{self.index}.json",
               orjson.dumps({**self.describe(), "index": self.index, "pid": os.getpid(), "at": time.time()}))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.publish()
            await asyncio.sleep(PUBLISH_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _fresh(directory: Path, suffix: str, skip: int | None) -> list[Path]:
    now = time.time()
    found = []
    for path in sorted(directory.glob(f"worker-*{suffix}")):
        with contextlib.suppress(OSError, ValueError):
            index = int(path.name[len("worker-"):-len(suffix)])
            if index != skip and now - path.stat().st_mtime < STALE_S:
                found.append(path)
    return found


def workers(directory: Path, own: dict[str, Any] | None = None, index: int | None = None) -> list[dict[str, Any]]:
    """The status records of the live workers (`own` instead of this worker's file), by index."""
    records = [own] if own is not None else []
    for path in _fresh(directory, ".json", index):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            records.append(orjson.loads(path.read_bytes()))
    return sorted(records, key=lambda r: r.get("index", 0))


def _combine(kind: str, name: str, sample: str, values: list[float]) -> float:
    if sample.endswith("_created"):
        return min(values)
    if kind in ("counter", "histogram", "summary") or name in _SUMMED_GAUGES:
        return sum(values)
    if name in _MIN_GAUGES:
        return min(values)
    return max(values)


def merge(texts: Iterable[str]) -> list[Metric]:
    """Metric families of several workers' expositions merged into one (see the module docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            for s in family.samples:
                values[family.name].setdefault((s.name, tuple(sorted(s.labels.items()))), []).append(s.value)
    for name, family in families.items():
        for (sample, labels), vals in values[name].items():
            family.add_sample(sample, dict(labels), _combine(family.type, name, sample, vals))
    return list(families.values())


class MergedRegistry:
    """What `generate_latest` needs: `collect()` of the merged families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def render_group(own: bytes, directory: Path, index: int) -> bytes:
    """This worker's live metrics merged with the other live workers' published ones."""
    from prometheus_client import generate_latest

    texts = [own.decode()]
    live = _fresh(directory, ".prom", index)
    restarts = directory / "restarts"
    texts.append("# HELP keeptrusts_gateway_workers Worker processes serving (--workers).\n"
                 "# TYPE keeptrusts_gateway_workers gauge\n"
                 f"keeptrusts_gateway_workers {len(live) + 1}\n"
                 "# HELP keeptrusts_gateway_worker_restarts_total Workers the supervisor started again after they "
                 "exited.\n# TYPE keeptrusts_gateway_worker_restarts_total counter\n"
                 f"keeptrusts_gateway_worker_restarts_total {_read_int(restarts)}\n")
    for path in live:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            texts.append(path.read_text())
    return generate_latest(MergedRegistry(merge(texts)))  # type: ignore[arg-type]
