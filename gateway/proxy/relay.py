"""The stream relay: an upstream stream forwarded to the client chunk by chunk through the stream guards.

Content, refusal and reasoning deltas are scanned as they pass (one guard per choice, a channel per
field); tool calls (a legacy `function_call` too), an audio answer's sound and the final chunks are
withheld until each choice is whole and checked; a block or an upstream failure after the first byte
ends the stream with an error event in the client's format.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from tornado.iostream import StreamClosedError

from gateway.providers import adapters
from gateway.providers.upstream import DONE, UpstreamFailure
from gateway.proxy.errors import GatewayError
from gateway.proxy.pipeline import ProxyHandler, blocks, policy_error
from policies.chain import Chain, StreamGuard
from policies.model import ChainOutcome, Exchange, Phase, Verdict
from policies.texts import ANSWER_FIELDS, CHOICE_FIELDS, COMPLETION_FIELDS, Path, answer_fields, visit_answer_fields

_UNSEEN = object()
_SEEN_VALUES = 256  # distinct values of extra fields whose checked form a stream remembers (then: checked each time)
Seen = dict[tuple[str, bytes], Any]  # (field, its JSON) -> the value as checked (redacted or the same)
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client closed the connection while we were answering."""


class StreamRelay(ProxyHandler):
    """A proxy route that relays streams; the route gives the client's format (`sse`, `sse_done`, `sse_error`)."""

    client_usage: bool  # the client asked for the usage chunk (set by the route before it relays)
    relays_fields = False  # the client gets the deltas' fields kt does not know (then they are checked)

    def sse(self, chunks: list[dict[str, Any]]) -> bytes:
        """Canonical stream chunks as the client's SSE bytes."""
        raise NotImplementedError

    def sse_done(self) -> bytes:
        """The end of a stream in the client's format."""
        raise NotImplementedError

    def sse_error(self, err: GatewayError) -> bytes:
        """An error event in the client's format."""
        raise NotImplementedError

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

        Content and refusal deltas are scanned (one guard per choice) and forwarded at once, and so
        are reasoning deltas and any other field kt does not know (`guard_fields`, when the client
        gets them). With output policies, tool-call deltas (and a legacy `function_call`'s) are
        withheld and merged: each choice's whole calls are checked (and redacted inside their JSON
        arguments) by `finish()`, then sent in one chunk per choice before the held finish chunks
        (and usage). An audio answer's transcript deltas
        are scanned as they pass (a redaction there blocks: the sound cannot be redacted) and its
        sound (`audio.data`) is withheld and sent whole, one chunk per choice, once the choice
        passed. Every choice is checked; a block ends the stream with an error event in the
        client's format (a 409 when nothing was sent yet). A traced request gets an `output_chain`
        span from the first batch to the chain's last decision.
        """
        assert self.snap is not None
        chain = self.snap.config.chain
        active = self.snap.config.enabled and bool(chain.output_policies)
        guards: dict[int, StreamGuard] = {}
        tools: dict[int, dict[int, dict[str, Any]]] = {}
        legacy: dict[int, dict[str, str]] = {}  # per choice: its legacy `function_call`, merged
        sounds: dict[int, dict[str, Any]] = {}  # per choice: its audio's id, expires_at and whole data
        held: list[dict[str, Any]] = []
        extras = active and self.relays_fields
        seen: Seen = {}  # extra fields repeated on every chunk (`citations`) are checked once per value
        first: dict[str, Any] | None = None  # a chunk of the stream, for the fields of the tool-call chunks
        traced = self.record.trace is not None
        started = 0  # when the first batch came (epoch ns), for the output_chain span
        try:
            async for batch in batches:
                if traced and not started:
                    started = time.time_ns()
                out: list[dict[str, Any]] = []
                for chunk in batch:
                    if chunk is DONE:
                        break
                    self.note_chunk(chunk, ex)
                    hold = withheld = False
                    if extras and not COMPLETION_FIELDS.issuperset(chunk):
                        blocked = self.guard_extras(chunk, COMPLETION_FIELDS, ex, seen)[0]
                        if blocked is not None:
                            if out:
                                await self.write_sse(self.sse(out))
                            await self.end_blocked(blocked, started)
                            return
                    for choice in chunk.get("choices") or ():
                        index = choice.get("index", 0)
                        delta = choice.get("delta") or {}
                        if active:
                            blocked = self.guard_text(choice, delta, index, guards, chain, ex)
                            if blocked is not None:
                                self.record.add_outcome(blocked)
                            elif extras and not CHOICE_FIELDS.issuperset(choice):  # records its own outcome
                                blocked = self.guard_extras(choice, CHOICE_FIELDS, ex, seen)[0]
                            if blocked is not None:
                                if out:  # what passed before the match still goes out first
                                    await self.write_sse(self.sse(out))
                                await self.end_blocked(blocked, started)
                                return
                            if delta.get("tool_calls"):  # withheld until the choice's calls are whole and checked
                                _merge_tool_calls(tools.setdefault(index, {}), delta.pop("tool_calls"))
                                first, withheld = first or chunk, True
                            if delta.get("function_call"):  # legacy: withheld and checked like a tool call
                                _merge_function(legacy.setdefault(index, {"name": "", "arguments": ""}),
                                                delta.pop("function_call"))
                                first, withheld = first or chunk, True
                            if isinstance(delta.get("audio"), dict) and _hold_sound(sounds, index, delta):
                                first, withheld = first or chunk, True
                        elif delta.get("tool_calls"):
                            _merge_tool_calls(tools.setdefault(index, {}), delta["tool_calls"])
                        if choice.get("finish_reason"):
                            hold = True
                    if not self.trimmed(chunk, withheld):
                        continue
                    if hold or held:
                        held.append(chunk)
                    else:
                        out.append(chunk)
                if out:
                    await self.write_sse(self.sse(out))
            self.account(ex)
            if active:
                blocked = await self.check_choices(ex, guards, tools, chain, legacy)
                if blocked is not None:
                    await self.end_blocked(blocked, started)
                    return
                if (tools or sounds or legacy) and first is not None:
                    held[:0] = [_tool_calls_chunk(first, index, tools[index]) for index in sorted(tools)] + [
                        _choice_chunk(first, index, {"function_call": legacy[index]}) for index in sorted(legacy)] + [
                        _choice_chunk(first, index, {"audio": sounds[index]}) for index in sorted(sounds)]
            if traced:
                self.output_span(started)
            await self.write_sse(self.sse(held) + self.sse_done())
            self.finish()
        except ClientGone:
            self.record.status, self.record.error_code = 499, "client_closed"
        except UpstreamFailure as failure:
            if self.sent_any:
                await self.end_failed(failure)
            raise

    def note_chunk(self, chunk: dict[str, Any], ex: Exchange) -> None:
        """An error chunk ends the attempt (`UpstreamFailure`); a chunk with usage records it."""
        if "error" in chunk and not chunk.get("choices"):
            raise UpstreamFailure("5xx", f"target {self.record.target} failed mid-stream: "
                                  f"{str((chunk.get('error') or {}).get('message', ''))[:200]}")
        if chunk.get("usage"):
            self.record_usage(ex, chunk["usage"])

    def guard_text(self, choice: dict[str, Any], delta: dict[str, Any], index: int, guards: dict[int, StreamGuard],
                   chain: Chain, ex: Exchange) -> ChainOutcome | None:
        """A choice's content, refusal and transcript deltas through its stream guard (redactions in place),
        and the strings of its other fields when the client gets them (`relays_fields`); the block, if any.

        A redacted delta loses its `logprobs` (their tokens spell the text the redaction removed)."""
        audio = delta.get("audio")
        for channel, holder in (("content", delta), ("refusal", delta), ("transcript", audio)):
            text = holder.get(channel) if isinstance(holder, dict) else None
            if not isinstance(text, str) or not text:
                continue
            guard = guards.get(index) or guards.setdefault(index, chain.stream_guard(ex, self.runtime.fail_mode))
            forward, blocked = guard.feed(text, channel)
            if blocked is not None:
                return blocked
            if forward != text:
                holder[channel] = forward
                if choice.get("logprobs") is not None:
                    choice["logprobs"] = None
        if self.relays_fields and not delta.keys() <= ANSWER_FIELDS:
            return self.guard_fields(choice, delta, index, guards, chain, ex)
        return None

    def guard_fields(self, choice: dict[str, Any], delta: dict[str, Any], index: int, guards: dict[int, StreamGuard],
                     chain: Chain, ex: Exchange) -> ChainOutcome | None:
        """The strings of a delta's fields kt does not know (`reasoning_content`, ...), each through the
        choice's guard on a channel named by its keys (`reasoning_details.text`: a rolling window per
        channel, as for the content); redactions in place; the block, if any."""
        fields = answer_fields(delta)
        if not fields:
            return None
        guard = guards.get(index) or guards.setdefault(index, chain.stream_guard(ex, self.runtime.fail_mode))
        blocked: ChainOutcome | None = None

        def feed(path: Path, role: Any, text: str) -> str:
            nonlocal blocked
            if blocked is not None or not text:
                return text
            forward, blocked = guard.feed(text, ".".join(str(step) for step in path if not isinstance(step, int)))
            return text if forward == text else forward

        for key, value in fields.items():
            new = visit_answer_fields(value, (key,), feed)
            if blocked is not None:
                return blocked
            if new is not value:
                delta[key] = new
                if choice.get("logprobs") is not None:
                    choice["logprobs"] = None
        return None

    def guard_extras(self, holder: dict[str, Any], known: frozenset[str], ex: Exchange,
                     seen: Seen | None = None) -> tuple[ChainOutcome | None, bool]:
        """The fields of an answer (or chunk, or choice) beyond `known` (`citations`, `search_results`, a
        choice's `stop_reason`), each value checked whole and redacted in place; (the block, if any; whether
        a field changed). A value in `seen` is not checked again: a stream that repeats its citations on
        every chunk has them checked once and redacted alike on each. A decision other than allow is
        recorded."""
        assert self.snap is not None
        chain, changed = self.snap.config.chain, False
        for key, value in answer_fields(holder, known).items():
            token = (key, orjson.dumps(value)) if seen is not None else None
            checked = seen.get(token, _UNSEEN) if seen is not None and token is not None else _UNSEEN
            if checked is _UNSEEN:
                fields = {key: value}
                outcome = chain.check_fields(ex, fields, self.runtime.fail_mode)
                if outcome.verdict is not Verdict.ALLOW:
                    self.record.add_outcome(outcome)
                if blocks(outcome):
                    return outcome, changed
                checked = fields[key]
                if seen is not None and token is not None and len(seen) < _SEEN_VALUES:
                    seen[token] = checked
            if checked is not value:
                holder[key], changed = checked, True
        return None, changed

    def trimmed(self, chunk: dict[str, Any], withheld: bool) -> bool:
        """Drop what the client is not sent (withheld tool-call deltas, usage not asked for); False: nothing left."""
        if withheld:  # drop the choices that only carried tool-call deltas
            chunk["choices"] = choices = [c for c in chunk["choices"] if c.get("delta") or c.get("finish_reason")]
            if not choices and not chunk.get("usage"):
                return False
        if not self.client_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return False
            del chunk["usage"]
        return True

    async def check_choices(self, ex: Exchange, guards: dict[int, StreamGuard],
                            tools: dict[int, dict[int, dict[str, Any]]], chain: Chain,
                            legacy: dict[int, dict[str, str]]) -> ChainOutcome | None:
        """At the end of the stream, every choice's whole answer (its tool calls and legacy `function_call`
        too, redacted in place) through `finish()`; the block."""
        for index in sorted(set(guards) | set(tools) | set(legacy) | {0}):  # every choice, however many
            guard = guards.get(index) or chain.stream_guard(ex, self.runtime.fail_mode)
            ex.response_tool_calls = list(tools.get(index, {}).values())
            if index in legacy:
                ex.response_tool_calls.append({"type": "function", "function": legacy[index]})
            await self.reserve(ex, Phase.OUTPUT)
            outcome = guard.finish()
            self.record.add_outcome(outcome)
            if blocks(outcome):
                return outcome
        return None

    def output_span(self, started_ns: int) -> None:
        """The stream's `output_chain` span: from `started_ns` (0: no batch came) to now."""
        trace = self.record.trace
        if trace is not None:
            trace.child("output_chain", started_ns or time.time_ns(), {})

    async def end_blocked(self, outcome: ChainOutcome, started_ns: int = 0) -> None:
        """A block: a plain 409/503 when nothing was sent yet, else the error event ends the stream.

        `started_ns`: when the stream's output chain began, for its span (traced requests)."""
        self.output_span(started_ns)
        if not self.sent_any:
            raise policy_error(outcome, "output_blocked")  # nothing reached the client yet: a plain 409/503
        err = policy_error(outcome, "output_blocked")
        self.error_code = err.code
        with _quiet():
            await self.write_sse(self.sse_error(err))
            self.finish()

    async def end_failed(self, failure: UpstreamFailure) -> None:
        """An upstream failure after the first byte: the attempt is committed and the error event ends the stream."""
        failure.committed = True
        err = failure.error()
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
    return _choice_chunk(like, index, {"tool_calls": [{"index": i, **call} for i, call in sorted(calls.items())]})


def _choice_chunk(like: dict[str, Any], index: int, delta: dict[str, Any]) -> dict[str, Any]:
    """One stream chunk carrying `delta` for choice `index`, with the fields of chunk `like`."""
    chunk = {k: v for k, v in like.items() if k not in ("choices", "usage")}
    chunk["choices"] = [{"index": index, "delta": delta, "finish_reason": None}]
    return chunk


def _hold_sound(sounds: dict[int, dict[str, Any]], index: int, delta: dict[str, Any]) -> bool:
    """Take an audio delta's sound (`data`, with its `id` and `expires_at`) into `sounds[index]`.

    What is left of `delta["audio"]` is its transcript (scanned and forwarded as it passes); an
    audio delta with nothing else goes. True when something was taken."""
    audio = delta["audio"]
    if not isinstance(audio.get("data"), str) and "expires_at" not in audio:
        return False
    sound = sounds.setdefault(index, {"id": audio.get("id"), "data": ""})
    if isinstance(audio.get("data"), str):
        sound["data"] += audio.pop("data")
    if "expires_at" in audio:
        sound["expires_at"] = audio.pop("expires_at")
    sound["id"] = sound["id"] or audio.get("id")
    if not audio.get("transcript"):
        del delta["audio"]
    return True


def _merge_function(acc: dict[str, str], delta: Any) -> None:
    """Accumulate a streamed legacy `function_call` delta (`name`, `arguments` pieces)."""
    if isinstance(delta, dict):
        for key in ("name", "arguments"):
            if isinstance(delta.get(key), str):
                acc[key] += delta[key]


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
