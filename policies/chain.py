"""The chain: runs compiled policies in order on a request, a response, or a stream.

Order is meaning. The first BLOCK short-circuits; redactions compose in chain order (each
policy sees the text as the ones before it left it). A policy that raises is an error, not
a verdict: `fail_mode="block"` fails the request closed, `"allow"` lets it pass and records
the error in the result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from policies.counters import Claim
from policies.kinds.base import Decision, Policy, apply_hits
from policies.model import ChainOutcome, Exchange, Phase, PolicyResult, Verdict

FAIL_MODES = ("block", "allow")
# Stream-guard channels whose text stands for something kt cannot redact (an audio answer's
# transcript says what its sound says): there a policy's redaction blocks instead.
UNREDACTABLE = frozenset({"transcript"})


def _result(policy: Policy, phase: Phase, decision: Decision | None, started: float) -> PolicyResult:
    latency_ms = (time.perf_counter() - started) * 1000.0
    if decision is None:
        return PolicyResult(policy.kind, phase, Verdict.ALLOW, "passed", "", 0, latency_ms)
    return PolicyResult(
        policy.kind,
        phase,
        decision.verdict,
        decision.reason_code,
        decision.message,
        decision.redactions,
        latency_ms,
    )


def _error_result(policy: Policy, phase: Phase, exc: Exception, started: float, fail_mode: str) -> PolicyResult:
    verdict = Verdict.BLOCK if fail_mode == "block" else Verdict.ALLOW
    return PolicyResult(
        policy.kind,
        phase,
        verdict,
        "policy_error",
        f"policy {policy.kind} failed: {type(exc).__name__}",
        latency_ms=(time.perf_counter() - started) * 1000.0,
        error=f"{type(exc).__name__}: {exc}"[:500],
    )


def summarize(results: Sequence[PolicyResult]) -> ChainOutcome:
    """Fold per-policy results into the phase's outcome (the first BLOCK, else ESCALATE, else REDACT decides)."""
    results = tuple(results)
    decisive: PolicyResult | None = None
    rank = 0
    redactions = 0
    errored = False
    allow, block, escalate = Verdict.ALLOW, Verdict.BLOCK, Verdict.ESCALATE
    for r in results:  # one pass: this runs twice per request
        if r.redactions:
            redactions += r.redactions
        if r.error:
            errored = True
        verdict = r.verdict
        if verdict is not allow:
            this = 3 if verdict is block else 2 if verdict is escalate else 1  # else: REDACT
            if this > rank:
                decisive, rank = r, this
    if decisive is None:
        return ChainOutcome(Verdict.ALLOW, "all_policies_passed", results, None, "", redactions, errored)
    return ChainOutcome(decisive.verdict, decisive.reason_code, results, decisive.policy, decisive.message,
                        redactions, errored)


@dataclass(frozen=True)
class Chain:
    """The compiled, ordered policies of one config."""

    policies: tuple[Policy, ...] = ()
    namespace: str = ""  # counter keys are namespaced by this (the pack name)
    input_policies: tuple[Policy, ...] = field(init=False)
    output_policies: tuple[Policy, ...] = field(init=False)
    output_text_policies: tuple[Policy, ...] = field(init=False)  # those of the output phase that scan text
    stream_window: int = field(init=False)
    counting: dict[Phase, tuple[Policy, ...]] = field(init=False)

    def __post_init__(self) -> None:
        inputs = tuple(p for p in self.policies if Phase.INPUT in p.phases)
        outputs = tuple(p for p in self.policies if Phase.OUTPUT in p.phases)
        object.__setattr__(self, "input_policies", inputs)
        object.__setattr__(self, "output_policies", outputs)
        object.__setattr__(self, "output_text_policies", tuple(p for p in outputs if p.scans_text))
        object.__setattr__(self, "stream_window", max((p.window for p in outputs), default=0))
        object.__setattr__(self, "counting", {Phase.INPUT: tuple(p for p in inputs if p.counts),
                                              Phase.OUTPUT: tuple(p for p in outputs if p.counts)})

    def claims(self, ex: Exchange, phase: Phase) -> list[Claim]:
        """Every counter the phase's policies need for `ex`; the caller reserves them and sets
        `ex.tally.ready = phase` so the chain does not reserve them again."""
        claims: list[Claim] = []
        for policy in self.counting[phase]:
            claims.extend(policy.claims(ex, phase))
        return claims

    def reserve(self, ex: Exchange, phase: Phase) -> bool:
        """Reserve the phase's claims through the policies' own (synchronous) state, unless the
        caller did (`ex.tally.ready`); True when this call reserved them."""
        tally = ex.tally
        if tally.ready is phase:
            tally.ready = None
            return False
        if not self.counting[phase]:
            return False
        claims = self.claims(ex, phase)
        if claims:
            tally.record(claims, self.counting[phase][0].state.reserve(claims, self.namespace))
        return True

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(p.kind for p in self.policies)

    def _run(self, policies: tuple[Policy, ...], phase: Phase, ex: Exchange, fail_mode: str,
             texts_only: bool = False) -> ChainOutcome:
        results: list[PolicyResult] = []
        on_input = phase is Phase.INPUT
        clock = time.perf_counter
        started = clock()
        for policy in policies:  # one clock read per policy: each one's end is the next one's start
            try:
                decision = policy.check_input(ex) if on_input else \
                    policy.check_response_texts(ex) if texts_only else policy.check_output(ex)
            except Exception as exc:  # a policy bug must never take the gateway down
                result = _error_result(policy, phase, exc, started, fail_mode)
            else:
                result = _result(policy, phase, decision, started)
            results.append(result)
            if result.verdict is Verdict.BLOCK:
                break
            started = clock()
        return summarize(results)

    def run_input(self, ex: Exchange, fail_mode: str = "block") -> ChainOutcome:
        """Run input-phase policies on the request (may redact its texts, narrow targets)."""
        own = self.reserve(ex, Phase.INPUT)
        outcome = self._run(self.input_policies, Phase.INPUT, ex, fail_mode)
        if own and outcome.blocked and ex.tally.holds:
            undo = ex.tally.take_undo()  # a blocked request spends nothing; the gateway undoes its own
            self.counting[Phase.INPUT][0].state.reserve(undo, self.namespace)
        return outcome

    def run_output(self, ex: Exchange, fail_mode: str = "block") -> ChainOutcome:
        """Run output-phase policies on `ex.response_text` / `ex.response_tool_calls`."""
        self.reserve(ex, Phase.OUTPUT)
        return self._run(self.output_policies, Phase.OUTPUT, ex, fail_mode)

    def check_fields(self, ex: Exchange, fields: dict[str, Any], fail_mode: str = "block") -> ChainOutcome:
        """The text-scanning output policies on `fields` alone (an answer's parts outside its message:
        top-level `citations`, a choice's `stop_reason`), by name; no counters, no structural checks.

        A redacted field gets a new value in `fields`; `ex`'s answer texts are left as they were."""
        saved = ex.response_text, ex.response_refusal, ex.response_tool_calls, ex.response_fields
        ex.response_text, ex.response_refusal, ex.response_tool_calls, ex.response_fields = "", "", [], fields
        try:
            return self._run(self.output_text_policies, Phase.OUTPUT, ex, fail_mode, texts_only=True)
        finally:
            ex.response_text, ex.response_refusal, ex.response_tool_calls, ex.response_fields = saved

    def stream_guard(self, ex: Exchange, fail_mode: str = "block") -> StreamGuard:
        """A scanner for a streamed response; see `StreamGuard`."""
        return StreamGuard(self, ex, fail_mode)


class StreamGuard:
    """Scans one choice of a streamed response chunk by chunk with a rolling window.

    `feed(delta)` returns the text to forward now (the delta itself, or with the part of a
    match that lies in it redacted) and, when a policy blocks, the blocking outcome: the
    caller then ends the stream with an error event and forwards nothing more. A match split
    across chunks is found because each scan sees the last `window` characters already sent
    plus the new delta. Text already forwarded cannot be taken back: in streams, `block` is
    the action that guarantees nothing leaks past a match; `redact` covers what is unsent.
    The content and the refusal are two channels (`feed(delta, "refusal")`), each with its
    own window. An audio answer's transcript is a third (`"transcript"`): the sound says what the
    transcript says and cannot be redacted, so there a redaction blocks (`UNREDACTABLE`). Any
    other name is a channel of its own too (the relay feeds a reasoning delta's text as
    `"reasoning_content"`, a `reasoning_details` item's as `"reasoning_details.text"`).
    `finish()` scans the choice's whole tool calls (`ex.response_tool_calls`, redacted in
    place), runs the structural output checks and returns the phase outcome.
    """

    def __init__(self, chain: Chain, ex: Exchange, fail_mode: str) -> None:
        self.chain = chain
        self.ex = ex
        self.fail_mode = fail_mode
        self._text_policies = chain.output_text_policies
        self._tails: dict[str, str] = {}
        self._parts: dict[str, list[str]] = {"content": [], "refusal": []}
        self._results: dict[str, PolicyResult] = {}
        self._blocked: ChainOutcome | None = None

    @property
    def active(self) -> bool:
        return bool(self.chain.output_policies)

    def feed(self, delta: str, channel: str = "content") -> tuple[str, ChainOutcome | None]:
        """Scan one delta of the content (or another `channel`); return (text to forward, blocking outcome or None)."""
        if self._blocked is not None:
            return "", self._blocked
        parts = self._parts.get(channel)  # the texts `finish()` reads; other channels are not kept
        if not delta or not self._text_policies:
            if parts is not None:
                parts.append(delta)
            return delta, None
        tail = self._tails.get(channel, "")
        offset = len(tail)
        for policy in self._text_policies:
            started = time.perf_counter()
            buf = tail + delta
            try:
                hits = [h for h in policy.scan_text(buf, Phase.OUTPUT) if h.end > offset]
            except Exception as exc:
                result = _error_result(policy, Phase.OUTPUT, exc, started, self.fail_mode)
                self._record(result)
                if result.verdict is Verdict.BLOCK:
                    self._blocked = summarize(tuple(self._results.values()))
                    return "", self._blocked
                continue
            blocking = next((h for h in hits if h.verdict is not Verdict.REDACT), None)
            if blocking is None and hits and channel in UNREDACTABLE:
                blocking = hits[0]
                decision = Decision(Verdict.BLOCK, blocking.reason_code, f"policy {policy.kind} would redact "
                                    f"the answer's {channel}, and kt cannot redact the sound it transcribes")
                self._record(_result(policy, Phase.OUTPUT, decision, started))
                self._blocked = summarize(tuple(self._results.values()))
                return "", self._blocked
            if blocking is not None:
                decision = Decision(blocking.verdict, blocking.reason_code, blocking.message)
                self._record(_result(policy, Phase.OUTPUT, decision, started))
                if blocking.verdict is Verdict.BLOCK:
                    self._blocked = summarize(tuple(self._results.values()))
                    return "", self._blocked
                continue
            if hits:
                # Clip each hit to the unsent delta, then redact there.
                clipped = [
                    type(h)(max(h.start, offset) - offset, h.end - offset, h.verdict, h.reason_code,
                            h.replacement, h.message)
                    for h in hits
                ]
                delta, count = apply_hits(delta, clipped)
                decision = Decision(Verdict.REDACT, hits[0].reason_code, hits[0].message, count)
                self._record(_result(policy, Phase.OUTPUT, decision, started))
            elif policy.kind not in self._results:
                self._record(_result(policy, Phase.OUTPUT, None, started))
        if parts is not None:
            parts.append(delta)
        self._tails[channel] = (tail + delta)[-self.chain.stream_window :]
        return delta, None

    def _record(self, result: PolicyResult) -> None:
        previous = self._results.get(result.policy)
        if previous is not None and previous.verdict is not Verdict.ALLOW and result.verdict is Verdict.ALLOW:
            return
        if previous is not None:
            result = PolicyResult(
                result.policy, result.phase, result.verdict, result.reason_code, result.message,
                previous.redactions + result.redactions, previous.latency_ms + result.latency_ms, result.error,
            )
        self._results[result.policy] = result

    def texts_outcome(self) -> ChainOutcome:
        """The outcome of the texts fed so far, without `finish()`'s tool-call and structural checks."""
        return self._blocked or summarize(tuple(self._results.values()))

    def finish(self) -> ChainOutcome:
        """Check the tool calls and run the structural output checks on the whole choice; the phase outcome."""
        if self._blocked is not None:
            return self._blocked
        ex = self.ex
        ex.response_text = "".join(self._parts["content"])
        ex.response_refusal = "".join(self._parts["refusal"])
        self.chain.reserve(ex, Phase.OUTPUT)
        for policy in self.chain.output_policies:
            if policy.scans_text and not ex.response_tool_calls:
                continue
            started = time.perf_counter()
            try:
                decision = policy.check_response_texts(ex, calls_only=True) if policy.scans_text \
                    else policy.check_output(ex)
                result = _result(policy, Phase.OUTPUT, decision, started)
            except Exception as exc:
                result = _error_result(policy, Phase.OUTPUT, exc, started, self.fail_mode)
            self._record(result)
            if result.verdict is Verdict.BLOCK:
                break
        ordered = [self._results[p.kind] for p in self.chain.output_policies if p.kind in self._results]
        return summarize(ordered)
