"""Decision events: one plain dict per request, built from what the request path recorded.

Never the prompt text: only its SHA-256. Fields (docs/gateway.md lists them): id (`evt_...`),
event_type, timestamp, request_id, route, config_revision, pack_name, pack_version,
policies_enabled, verdict, reason_code, policy, policies[{policy, phase, verdict,
reason_code, latency_ms, ...}], policy_error, fail_mode, provider, target, model, stream,
status, error_code, latency_ms, upstream_latency_ms, attempts, input_tokens, output_tokens,
cost_usd, user_id, agent_id, session_id, user_role, key_label, redactions, prompt_sha256,
outcomes_unlisted.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from policies.model import ChainOutcome, Verdict
from sync.clock import rfc3339

# Phase outcomes an event lists in full (the input phase and the first choices' output phase);
# past these, only the first outcome of each verdict other than allow is listed, the rest counted.
OUTCOMES_LISTED = 8
# The event key (in this process only: `Runtime` removes it before the event is queued) of the policy
# results an event does not list, as {(policy, "allow"|"block"|"redact"|"escalate"|"error"): count}.
UNLISTED_RESULTS = "_unlisted_results"


class _Ids:
    """`<kind>_` + 32 hex digits: a random per-process prefix and a counter (a uuid4 costs a syscall each).

    Unique across processes and restarts (64 random bits per process), ordered within one;
    a forked child draws its own prefix.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._restart()
        os.register_at_fork(after_in_child=self._restart)  # not a getpid() per id: that is a syscall

    def _restart(self) -> None:
        self._prefix = f"{self.kind}_{os.urandom(8).hex()}"
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


new_event_id = _Ids("evt").next
new_request_id = _Ids("req").next


@dataclass(slots=True)
class RequestRecord:
    """What one request did, filled in as it goes; turned into the event at the end."""

    request_id: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0  # perf_counter when the response ended (0: not yet)
    timestamp: float = field(default_factory=time.time)
    revision: str | None = None
    pack_name: str | None = None
    pack_version: str | None = None
    policies_enabled: bool = True
    fail_mode: str = "block"
    model: str | None = None
    provider: str | None = None
    target: str | None = None
    stream: bool = False
    status: int = 0
    error_code: str | None = None
    outcomes: list[ChainOutcome] = field(default_factory=list)
    upstream_ms: float = 0.0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    user_role: str | None = None
    key_label: str | None = None
    prompt_sha256: str | None = None
    outcomes_unlisted: int = 0  # checked, passed or repeating a listed verdict, and not in the event
    unlisted_redactions: int = 0
    unlisted_error: bool = False
    unlisted_results: dict[tuple[str, str], int] | None = None  # (policy, outcome) -> results not listed
    trace: Any = None  # gateway.control.tracing.RequestTrace with --otlp-endpoint, else None

    def add_outcome(self, outcome: ChainOutcome) -> None:
        """Keep a phase outcome for the event; every one is counted, what is listed is capped.

        A response with many choices gives one output outcome per choice: the event lists the
        first `OUTCOMES_LISTED` and then only the first of each verdict other than allow (so the
        decisive ones always are); the others are counted in `outcomes_unlisted`, their
        redactions and policy errors still in `redactions` and `policy_error`, their policy results
        in `unlisted_results` (for the metrics, which count every evaluation).
        """
        outcomes = self.outcomes
        verdict = outcome.verdict
        if len(outcomes) < OUTCOMES_LISTED or (
                verdict is not Verdict.ALLOW and all(o.verdict is not verdict for o in outcomes)):
            outcomes.append(outcome)
            return
        self.outcomes_unlisted += 1
        self.unlisted_redactions += outcome.redactions
        self.unlisted_error = self.unlisted_error or outcome.policy_error
        tally = self.unlisted_results
        if tally is None:
            tally = self.unlisted_results = {}
        for result in outcome.results:
            key = (result.policy, "error" if result.error else result.verdict._value_)
            tally[key] = tally.get(key, 0) + 1

    def to_event(self) -> dict[str, Any]:
        """The decision event; with unlisted outcomes, also their policy results under `UNLISTED_RESULTS`
        (for the observers; not stored, not sent)."""
        verdict, reason, policy = _overall(self.outcomes, self.policies_enabled, self.error_code,
                                           self.unlisted_redactions)
        event = {
            "id": new_event_id(),
            "event_type": "decision",
            "timestamp": rfc3339(self.timestamp),
            "request_id": self.request_id,
            "route": self.route,
            "config_revision": self.revision,
            "pack_name": self.pack_name,
            "pack_version": self.pack_version,
            "policies_enabled": self.policies_enabled,
            "verdict": verdict,
            "reason_code": reason,
            "policy": policy,
            "policies": [r.as_dict() for o in self.outcomes for r in o.results],
            "policy_error": self.unlisted_error or any(o.policy_error for o in self.outcomes),
            "fail_mode": self.fail_mode,
            "provider": self.provider,
            "target": self.target,
            "model": self.model,
            "stream": self.stream,
            "status": self.status,
            "error_code": self.error_code,
            "latency_ms": round(((self.finished or time.perf_counter()) - self.started) * 1000.0, 3),
            "upstream_latency_ms": round(self.upstream_ms, 3),
            "attempts": self.attempts,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "user_role": self.user_role,
            "key_label": self.key_label,
            "redactions": self.unlisted_redactions + sum(o.redactions for o in self.outcomes),
            "prompt_sha256": self.prompt_sha256,
            "outcomes_unlisted": self.outcomes_unlisted,
        }
        if self.unlisted_results:
            event[UNLISTED_RESULTS] = self.unlisted_results
        return event


def _overall(outcomes: list[ChainOutcome], enabled: bool, error_code: str | None,
             unlisted_redactions: int = 0) -> tuple[str, str, str | None]:
    """The request's verdict, reason code and decisive policy across its phases.

    No chain ran: `policies_disabled` when the pack is off, else verdict `error` with the
    error code (a request rejected before the policies, e.g. 400/401/413).
    """
    for verdict in (Verdict.BLOCK, Verdict.ESCALATE, Verdict.REDACT):
        for o in outcomes:
            if o.verdict is verdict:
                return verdict.value, o.reason_code, o.policy
    if unlisted_redactions or any(o.redactions for o in outcomes):
        return Verdict.REDACT.value, "redacted", None
    if outcomes:
        return Verdict.ALLOW.value, "all_policies_passed", None
    if not enabled:
        return Verdict.ALLOW.value, "policies_disabled", None
    if error_code:
        return "error", error_code, None
    return Verdict.ALLOW.value, "all_policies_passed", None
