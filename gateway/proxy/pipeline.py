"""The proxy handlers: /v1/chat/completions, /v1/messages, /v1/embeddings, /v1/models.

One request: take the config snapshot once -> check the gateway key and the body -> build
the canonical (OpenAI chat) request -> input policies (their redactions change what goes
upstream) -> targets for the model, with fallback, backoff and a breaker per target ->
output policies on the answer (incrementally on streams) -> answer in the client's format
-> its record to `runtime.record`, which makes the decision event (no I/O).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import Any, TypeVar

import orjson
import tornado.httputil
import tornado.web
from tornado.iostream import StreamClosedError

from gateway.control.runtime import Runtime
from gateway.control.state_backend import StateUnavailable
from gateway.control.tracing import RequestTrace
from gateway.events.record import RequestRecord, new_request_id
from gateway.http.handler import Handler
from gateway.providers import adapters, translate
from gateway.providers.sse import format_sse
from gateway.providers.upstream import DONE, UpstreamFailure, unavailable_reason, upstream_text
from gateway.proxy.errors import GatewayError, invalid, not_found, not_ready
from gateway.proxy.keys import presented_key
from gateway.proxy.resilience import MAX_RETRY_AFTER_S, attempt_plan, backoff_delay
from gateway.proxy.services import services_of
from gateway.proxy.validate import MAX_JSON_DEPTH, nested_deeper, validate_chat, validate_messages
from policies.agents import agent_claims, agent_usage, check_agent_limits
from policies.model import ChainOutcome, Exchange, Phase, PolicyResult, Target, Verdict
from policies.pricing import cost_usd

log = logging.getLogger("kt.gateway")
T = TypeVar("T")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NOT_IDENTITY = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization"})
# Headers whose one value policies decide on (rbac roles, per-user and per-agent budgets, sessions).
_ONE_VALUE = frozenset({"x-user-id", "x-agent-id", "x-user-role", "x-session-id"})
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


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


_CLIENT_FAULTS = {499: "client_closed", 408: "request_timeout"}  # error codes of requests the client left unfinished
_BUDGET_REASONS = frozenset({"budget_exceeded", "agent_budget_exceeded"})


class ClientGone(Exception):
    """The client closed the connection while we were answering."""


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


def request_id_for(headers: Any) -> str:
    """The client's `X-Request-ID` when it is sane, else a new `req_<hex>`."""
    rid = headers.get_list("X-Request-ID")  # not .get(): a missing header costs a KeyError inside
    return rid[0] if rid and _REQUEST_ID.match(rid[0]) else new_request_id()


def error_for(exc: BaseException, request_id: str | None) -> GatewayError:
    """The client-facing error for whatever a handler raised (never a traceback)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, tornado.web.HTTPError) and exc.status_code < 500:
        reason = exc.reason or tornado.httputil.responses.get(exc.status_code, "error")
        return GatewayError(exc.status_code, "validation_error", reason.lower().replace(" ", "_"),
                            exc.log_message or reason)
    return GatewayError(500, "internal_error", "internal_error",
                        f"internal gateway error; the gateway log has the details (request {request_id})")


def log_unexpected(exc: BaseException, request_id: str | None) -> None:
    """Log a handler's exception with its traceback unless it is an expected client error."""
    if isinstance(exc, GatewayError) or (isinstance(exc, tornado.web.HTTPError) and exc.status_code < 500):
        return
    log.error("request %s failed", request_id, exc_info=(type(exc), exc, exc.__traceback__))


class BaseHandler(Handler):
    """Every proxy route: request id, config revision header, the error envelope, never a traceback."""

    anthropic_errors = False
    request_id: str | None = None

    def __init__(self, settings: dict[str, Any], connection: Any) -> None:
        super().__init__(settings, connection)
        self.services = services_of(settings)
        self.runtime: Runtime = self.services.runtime
        self.snap = self.runtime.snapshot
        # The code of the error answered, not the exception (docs/gateway.md, "Requests and the
        # garbage collector", rule 2).
        self.error_code: str | None = None

    def set_default_headers(self) -> None:
        if self.request_id:
            self.set_header("X-Request-ID", self.request_id)
            self.set_header("X-Keeptrusts-Config-Revision", self.snap.revision if self.snap else "none")
            if self.snap and not self.snap.config.enabled:
                self.set_header("X-Keeptrusts-Policies", "disabled")

    def prepare(self) -> None:
        self.request_id = request_id_for(self.request.headers)
        self.set_default_headers()

    def method_not_allowed(self) -> Exception:
        allowed = ", ".join(sorted(self.methods))
        return GatewayError(405, "validation_error", "method_not_allowed",
                            f"{self.request.method} is not supported on {self.request.path}; use {allowed}",
                            headers={"Allow": allowed})

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(payload if isinstance(payload, bytes) else orjson.dumps(payload))

    def handle_error(self, exc: BaseException) -> None:
        log_unexpected(exc, self.request_id)
        err = error_for(exc, self.request_id)
        self.error_code = err.code
        self.set_default_headers()
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.send_json(err.body(self.anthropic_errors), err.status)


class NotFoundHandler(tornado.web.RequestHandler):
    """Any path no route serves: 404 with the envelope (the Application's default handler)."""

    def prepare(self) -> None:
        if self.request.path.startswith("/v1/responses/"):  # retrieval of a stored response: kt stores none
            raise invalid("`store`: kt keeps no responses, so /v1/responses/{id} (retrieve, delete, input items) "
                          "cannot be answered; keep the response on the client side", "unsupported_stateful")
        raise not_found(self.request.path)

    def check_xsrf_cookie(self) -> None:  # an API: no cookies, no XSRF
        return

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = error_for(exc, None) if exc is not None else not_found(self.request.path)
        self.clear_header("Server")
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        self.finish(err.body(False))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if value is not None:
            log_unexpected(value, None)


class AuthedHandler(BaseHandler):
    """Routes that need the gateway to be ready and, with --keys-file, a gateway key."""

    limited = False  # counts against --max-concurrency (the proxy routes)

    def prepare(self) -> None:
        super().prepare()
        self.record = RequestRecord(self.request_id or "", self.request.path)
        runtime = self.runtime
        runtime.in_flight += 1
        self._counted = True
        if self.limited and runtime.max_concurrency and runtime.in_flight > runtime.max_concurrency:
            raise GatewayError(503, "unavailable", "overloaded",
                               f"this gateway is at its limit of {runtime.max_concurrency} requests in flight "
                               "(--max-concurrency); retry shortly", headers={"Retry-After": "1"})
        if not self.runtime.ready or self.snap is None:
            raise not_ready()
        snap = self.snap
        rec = self.record
        rec.revision = snap.revision
        rec.pack_name = snap.config.pack.name
        rec.pack_version = snap.config.pack.version
        rec.policies_enabled = snap.config.enabled
        rec.fail_mode = self.runtime.fail_mode
        if runtime.tracer is not None:
            rec.trace = RequestTrace.begin(self.request.headers.get("traceparent"))
        keys = self.services.keys
        if keys is not None:
            headers = self.request.headers
            label = keys.label_for(presented_key(headers.get("Authorization"), headers.get("X-Api-Key")))
            if label is None:
                raise GatewayError(401, "authentication_error", "invalid_api_key",
                                   "missing or invalid gateway key: send it as 'Authorization: Bearer <key>' "
                                   "or in the 'x-api-key' header")
            rec.key_label = label

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            self.runtime.in_flight -= 1
            tally = getattr(self, "tally", None)
            if tally is not None and (tally.queued or tally.holds) and self.snap is not None:
                # usage settled after the answer, and every reservation the request did not use given back
                self.runtime.state.apply_later(self.snap.config.chain.namespace, tally.queued + tally.take_undo())
                tally.queued = []
            rec = self.record
            rec.status = rec.status or self.get_status()
            if rec.error_code is None and rec.status in _CLIENT_FAULTS:
                rec.error_code = _CLIENT_FAULTS[rec.status]
            if rec.error_code is None:
                rec.error_code = self.error_code
            if self.emits_event:
                rec.finished = time.perf_counter()
                self.runtime.record(rec)

    emits_event = True


class ModelsHandler(AuthedHandler):
    """GET /v1/models: the configured targets' models, with their availability."""

    emits_event = False
    methods = frozenset({"GET"})

    def get(self) -> None:
        assert self.snap is not None
        data: dict[str, dict[str, Any]] = {}
        for target in self.snap.config.targets:
            entry = data.get(target.model)
            if entry is None:
                entry = data[target.model] = {**adapters.model_entry(target), "targets": [], "available": False}
            entry["targets"].append(target.id)
            entry["available"] = entry["available"] or unavailable_reason(target) is None
        for group in self.snap.config.model_groups.values():
            data[group.name] = {"id": group.name, "object": "model", "created": 0, "owned_by": "kt-model-group",
                                "targets": [t.id for t in group.targets],
                                "available": any(unavailable_reason(t) is None for t in group.targets)}
        self.send_json({"object": "list", "data": list(data.values())})


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


class ChatHandler(ProxyHandler):
    """POST /v1/chat/completions (OpenAI format, JSON and SSE)."""

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        """The canonical request: the body itself, checked."""
        return validate_chat(body)

    # --- client-format hooks (overridden for Anthropic clients) ----------------------------
    def answer(self, resp: dict[str, Any], raw: bytes | None) -> None:
        try:
            body = raw if raw is not None else orjson.dumps(resp)
        except orjson.JSONEncodeError as exc:
            raise self.unrelayable(exc).error() from None
        self.send_json(body)

    def sse(self, chunks: list[dict[str, Any]]) -> bytes:
        try:
            return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
        except orjson.JSONEncodeError as exc:
            raise self.unrelayable(exc) from None

    def unrelayable(self, exc: Exception) -> UpstreamFailure:
        """An answer read but not encodable for the client (nested too deep, untranslatable): a 502, not a 500."""
        target = self.target
        if target is None:
            return UpstreamFailure("bad_response", f"the upstream sent an answer kt cannot relay: {exc}")
        return UpstreamFailure("bad_response", f"target {target.id} ({target.provider}) sent an answer kt cannot "
                               f"relay: {upstream_text(target, str(exc), 200)}")

    def sse_done(self) -> bytes:
        return b"data: [DONE]\n\n"

    # --- the upstream call of one attempt (overridden for Responses clients) ---------------
    def upstream_complete(self, target: Target, req: dict[str, Any]) -> Awaitable[tuple[dict[str, Any], bytes | None]]:
        return adapters.complete(self.services.upstream, target, req)

    def upstream_stream(self, target: Target, req: dict[str, Any]) -> AsyncIterator[adapters.Batch]:
        return adapters.stream(self.services.upstream, target, req)

    def sse_error(self, err: GatewayError) -> bytes:
        return translate.openai_stream_error(err.type, err.message, err.code, err.policy)

    # --- the route -------------------------------------------------------------------------
    async def post(self) -> None:
        req = self.canonical(self.body_json())
        self.client_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        ex, _ = self.exchange(req["model"], req["messages"], req.get("tools") or [],
                              req.get("max_completion_tokens") or req.get("max_tokens"), req)
        await self.reserve(ex, Phase.INPUT)
        self.run_input(ex)  # its redactions rewrite `req` where each text stands
        plan = self.plan(ex)
        if req.get("stream"):
            self.record.stream = True

            async def call_stream(target: Target) -> bool:
                async with aclosing(self.upstream_stream(target, req)) as batches:
                    await self.relay(batches, ex)
                return True

            await self.with_fallback(plan, call_stream)
            return
        result = await self.with_fallback(plan, lambda target: self.upstream_complete(target, req))
        assert result is not None
        resp, raw = result
        self.record_usage(ex, resp.get("usage"))
        self.account(ex)
        if await self.check_output(resp, ex):
            raw = None
        self.answer(resp, raw)

    async def check_output(self, resp: dict[str, Any], ex: Exchange) -> bool:
        """`run_output`, as the `output_chain` span when the request is traced."""
        trace = self.record.trace
        if trace is None:
            return await self.run_output(resp, ex)
        started = time.time_ns()
        try:
            return await self.run_output(resp, ex)
        finally:
            trace.child("output_chain", started, {})

    async def run_output(self, resp: dict[str, Any], ex: Exchange) -> bool:
        """Output policies on every choice (content, refusal, tool calls); True when a redaction changed the answer."""
        assert self.snap is not None
        config = self.snap.config
        if not config.enabled or not config.chain.output_policies:
            return False
        changed = False
        for choice in resp.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            content, refusal = message.get("content"), message.get("refusal")
            ex.response_text = text = content if isinstance(content, str) else _parts_text(content)
            ex.response_refusal = refusal if isinstance(refusal, str) else ""
            ex.response_tool_calls = calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
            if isinstance(message.get("function_call"), dict):  # legacy: checked like a tool call
                calls.append({"type": "function", "function": message["function_call"]})
            await self.reserve(ex, Phase.OUTPUT)
            outcome = config.chain.run_output(ex, self.runtime.fail_mode)
            self.record.add_outcome(outcome)
            if blocks(outcome):
                raise policy_error(outcome, "output_blocked")
            if ex.response_text != text:
                message["content"] = ex.response_text
            if ex.response_refusal != (refusal if isinstance(refusal, str) else ""):
                message["refusal"] = ex.response_refusal
            changed = changed or bool(outcome.redactions) or ex.response_text != text  # tool calls: in place
        return changed

    # --- streams ---------------------------------------------------------------------------
    async def write_sse(self, data: bytes) -> None:
        if not self.sent_any:
            for name, value in _SSE_HEADERS.items():
                self.set_header(name, value)
        if self.client_gone:
            raise ClientGone
        self.write(data)
        try:
            await self.flush()
        except StreamClosedError:
            raise ClientGone from None
        self.sent_any = True

    async def relay(self, batches: AsyncIterator[adapters.Batch], ex: Exchange) -> None:
        """Forward a stream chunk by chunk through the stream guards; withhold tool calls and the final chunks.

        Content and refusal deltas are scanned (one guard per choice) and forwarded at once. With
        output policies, tool-call deltas are withheld and merged: each choice's whole calls are
        checked (and redacted inside their JSON arguments) by `finish()`, then sent in one chunk
        per choice before the held finish chunks (and usage). Every choice is checked; a block
        ends the stream with an error event in the client's format (a 409 when nothing was sent yet).
        """
        assert self.snap is not None
        config = self.snap.config
        active = config.enabled and bool(config.chain.output_policies)
        guards: dict[int, Any] = {}
        tools: dict[int, dict[int, dict[str, Any]]] = {}
        held: list[dict[str, Any]] = []
        first: dict[str, Any] | None = None  # a chunk of the stream, for the fields of the tool-call chunks
        try:
            async for batch in batches:
                out: list[dict[str, Any]] = []
                for chunk in batch:
                    if chunk is DONE:
                        break
                    if "error" in chunk and not chunk.get("choices"):
                        raise UpstreamFailure("5xx", f"target {self.record.target} failed mid-stream: "
                                              f"{str((chunk.get('error') or {}).get('message', ''))[:200]}")
                    if chunk.get("usage"):
                        self.record_usage(ex, chunk["usage"])
                    hold = withheld = False
                    choices = chunk.get("choices")
                    for choice in choices or ():
                        index = choice.get("index", 0)
                        delta = choice.get("delta") or {}
                        if active:
                            for channel in ("content", "refusal"):
                                text = delta.get(channel)
                                if not isinstance(text, str) or not text:
                                    continue
                                guard = guards.get(index) or guards.setdefault(
                                    index, config.chain.stream_guard(ex, self.runtime.fail_mode))
                                forward, blocked = guard.feed(text, channel)
                                if blocked is not None:
                                    self.record.add_outcome(blocked)
                                    if out:  # what passed before the match still goes out first
                                        await self.write_sse(self.sse(out))
                                    await self.end_blocked(blocked)
                                    return
                                if forward != text:
                                    delta[channel] = forward
                            if delta.get("tool_calls"):  # withheld until the choice's calls are whole and checked
                                _merge_tool_calls(tools.setdefault(index, {}), delta.pop("tool_calls"))
                                first, withheld = first or chunk, True
                        elif delta.get("tool_calls"):
                            _merge_tool_calls(tools.setdefault(index, {}), delta["tool_calls"])
                        if choice.get("finish_reason"):
                            hold = True
                    if withheld:  # drop the choices that only carried tool-call deltas
                        chunk["choices"] = choices = [c for c in choices if c.get("delta") or c.get("finish_reason")]
                        if not choices and not chunk.get("usage"):
                            continue
                    if not self.client_usage and "usage" in chunk:
                        if not chunk.get("choices"):
                            continue
                        del chunk["usage"]
                    if hold or held:
                        held.append(chunk)
                    else:
                        out.append(chunk)
                if out:
                    await self.write_sse(self.sse(out))
            self.account(ex)
            if active:
                for index in sorted(set(guards) | set(tools) | {0}):  # every choice, however many
                    guard = guards.get(index) or config.chain.stream_guard(ex, self.runtime.fail_mode)
                    ex.response_tool_calls = list(tools.get(index, {}).values())
                    await self.reserve(ex, Phase.OUTPUT)
                    outcome = guard.finish()
                    self.record.add_outcome(outcome)
                    if blocks(outcome):
                        await self.end_blocked(outcome)
                        return
                if tools and first is not None:
                    held[:0] = [_tool_calls_chunk(first, index, tools[index]) for index in sorted(tools)]
            await self.write_sse(self.sse(held) + self.sse_done())
            self.finish()
        except ClientGone:
            self.record.status, self.record.error_code = 499, "client_closed"
        except UpstreamFailure as failure:
            if self.sent_any:
                failure.committed = True
                err = failure.error()
                self.error_code = err.code
                with _quiet():
                    await self.write_sse(self.sse_error(err))
                    self.finish()
            raise

    async def end_blocked(self, outcome: ChainOutcome) -> None:
        if not self.sent_any:
            raise policy_error(outcome, "output_blocked")  # nothing reached the client yet: a plain 409/503
        err = policy_error(outcome, "output_blocked")
        self.error_code = err.code
        with _quiet():
            await self.write_sse(self.sse_error(err))
            self.finish()


class _quiet:
    """Swallow a client that went away while we send the last bytes."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, value: Any, tb: Any) -> bool:
        return typ is not None and issubclass(typ, (ClientGone, StreamClosedError))


def _tool_calls_chunk(like: dict[str, Any], index: int, calls: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One stream chunk carrying choice `index`'s whole (checked) tool calls, with the fields of chunk `like`."""
    chunk = {k: v for k, v in like.items() if k not in ("choices", "usage")}
    deltas = [{"index": i, **call} for i, call in sorted(calls.items())]
    chunk["choices"] = [{"index": index, "delta": {"tool_calls": deltas}, "finish_reason": None}]
    return chunk


def _parts_text(content: Any) -> str:
    """The text of an answer whose `content` is a list of parts (some OpenAI-compatible providers)."""
    if not isinstance(content, list):
        return ""
    return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))


def _merge_tool_calls(acc: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Accumulate streamed tool-call deltas into whole calls (by their index)."""
    for d in deltas:
        if not isinstance(d, dict):
            continue
        call = acc.setdefault(d.get("index", 0), {"id": "", "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
        if d.get("id"):
            call["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]


class MessagesHandler(ChatHandler):
    """POST /v1/messages: Anthropic format in and out; canonical OpenAI inside."""

    anthropic_errors = True

    def __init__(self, settings: dict[str, Any], connection: Any) -> None:
        super().__init__(settings, connection)
        self.client_model = ""
        self.to_anthropic: translate.OpenAIStreamToAnthropic | None = None

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            req = translate.anthropic_request_to_openai(validate_messages(body))
        except translate.TranslationError as exc:
            raise invalid(str(exc)) from None
        self.client_model = body["model"]
        self.client_usage = True
        return req

    def answer(self, resp: dict[str, Any], raw: bytes | None) -> None:
        try:
            body = orjson.dumps(translate.openai_response_to_anthropic(resp, self.client_model))
        except (translate.TranslationError, orjson.JSONEncodeError) as exc:
            raise self.unrelayable(exc).error() from None
        self.send_json(body)

    def sse(self, chunks: list[dict[str, Any]]) -> bytes:
        if self.to_anthropic is None:
            self.to_anthropic = translate.OpenAIStreamToAnthropic(self.client_model, self.record.input_tokens)
        try:
            events = [e for c in chunks for e in self.to_anthropic.feed(c)]
            return b"".join(format_sse(e, e["type"]) for e in events)
        except (translate.TranslationError, orjson.JSONEncodeError) as exc:
            raise self.unrelayable(exc) from None

    def sse_done(self) -> bytes:
        if self.to_anthropic is None:
            self.sse([])
        assert self.to_anthropic is not None
        return b"".join(format_sse(e, e["type"]) for e in self.to_anthropic.close())

    def sse_error(self, err: GatewayError) -> bytes:
        return translate.anthropic_stream_error(err.type, err.message, code=err.code, policy=err.policy)


class EmbeddingsHandler(ProxyHandler):
    """POST /v1/embeddings: input policies on the texts, then an OpenAI-format embeddings target."""

    async def post(self) -> None:
        body = self.body_json()
        model, inputs = body.get("model"), body.get("input")
        if not isinstance(model, str) or not model:
            raise invalid("`model` is required and must be a string", "missing_model")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts:
            raise invalid("`input` is required: a string or a non-empty list of strings", "missing_input")
        strings = [t for t in texts if isinstance(t, str)]
        messages = [{"role": "user", "content": t} for t in strings]
        ex, _ = self.exchange(model, messages, [], None)
        await self.reserve(ex, Phase.INPUT)
        self.run_input(ex)
        if strings and len(strings) == len(texts):
            redacted = [m["content"] for m in ex.messages]
            body["input"] = redacted[0] if isinstance(inputs, str) else redacted
        plan = self.plan(ex, adapters.supports_embeddings)
        client = self.services.upstream
        result = await self.with_fallback(plan, lambda target: adapters.embed(client, target, body))
        assert result is not None
        resp, raw = result
        self.record_usage(ex, resp.get("usage"))
        self.account(ex)
        self.send_json(raw if raw is not None else resp)


__all__ = [
    "BaseHandler",
    "ChatHandler",
    "EmbeddingsHandler",
    "MessagesHandler",
    "ModelsHandler",
    "NotFoundHandler",
    "not_found",
]
