"""The steps every POST proxy route runs, in order.

One request: take the config snapshot once (`AuthedHandler`) -> the body (`body_json`) -> the
Exchange for the chain (`exchange`) -> counters (`reserve`) -> input policies (`run_input`; their
redactions change what goes upstream) -> targets for the model (`plan`) -> the attempts with
fallback, backoff and a breaker per target (`with_fallback`) -> usage and cost (`account`). The
route modules (chat, messages, embeddings) add the output policies and the answer in the client's
format; the record goes to `runtime.record` when the request finishes (no I/O).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import orjson

from gateway.control.state_backend import StateUnavailable
from gateway.providers.upstream import UpstreamFailure, unavailable_reason
from gateway.proxy.base import AuthedHandler
from gateway.proxy.errors import GatewayError, invalid
from gateway.proxy.resilience import MAX_RETRY_AFTER_S, attempt_plan, backoff_delay
from gateway.proxy.validate import MAX_JSON_DEPTH, nested_deeper
from policies.agents import agent_claims, agent_usage, check_agent_limits
from policies.model import ChainOutcome, Exchange, Phase, PolicyResult, Target, Verdict
from policies.pricing import cost_usd

log = logging.getLogger("kt.gateway")
T = TypeVar("T")

_NOT_IDENTITY = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization"})
# Headers whose one value policies decide on (rbac roles, per-user and per-agent budgets, sessions).
_ONE_VALUE = frozenset({"x-user-id", "x-agent-id", "x-user-role", "x-session-id"})


def identity_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request's headers for the policies (names lower-cased, no credentials).

    An identity header given twice is refused: a front proxy that appends its own `X-User-ID`
    beside the client's must not leave the choice of value to the order of the lines."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in _NOT_IDENTITY:
            continue
        if key in headers and key in _ONE_VALUE:
            raise invalid(f"header {name} is given more than once; send it once", "duplicate_identity_header")
        headers[key] = value
    return headers


_BUDGET_REASONS = frozenset({"budget_exceeded", "agent_budget_exceeded"})


def blocks(outcome: ChainOutcome) -> bool:
    """Whether the outcome stops the request (a block, or an escalation to a human)."""
    return outcome.verdict is Verdict.BLOCK or outcome.verdict is Verdict.ESCALATE


def policy_error(outcome: ChainOutcome, blocked_code: str) -> GatewayError:
    """The error for an outcome that `blocks`.

    Raise it straight from the call (`raise policy_error(...)`), not from a local variable
    (docs/gateway.md, "Requests and the garbage collector", rule 2).
    """
    if outcome.verdict is Verdict.ESCALATE:
        return GatewayError(
            409, "policy_violation", "escalation_required",
            outcome.message or f"policy {outcome.policy} requires human review ({outcome.reason_code})", outcome.policy,
        )
    if outcome.reason_code == "policy_error":
        return GatewayError(
            503, "policy_error", "policy_error",
            f"policy {outcome.policy} failed while checking this request and --fail-mode is block",
            outcome.policy,
        )
    code = "budget_exceeded" if outcome.reason_code in _BUDGET_REASONS else blocked_code
    return GatewayError(
        409, "policy_violation", code,
        outcome.message or f"blocked by policy {outcome.policy} ({outcome.reason_code})", outcome.policy,
    )


class ProxyHandler(AuthedHandler):
    """Base of the POST proxy routes: body limit, JSON parsing, policies, fallback."""

    methods = frozenset({"POST"})
    limited = True

    def __init__(self, settings: dict[str, Any], connection: Any) -> None:
        super().__init__(settings, connection)
        self._chunks: list[bytes] = []
        self._size = 0
        self.sent_any = False  # bytes of a streamed answer reached the client
        self.target: Target | None = None  # the target of the current (last) attempt
        self.client_gone = False

    def body_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.services.max_body_size:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()

    def on_connection_close(self) -> None:
        self.client_gone = True

    def body_json(self) -> dict[str, Any]:
        limit = self.services.max_body_size
        if self._size > limit:
            raise GatewayError(413, "validation_error", "request_too_large",
                               f"request body is {self._size} bytes; this gateway accepts at most {limit} "
                               "(--max-body-size)")
        try:
            data = b"".join(self._chunks)
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"request body is not valid JSON ({exc}); send a JSON object", "invalid_json") from None
        if not isinstance(body, dict):
            raise invalid("request body must be a JSON object", "invalid_json")
        if nested_deeper(body, data, MAX_JSON_DEPTH):
            raise invalid(f"request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
        return body

    # --- shared steps ---------------------------------------------------------------------
    def exchange(self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 max_tokens: int | None, request: dict[str, Any] | None = None) -> tuple[Exchange, list[Target]]:
        """The Exchange for the chain (on the canonical `request`, rewritten in place), and the targets for `model`."""
        assert self.snap is not None
        config = self.snap.config
        targets = config.targets_for(model)
        if not targets:
            models = sorted({t.model for t in config.targets} | {t.id for t in config.targets}
                            | set(config.model_groups))
            raise invalid(f"model {model!r} is not served by this gateway; available models: "
                          f"{', '.join(models) or '(none configured)'}", "model_not_found")
        headers = identity_headers(self.request.headers.get_all())
        ex = Exchange(model=model, messages=messages, tools=tools, headers=headers, targets=list(targets),
                      max_tokens=max_tokens, request=request or {})
        self.tally = ex.tally
        rec = self.record
        rec.model = model
        rec.user_id, rec.agent_id = ex.user_id, ex.agent_id
        rec.session_id, rec.user_role = ex.session_id, ex.user_role
        rec.prompt_sha256 = hashlib.sha256("\n".join(ex.iter_texts()).encode()).hexdigest()
        return ex, targets

    async def reserve(self, ex: Exchange, phase: Phase) -> None:
        """Reserve the counters the phase needs (and, on input, the agent's) in one call to the backend.

        Output claims that only add (settling spend) are queued and sent after the answer
        (`on_finish`), so they cost the request no round trip."""
        assert self.snap is not None
        config = self.snap.config
        if not config.enabled:
            return
        chain = config.chain
        claims = agent_claims(config.agents, ex) if phase is Phase.INPUT and config.agents and ex.agent_id else []
        if chain.counting[phase]:
            claims += chain.claims(ex, phase)
            ex.tally.ready = phase
        if not claims:
            return
        if phase is Phase.OUTPUT and all(c.limit is None for c in claims):
            ex.tally.queued += claims
            return
        try:
            ex.tally.record(claims, await self.runtime.state.reserve(chain.namespace, claims))
        except StateUnavailable as exc:
            raise GatewayError(503, "api_error", "state_unavailable",
                               f"{exc}; this request needs a shared counter and --fail-mode is block",
                               headers={"Retry-After": "1"}) from None

    def run_input(self, ex: Exchange) -> None:
        """Input-phase policies; raise the 409/503 envelope on a block."""
        assert self.snap is not None
        if not self.snap.config.enabled:
            return
        self.check_agent(ex)
        trace = self.record.trace
        started = time.time_ns() if trace is not None else 0
        outcome = self.snap.config.chain.run_input(ex, self.runtime.fail_mode)
        if trace is not None:
            trace.child("input_chain", started, {"kt.verdict": outcome.verdict._value_,
                                                  "kt.policy": outcome.policy or ""})
        self.record.add_outcome(outcome)
        if blocks(outcome):
            raise policy_error(outcome, "input_blocked")

    def check_agent(self, ex: Exchange) -> None:
        """Per-agent limits (`agents:` by X-Agent-ID): 429 + Retry-After on rate, 409 budget_exceeded on spend."""
        assert self.snap is not None
        agents = self.snap.config.agents
        if not agents or not ex.agent_id:
            return
        decision = check_agent_limits(agents, ex, self.runtime.policy_state,
                                      namespace=self.snap.config.chain.namespace)
        if decision is None:
            return
        result = PolicyResult("agents", Phase.INPUT, decision.verdict, decision.reason_code, decision.message)
        self.record.add_outcome(ChainOutcome(decision.verdict, decision.reason_code, (result,), "agents",
                                                 decision.message))
        if decision.retry_after_s is not None:
            raise GatewayError(429, "rate_limit", "rate_limited", decision.message, "agents",
                               headers={"Retry-After": str(decision.retry_after_s)})
        raise GatewayError(409, "policy_violation", "budget_exceeded", decision.message, "agents")

    def account(self, ex: Exchange) -> None:
        """Once usage is known: the cost, and the agent's spend; `ex.model` becomes the model that answered."""
        assert self.snap is not None
        target = self.target
        if target is None:
            return
        ex.model = target.model
        config = self.snap.config
        prices = config.prices  # resolved when the config compiled
        self.record.cost_usd = round(cost_usd(target.model, ex.input_tokens, ex.output_tokens, prices), 8)
        if config.agents and ex.agent_id:
            ex.tally.queued += agent_usage(config.agents, ex, prices)[1]

    def plan(self, ex: Exchange, usable: Callable[[Target], bool] = lambda t: True) -> list[Target]:
        """The targets of each attempt: available ones (secret present) in strategy order, 1 + max_retries."""
        assert self.snap is not None
        fallback = self.snap.config.fallback
        ok, missing = [], []
        for target in ex.targets:
            reason = unavailable_reason(target) if usable(target) else f"provider {target.provider} cannot serve this"
            (missing.append(f"{target.id}: {reason}") if reason else ok.append(target))
        if not ok:
            detail = "; ".join(missing) or "the policies left no target"
            raise GatewayError(503, "upstream_error", "no_available_target",
                               f"no target can serve model {ex.model!r} ({detail})")
        group = self.snap.config.model_groups.get(ex.model)
        if group is not None:  # weights pick the first attempt; the others, heaviest first, are the fallback
            ok = group.order(ok, random.random())
        elif fallback.strategy == "round-robin":
            ok = self.services.round_robin.rotate(ex.model, ok)
        return attempt_plan(ok, fallback.max_retries)

    async def with_fallback(self, plan: list[Target], call: Callable[[Target], Awaitable[T]]) -> T | None:
        """Run `call` on the plan's targets until one succeeds; retries, backoff, breakers.

        Returns None when a stream failed after its first byte (the error event is already sent).
        """
        assert self.snap is not None
        retry_on = self.snap.config.fallback.retry_on
        breakers = self.services.breakers
        rec = self.record
        last: UpstreamFailure | None = None
        previous: Target | None = None
        for target in plan:
            breaker = breakers.get(target.id)
            if not breaker.allow():
                continue
            if rec.attempts:
                delay = backoff_delay(rec.attempts)
                if last is not None and last.retry_after is not None and previous is not None \
                        and previous.id == target.id:
                    if last.retry_after > MAX_RETRY_AFTER_S:
                        breaker.release()
                        break
                    delay = max(delay, last.retry_after)
                await asyncio.sleep(delay)
            rec.attempts += 1
            rec.target, rec.provider = target.id, target.provider
            self.target = target
            trace = rec.trace
            if trace is not None:
                span_id, started_ns = trace.attempt_id(), time.time_ns()
                attrs = {"gen_ai.request.model": target.model, "gen_ai.provider.name": target.provider,
                         "gen_ai.system": target.provider, "kt.target": target.id, "kt.attempt": rec.attempts}
            started = time.perf_counter()
            try:
                result = await call(target)
            except UpstreamFailure as failure:
                if trace is not None:
                    trace.child(f"upstream {target.id}", started_ns, {**attrs, "error.type": failure.kind}, span_id)
                rec.upstream_ms += (time.perf_counter() - started) * 1000.0
                breaker.failure() if failure.target_failed else breaker.success()
                log.warning("request %s: attempt %d on %s failed: %s", self.request_id, rec.attempts, target.id,
                            failure.message)
                if failure.committed:
                    rec.status, rec.error_code = 200, failure.error().code
                    return None
                last, previous = failure.with_traceback(None), target  # docs/gateway.md "Requests and the GC" rule 3
                if not failure.retryable(retry_on):
                    raise failure.error() from None
                continue
            except BaseException:  # cancelled (the client went away) or a bug: the time spent still counts
                rec.upstream_ms += (time.perf_counter() - started) * 1000.0
                breaker.release()
                raise
            rec.upstream_ms += (time.perf_counter() - started) * 1000.0
            if trace is not None:
                trace.child(f"upstream {target.id}", started_ns, attrs, span_id)
            breaker.success()
            return result
        if last is None:
            cooldown = breakers.cooldown_s
            raise GatewayError(503, "upstream_error", "circuit_open",
                               f"every target of model {plan[0].model!r} is failing (circuit breaker open); "
                               f"retry in about {cooldown:g} s", headers={"Retry-After": str(max(1, round(cooldown)))})
        raise last.error()

    def record_usage(self, ex: Exchange, usage: Any) -> None:
        if isinstance(usage, dict):
            ex.input_tokens = int(usage.get("prompt_tokens") or 0)
            ex.output_tokens = int(usage.get("completion_tokens") or 0)
            self.record.input_tokens, self.record.output_tokens = ex.input_tokens, ex.output_tokens

