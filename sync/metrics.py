"""Prometheus metrics of the sync agent, on the default registry (the gateway's /metrics shows them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RESULTS = ("success", "noop", "error", "rejected")

SYNC_RUNS = Counter("keeptrusts_sync_runs", "Sync runs by result (success|noop|error|rejected).", ["result"])
SYNC_DURATION = Histogram(
    "keeptrusts_sync_duration_seconds", "Duration of one sync (fetch, export, validate, publish).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SYNC_LAST_SUCCESS = Gauge(
    "keeptrusts_sync_last_success_timestamp_seconds",
    "Unix time of the last sync that confirmed the remote head is what is published.",
)
SYNC_FAILURES = Gauge("keeptrusts_sync_consecutive_failures", "Syncs in a row that did not apply the remote head.")
SYNC_RESTORES = Counter(
    "keeptrusts_sync_restores",
    "Times the agent put the applied revision back because `current` or its files no longer matched their digest.",
)

for _result in RESULTS:
    SYNC_RUNS.labels(result=_result)


def record(result: str, duration: float, last_success: float | None, failures: int) -> None:
    """Record one finished sync."""
    SYNC_RUNS.labels(result=result).inc()
    SYNC_DURATION.observe(duration)
    if last_success is not None:
        SYNC_LAST_SUCCESS.set(last_success)
    SYNC_FAILURES.set(failures)

WEBHOOKS = Counter(
    "keeptrusts_sync_webhooks", "Webhook deliveries by result (accepted|ignored|duplicate|refused).", ["result"]
)
for _result in ("accepted", "ignored", "duplicate", "refused"):
    WEBHOOKS.labels(result=_result)
