"""POST /v1/chat/completions: the OpenAI chat route, and the base of the routes that answer in another format.

JSON answers go through the output policies on every choice (`run_output`); streams go through
the stream relay (`gateway.proxy.relay`). The client-format hooks (`answer`, `sse`, `sse_done`,
`sse_error`) are what /v1/messages and /v1/responses override.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import Any

import orjson

from gateway.providers import adapters, openai_stream
from gateway.providers.upstream import UpstreamFailure, upstream_text
from gateway.proxy.errors import GatewayError
from gateway.proxy.pipeline import blocks, policy_error
from gateway.proxy.relay import StreamRelay
from gateway.proxy.validate import validate_chat
from policies.model import Exchange, Phase, Target, Verdict
from policies.texts import CHOICE_FIELDS, COMPLETION_FIELDS, answer_fields


class ChatHandler(StreamRelay):
    """POST /v1/chat/completions (OpenAI format, JSON and SSE)."""

    # The answer's message and stream deltas go to the client as they are, fields kt does not know
    # included (`reasoning_content`, `annotations`, ...), so output policies check those too.
    relays_fields = True

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
        return openai_stream.openai_stream_error(err.type, err.message, err.code, err.policy)

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
        """Output policies on every choice (content, refusal, tool calls, the message's other fields when the
        client gets them: `relays_fields`); True when a redaction changed the answer."""
        assert self.snap is not None
        config = self.snap.config
        if not config.enabled or not config.chain.output_policies:
            return False
        changed = False
        if self.relays_fields and not COMPLETION_FIELDS.issuperset(resp):  # `citations`, `search_results`, ...
            changed = self.checked_extras(resp, COMPLETION_FIELDS, ex)
        for choice in resp.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            if self.relays_fields and not CHOICE_FIELDS.issuperset(choice):  # `stop_reason`, ...
                changed = self.checked_extras(choice, CHOICE_FIELDS, ex) or changed
            content, refusal = message.get("content"), message.get("refusal")
            ex.response_text = text = content if isinstance(content, str) else _parts_text(content)
            ex.response_refusal = refusal if isinstance(refusal, str) else ""
            ex.response_tool_calls = calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
            if isinstance(message.get("function_call"), dict):  # legacy: checked like a tool call
                calls.append({"type": "function", "function": message["function_call"]})
            ex.response_fields = fields = answer_fields(message) if self.relays_fields else {}
            await self.reserve(ex, Phase.OUTPUT)
            outcome = config.chain.run_output(ex, self.runtime.fail_mode)
            self.record.add_outcome(outcome)
            if blocks(outcome):
                raise policy_error(outcome, "output_blocked")
            if ex.response_text != text:
                message["content"] = ex.response_text
            if ex.response_refusal != (refusal if isinstance(refusal, str) else ""):
                message["refusal"] = ex.response_refusal
            for key, value in fields.items():  # reasoning, annotations, ...: a rewritten one is a new value
                if value is not message[key]:
                    message[key] = value
            if outcome.redactions and choice.get("logprobs") is not None:
                choice["logprobs"] = None  # their tokens spell the text the redaction removed
            changed = changed or bool(outcome.redactions) or ex.response_text != text  # tool calls: in place
            transcript = _transcript(message.get("audio"))
            if transcript:
                guard = config.chain.stream_guard(ex, self.runtime.fail_mode)
                guard.feed(transcript, "transcript")
                heard = guard.texts_outcome()
                if heard.verdict is not Verdict.ALLOW:
                    self.record.add_outcome(heard)
                if blocks(heard):
                    raise policy_error(heard, "output_blocked")
        return changed


    def checked_extras(self, holder: dict[str, Any], known: frozenset[str], ex: Exchange) -> bool:
        """`guard_extras` on a JSON answer: a block is the 409; True when a field was redacted."""
        blocked, changed = self.guard_extras(holder, known, ex)
        if blocked is not None:
            raise policy_error(blocked, "output_blocked")
        return changed


def _transcript(audio: Any) -> str:
    """An audio answer's transcript (`message.audio.transcript` or a stream delta's), else ''."""
    text = audio.get("transcript") if isinstance(audio, dict) else None
    return text if isinstance(text, str) else ""


def _parts_text(content: Any) -> str:
    """The text of an answer whose `content` is a list of parts (some OpenAI-compatible providers)."""
    if not isinstance(content, list):
        return ""
    return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
