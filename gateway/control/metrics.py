"""Prometheus metrics of the gateway, on prometheus-client's default registry.

Request metrics are derived from decision events by `observe_event` (registered on
`runtime.observers`); gauges that mirror process state (in-flight, backlog, config age,
drift) are read at scrape time from whatever `bind` was given. Labels stay bounded: models
and providers outside the running config collapse to "other", routes to known templates.
docs/metrics.md lists every metric with its labels and the alert it feeds.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from gateway.control.runtime import Runtime, Snapshot
from gateway.events.record import UNLISTED_RESULTS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# seconds to hours: a deploy is a webhook (seconds), a poll (a minute), or a review queue (hours)
DEPLOY_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
                  86400.0)
POLICY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
ROUTES = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/models", "/v1/responses"})
PHASES = frozenset({"input", "output"})
VERDICTS = frozenset({"allow", "block", "redact", "escalate", "error"})
DRIFT_REASONS = ("pending", "rejected", "unreachable", "modified", "reload_failed")
RELOAD_RESULTS = ("ok", "noop", "error")

disable_created_metrics()  # no `*_created` series: they double the exposition and nobody alerts on them

class Tally:
    """A labelled counter or histogram the event loop updates without locks; exposed at scrape time.

    prometheus-client's own metrics take a lock and walk the buckets in Python on every call:
    about 46 us for one request's dozen observations. A request's observations here are dict
    and list updates (~8 us); `collect` builds the families when Prometheus scrapes. Only the
    event loop's thread writes, and the scrape runs on that thread too.
    """

    def __init__(self, name: str, doc: str, labels: Iterable[str] = (),
                 buckets: tuple[float, ...] | None = None) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, list(labels), buckets
        self.values: dict[tuple[str, ...], Any] = {}  # counter: the value; histogram: [per-bucket..., +Inf, sum]

    def inc(self, key: tuple[str, ...] = (), amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def observe(self, key: tuple[str, ...], value: float) -> None:
        assert self.buckets is not None
        row = self.values.get(key)
        if row is None:
            row = self.values[key] = [0] * (len(self.buckets) + 1) + [0.0]
        row[bisect_left(self.buckets, value)] += 1  # first bucket with value <= le
        row[-1] += value

    def collect(self) -> Metric:
        if self.buckets is None:
            family: Metric = CounterMetricFamily(self.name, self.doc, labels=self.labels)
            for key, value in list(self.values.items()):
                family.add_metric(list(key), value)
            return family
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for key, row in list(self.values.items()):
            cumulative = list(accumulate(row[:-1]))
            family.add_metric(list(key), list(zip(bounds, cumulative, strict=True)), row[-1])
        return family


REQUESTS = Tally(
    "keeptrusts_gateway_requests_total",
    "Proxied requests by route, provider, model, HTTP status and verdict.",
    ["route", "provider", "model", "status", "verdict"],
)
REQUEST_DURATION = Tally(
    "keeptrusts_gateway_request_duration_seconds",
    "Time from request received to response finished, gateway overhead included.",
    ["route", "provider"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Tally(
    "keeptrusts_gateway_upstream_duration_seconds",
    "Time spent waiting on the upstream provider, retries included.",
    ["provider"],
    buckets=LATENCY_BUCKETS,
)
POLICY_DURATION = Tally(
    "keeptrusts_gateway_policy_evaluation_seconds",
    "Time one policy took on one phase of one request.",
    ["policy", "phase"],
    buckets=POLICY_BUCKETS,
)
POLICY_RESULTS = Tally(
    "keeptrusts_gateway_policy_evaluations_total",
    "Policy evaluations by policy and result (allow, block, redact, escalate, error).",
    ["policy", "result"],
)
TOKENS = Tally(
    "keeptrusts_gateway_tokens_total",
    "LLM tokens by direction (input, output) and model.",
    ["direction", "model"],
)
REDACTIONS = Tally("keeptrusts_gateway_redactions_total", "Spans redacted by policies.")
REDACTIONS.inc((), 0)  # exposed from the start, like prometheus-client's unlabelled counters
TALLIES = (REQUESTS, REQUEST_DURATION, UPSTREAM_DURATION, POLICY_DURATION, POLICY_RESULTS, TOKENS, REDACTIONS)
RELOADS = Counter(
    "keeptrusts_config_reloads_total",
    "Config reload attempts by result: ok (swapped), noop (content unchanged), error (refused).",
    ["result"],
)
DEPLOY_SECONDS = Histogram(
    "keeptrusts_config_deploy_seconds",
    "Seconds from the committer time of a Git revision to this gateway serving it; observed once per "
    "revision a running gateway moves to.",
    buckets=DEPLOY_BUCKETS,
)
EVENTS_STORED = Counter("keeptrusts_events_stored_total", "Decision events committed to the local event store.")
EVENTS_SUBMITTED = Counter(
    "keeptrusts_events_submitted_total", "Decision events acknowledged by the control plane."
)
EVENTS_SUBMIT_FAILURES = Counter(
    "keeptrusts_events_submission_failures_total", "Failed attempts to submit a batch of events to the control plane."
)
EVENTS_PRUNED = Counter("keeptrusts_events_pruned_total", "Events deleted from the store by retention.")
EVENTS_EVICTED = Counter(
    "keeptrusts_events_evicted_total",
    "Events deleted to keep the store under --events-max-size: delivered ones (or, with no control plane, "
    "the oldest).")


class _Count:
    """A plain count the collector reports (`keeptrusts_events_dropped_total{reason="disk_full"}`)."""

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


EVENTS_DROPPED_DISK = _Count()

for _result in RELOAD_RESULTS:
    RELOADS.labels(_result)


@dataclass
class Sources:
    """Where scrape-time values come from; all optional, filled by `bind`."""

    runtime: Runtime | None = None
    version: str = ""
    connections: Callable[[], int] | None = None
    limits: Callable[[], tuple[int, int] | None] | None = None  # (max connections, connections refused)
    store_pending: Callable[[], int | None] | None = None  # events stored but not yet submitted
    store_size: Callable[[], tuple[int, int] | None] | None = None  # (bytes on disk, --events-max-size)
    drift: Callable[[], tuple[bool, str | None]] | None = None
    age: Callable[[], float | None] | None = None


_sources = Sources()
_bounds: tuple[int, frozenset[str], frozenset[str], frozenset[str]] = (0, frozenset(), frozenset(), frozenset())


def bind(**kwargs: Any) -> Sources:
    """Point the scrape-time gauges at a running gateway's parts (replaces earlier bindings)."""
    global _sources
    _sources = Sources(**kwargs)
    return _sources


def _label_bounds(snapshot: Snapshot | None) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """Models, providers and policy kinds the running config knows; cached per config object."""
    global _bounds
    if snapshot is None:
        return frozenset(), frozenset(), frozenset()
    key = id(snapshot.config)
    if _bounds[0] != key:
        targets = snapshot.config.targets
        models = frozenset(t.model for t in targets) | frozenset(t.id for t in targets)
        _bounds = (key, models, frozenset(t.provider for t in targets), frozenset(snapshot.config.chain.kinds))
    return _bounds[1], _bounds[2], _bounds[3]


# For the running config's kinds: a policy result's (policy, phase, verdict, errored) -> its labels in
# POLICY_RESULTS and POLICY_DURATION, worked out once per combination (a request has eight results).
_policy_keys: tuple[frozenset[str], dict[tuple[Any, ...], tuple[tuple[str, str], tuple[str, str]]]] = (
    frozenset(), {})


def _policy_labels(result: dict[str, Any], kinds: frozenset[str]) -> tuple[tuple[str, str], tuple[str, str]]:
    policy, phase = result.get("policy"), result.get("phase")
    policy = policy if policy in kinds else "other"
    outcome = "error" if result.get("error") else result.get("verdict") or "allow"
    return (policy, outcome if outcome in VERDICTS else "other"), (policy, phase if phase in PHASES else "other")


def _observe_policies(results: Any, kinds: frozenset[str]) -> None:
    global _policy_keys
    if _policy_keys[0] is not kinds:
        _policy_keys = (kinds, {})
    cache = _policy_keys[1]
    counts = POLICY_RESULTS.values
    for result in results:
        try:
            raw = (result.get("policy"), result.get("phase"), result.get("verdict"), bool(result.get("error")))
            keys = cache.get(raw)
        except (AttributeError, TypeError):  # not a dict, or an unhashable value
            continue
        if keys is None:
            keys = _policy_labels(result, kinds)
            if len(cache) < 4096:
                cache[raw] = keys
        counts[keys[0]] = counts.get(keys[0], 0) + 1
        spent = result.get("latency_ms")
        if isinstance(spent, _NUMBER):
            POLICY_DURATION.observe(keys[1], spent / 1000.0)


def _count_unlisted(unlisted: Any, kinds: frozenset[str]) -> None:
    """Count the policy results an event does not list ({(policy, outcome): count}, see `RequestRecord`)."""
    counts = POLICY_RESULTS.values
    try:
        for (policy, outcome), n in unlisted.items():
            key = (policy if policy in kinds else "other", outcome if outcome in VERDICTS else "other")
            counts[key] = counts.get(key, 0) + n
    except (AttributeError, TypeError, ValueError):  # not the shape the record gives
        return


def _bounded(value: Any, allowed: frozenset[str], empty: str = "none") -> str:
    if not value:
        return empty
    return value if value in allowed else "other"


_NUMBER = (int, float)  # a tuple, not `int | float`: that builds a union object on every call


def observe_event(event: dict[str, Any]) -> None:
    """Count one decision event (an observer for `runtime.observers`). Never raises on odd input."""
    runtime = _sources.runtime
    models, providers, kinds = _label_bounds(runtime.snapshot if runtime else None)
    route = event.get("route")
    route = route if route in ROUTES else "other"
    provider = _bounded(event.get("provider"), providers)
    model = _bounded(event.get("model"), models)
    verdict = event.get("verdict")
    verdict = verdict if verdict in VERDICTS else "other"
    status = event.get("status")
    REQUESTS.inc((route, provider, model, str(status) if isinstance(status, int) else "0", verdict))
    latency = event.get("latency_ms")
    if isinstance(latency, _NUMBER):
        REQUEST_DURATION.observe((route, provider), latency / 1000.0)
    upstream = event.get("upstream_latency_ms")
    if isinstance(upstream, _NUMBER) and event.get("provider"):
        UPSTREAM_DURATION.observe((provider,), upstream / 1000.0)
    results = event.get("policies")
    if results:
        _observe_policies(results, kinds)
    unlisted = event.get(UNLISTED_RESULTS)
    if unlisted:
        _count_unlisted(unlisted, kinds)
    for direction in ("input", "output"):
        tokens = event.get(f"{direction}_tokens")
        if isinstance(tokens, int) and tokens > 0:
            TOKENS.inc((direction, model), tokens)
    redactions = event.get("redactions")
    if isinstance(redactions, int) and redactions > 0:
        REDACTIONS.inc((), redactions)


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


class _StateCollector:
    """Scrape-time gauges read from the bound runtime and its helpers."""

    def describe(self) -> Iterable[Metric]:
        return []  # values exist only while a gateway is bound; nothing to pre-declare

    def collect(self) -> Iterable[Metric]:
        src = _sources
        runtime = src.runtime
        if runtime is None:
            return
        now = time.time()
        yield _gauge("keeptrusts_gateway_info", "The running kt version.", 1, {"version": src.version})
        yield _gauge("keeptrusts_gateway_start_time_seconds", "When the gateway process started.", runtime.started_at)
        yield _gauge("keeptrusts_gateway_ready", "1 when a config is loaded and the gateway is not draining.",
                     1 if runtime.ready else 0)
        yield _gauge("keeptrusts_gateway_in_flight_requests", "Requests being handled now.", runtime.in_flight)
        if runtime.max_concurrency:
            yield _gauge("keeptrusts_gateway_max_concurrency", "Requests allowed in flight (--max-concurrency); "
                         "past it 503 overloaded.", runtime.max_concurrency)
        state = runtime.state
        yield _gauge("keeptrusts_state_backend_up", "1 when the counter backend (spend, rates, sessions) "
                     "answers; 0 while it is unreachable.", 1 if state.up else 0, {"backend": state.kind})
        failures = CounterMetricFamily("keeptrusts_state_backend_errors",
                                       "Counter-backend calls that failed (Redis unreachable or timed out).")
        failures.add_metric([], state.failures)
        yield failures
        merged = CounterMetricFamily("keeptrusts_state_backend_merged_keys",
                                     "Counters counted on this host while Redis was unreachable (--fail-mode "
                                     "allow, settlements) that this process added to Redis when it was back.")
        merged.add_metric([], state.merged_keys)
        yield merged
        if src.connections is not None:
            yield _gauge("keeptrusts_gateway_active_connections", "Open client connections.", src.connections())
        limits = src.limits() if src.limits else None
        if limits is not None:
            yield _gauge("keeptrusts_gateway_max_connections",
                         "Client connections allowed at once (--max-connections).", limits[0])
            refused = CounterMetricFamily("keeptrusts_gateway_connections_refused",
                                          "Client connections answered 503 over --max-connections.")
            refused.add_metric([], limits[1])
            yield refused
        snap = runtime.snapshot
        if snap is not None:
            info = GaugeMetricFamily("keeptrusts_config_info", "The running config (value is always 1).",
                                     labels=["revision", "sha256", "pack", "version", "source"])
            pack = snap.config.pack
            info.add_metric([snap.revision, snap.sha256, pack.name, pack.version, snap.source], 1)
            yield info
            yield _gauge("keeptrusts_config_loaded_timestamp_seconds", "When the running config was loaded.",
                         snap.loaded_at)
            age = src.age() if src.age else None
            yield _gauge("keeptrusts_config_age_seconds",
                         "Seconds since the running config was last confirmed to match its source.",
                         now - snap.loaded_at if age is None else age)
        drifted, reason = src.drift() if src.drift else (False, None)
        drift = GaugeMetricFamily("keeptrusts_config_drift",
                                  "1 for the reason the running config differs from the desired one, else 0.",
                                  labels=["reason"])
        for name in DRIFT_REASONS:
            drift.add_metric([name], 1 if drifted and reason == name else 0)
        yield drift
        dropped = CounterMetricFamily("keeptrusts_events_dropped",
                                      "Decision events lost: the in-memory queue was full (reason=queue_full), "
                                      "or undelivered events deleted for room under --events-max-size or on a "
                                      "full disk (reason=disk_full).", labels=["reason"])
        dropped.add_metric(["queue_full"], runtime.events.dropped)
        dropped.add_metric(["disk_full"], EVENTS_DROPPED_DISK.value)
        yield dropped
        size = src.store_size() if src.store_size else None
        if size is not None:
            yield _gauge("keeptrusts_events_store_bytes",
                         "Bytes the event store takes on disk (database, WAL and its index, reserve).", size[0])
            yield _gauge("keeptrusts_events_store_max_bytes", "The event store's cap (--events-max-size).", size[1])
        pending = GaugeMetricFamily("keeptrusts_events_pending",
                                    "Event backlog: in the memory queue (stage=queue) or stored but not yet "
                                    "submitted to the control plane (stage=submission).", labels=["stage"])
        pending.add_metric(["queue"], len(runtime.events))
        backlog = src.store_pending() if src.store_pending else None
        if backlog is not None:
            pending.add_metric(["submission"], backlog)
        yield pending


class _TallyCollector:
    """The per-request tallies, built into metric families at scrape time."""

    def describe(self) -> Iterable[Metric]:
        return [tally.collect() for tally in TALLIES]

    def collect(self) -> Iterable[Metric]:
        return [tally.collect() for tally in TALLIES]


_collector = _StateCollector()
REGISTRY.register(_TallyCollector())
REGISTRY.register(_collector)


def render() -> bytes:
    """The default registry in Prometheus text format."""
    return generate_latest(REGISTRY)
