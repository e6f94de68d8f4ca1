"""OpenAI's Responses API spoken natively: a `/v1/responses` request passed through as Responses.

For a target with `responses_api: native` (the default for provider openai on api.openai.com;
azure-openai targets may opt in) kt forwards the client's Responses body to `{base_url}/v1/responses`
(Azure: `{base_url}/openai/v1/responses`) instead of translating it to chat completions. The
policies still see every text: the request went through the canonical translation first
(`gateway.providers.responses`) and the chain's redactions were copied back into the body
(`copy_back`); the answer is read here into a canonical completion (or canonical stream chunks)
for the output chain, and what the chain changed is put back into the Response object
(`project`). Pure functions and one stream converter, no I/O.

What the forwarded body differs in (`forwarded_body`): the target's `model` (Azure: the deployment); `store: false`
(kt keeps nothing and asks OpenAI to keep nothing either); `reasoning` only with its `effort`
(summaries are texts the output chain would not see); no `include` or `top_logprobs` (they
add texts around the chain: encrypted reasoning, token log-probabilities); no `reasoning`
input items (the provider's encrypted state, dropped as on the translated path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.providers import checks

_DROPPED = frozenset({"include", "top_logprobs"})
_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


def forwarded_body(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The Responses body kt sends to a native target (see the module's docstring)."""
    out = {k: v for k, v in body.items() if k not in _DROPPED}
    out["model"] = model
    out["store"] = False
    if stream:
        out["stream"] = True
    else:
        out.pop("stream", None)
        out.pop("stream_options", None)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        out["reasoning"] = {"effort": reasoning["effort"]} if reasoning.get("effort") is not None else {}
    items = body.get("input")
    if isinstance(items, list):
        out["input"] = [i for i in items if not (isinstance(i, dict) and i.get("type") == "reasoning")]
    return out


def usage(value: Any) -> dict[str, int] | None:
    """A Responses `usage` as canonical usage (prompt/completion tokens), for costs and limits."""
    if not isinstance(value, dict):
        return None
    prompt, completion = int(value.get("input_tokens") or 0), int(value.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(value.get("total_tokens") or prompt + completion)}


def failed_message(response: dict[str, Any]) -> str | None:
    """The upstream's error text of a failed Response (status `failed`), else None."""
    if response.get("status") != "failed":
        return None
    error = response.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else "the response failed"


class Answer:
    """A Response object read as a canonical completion; `project` writes the checked texts back.

    Output items: `message` (its `output_text` parts are the text, and their `annotations` the
    completion's `annotations` field, `refusal` parts the refusal),
    `function_call` (a tool call), `reasoning` (its summary, if any, is dropped: the chain does
    not read it). Any other item type is `checks.Malformed`: kt relays nothing it cannot check."""

    def __init__(self, response: Any) -> None:
        if not isinstance(response, dict) or not isinstance(response.get("output"), list):
            raise checks.Malformed("the answer is not a Response object (no `output` list)")
        self.response = response
        self.texts: list[dict[str, Any]] = []  # output_text parts, in order
        self.refusals: list[dict[str, Any]] = []
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (function_call item, canonical function)
        self.dropped = False  # a reasoning summary was removed
        for item in response["output"]:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "message":
                for part in item.get("content") or ():
                    kind = _kind(part)
                    if kind == "output_text" and isinstance(part.get("text"), str):
                        self.texts.append(part)
                    elif kind == "refusal" and isinstance(part.get("refusal"), str):
                        self.refusals.append(part)
                    else:
                        raise checks.Malformed(f"a message content part of type {kind!r} kt cannot check")
            elif kind == "function_call":
                if not isinstance(item.get("name"), str) or not isinstance(item.get("arguments"), str):
                    raise checks.Malformed("a function_call item without string `name` and `arguments`")
                self.calls.append((item, {"name": item["name"], "arguments": item["arguments"]}))
            elif kind == "reasoning":
                if item.get("summary") or item.get("encrypted_content") or item.get("content"):
                    item["summary"], self.dropped = [], True
                    item.pop("encrypted_content", None)
                    item.pop("content", None)
            else:
                raise checks.Malformed(f"an output item of type {kind!r} kt cannot check")
        self.text = "".join(p["text"] for p in self.texts)
        self.refusal = "".join(p["refusal"] for p in self.refusals)
        self.annotations = [a for p in self.texts if isinstance(p.get("annotations"), list) for a in p["annotations"]]

    def completion(self) -> dict[str, Any]:
        """The canonical completion of the Response (its function dicts are the ones `project` reads)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None, "refusal": self.refusal or None}
        if self.annotations:  # citations (titles, URLs) reach the client: the output chain checks them
            message["annotations"] = self.annotations
        if self.calls:
            message["tool_calls"] = [{"id": item.get("call_id") or "", "type": "function", "function": function}
                                     for item, function in self.calls]
        details = self.response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        finish = _FINISH.get(reason or "") or ("tool_calls" if self.calls else "stop")
        return {"id": self.response.get("id"), "object": "chat.completion", "model": self.response.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage(self.response.get("usage"))}

    def project(self, completion: dict[str, Any]) -> bool:
        """Put the (checked) completion's texts back into the Response; True when it changed."""
        message = completion["choices"][0]["message"]
        changed = self.dropped
        notes = message.get("annotations", self.annotations)
        if notes is not self.annotations and isinstance(notes, list):  # rewritten: back into their parts, in order
            changed, start = True, 0
            for part in self.texts:
                if isinstance(part.get("annotations"), list):
                    end = start + len(part["annotations"])
                    part["annotations"], start = notes[start:end], end
        changed |= _put_back(self.texts, "text", self.text, message.get("content") or "")
        changed |= _put_back(self.refusals, "refusal", self.refusal, message.get("refusal") or "")
        for item, function in self.calls:
            for key in ("name", "arguments"):
                if function[key] != item[key]:
                    item[key], changed = function[key], True
        return changed


def _kind(part: Any) -> Any:
    return part.get("type") if isinstance(part, dict) else type(part).__name__


def _put_back(parts: list[dict[str, Any]], key: str, before: str, after: str) -> bool:
    """A rewritten text into its parts: all of it in the first, the others emptied (annotations and
    log-probabilities of a rewritten text no longer hold, so they go)."""
    if after == before:
        return False
    for n, part in enumerate(parts):
        part[key] = after if n == 0 else ""
        if "annotations" in part:
            part["annotations"] = []
        if "logprobs" in part:
            part["logprobs"] = []
    return True


class StreamToChat:
    """Responses' typed stream events in, canonical chunks out (`feed(event) -> chunks`).

    Text and refusal deltas become content and refusal deltas, an output text's annotation an
    `annotations` delta (one item); each function_call item a tool
    call (its arguments deltas as they come); `response.completed` / `response.incomplete`
    the finish chunk and the usage chunk (`done` is set); `error` and `response.failed` an
    error chunk. `on_start` gets the upstream's Response (of `response.created`) once (`started`)."""

    def __init__(self, on_start: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_start = on_start
        self.base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": 0, "model": ""}
        self.calls: dict[str, int] = {}  # function_call item id -> tool-call index
        self.done = False

    def started(self, response: dict[str, Any]) -> None:
        """The upstream's Response began (`response.created`, or a whole Response answering the stream
        request): its id, model and created_at for the chunks, and `on_start`."""
        self.base.update(id=response.get("id") or "", created=response.get("created_at") or 0,
                         model=response.get("model") or "")
        if self.on_start is not None:
            self.on_start(response)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, event: Any) -> list[dict[str, Any]]:
        if not isinstance(event, dict):
            raise checks.Malformed("a stream event is not a JSON object")
        kind = event.get("type")
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            delta = event.get("delta")
            if not isinstance(delta, str):
                raise checks.Malformed(f"a {kind} event without a string `delta`")
            return [self._chunk({"content" if kind == "response.output_text.delta" else "refusal": delta})] \
                if delta else []
        if kind == "response.output_text.annotation.added":  # a citation: relayed as the text's (checked)
            annotation = event.get("annotation")
            return [self._chunk({"annotations": [annotation]})] if isinstance(annotation, dict) else []
        if kind == "response.function_call_arguments.delta":
            index, delta = self.calls.get(event.get("item_id") or ""), event.get("delta")
            if index is None or not isinstance(delta, str):
                raise checks.Malformed("a function_call_arguments.delta of no function_call item")
            return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})] if delta else []
        if kind == "response.output_item.added":
            item = event.get("item")
            if not isinstance(item, dict) or item.get("type") in ("message", "reasoning"):
                return []
            if item.get("type") != "function_call" or not isinstance(item.get("name"), str):
                raise checks.Malformed(f"an output item of type {item.get('type')!r} kt cannot check")
            index = self.calls[str(item.get("id"))] = len(self.calls)
            call = {"index": index, "id": item.get("call_id") or "", "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments") or ""}}
            return [self._chunk({"role": "assistant", "tool_calls": [call]})]
        if kind == "response.created":
            response = event.get("response")
            if isinstance(response, dict):
                self.started(response)
            return []
        if kind in ("response.completed", "response.incomplete"):
            response = event.get("response") if isinstance(event.get("response"), dict) else {}
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            finish = _FINISH.get(reason or "", "length" if kind == "response.incomplete" else None) or (
                "tool_calls" if self.calls else "stop")
            self.done = True
            return [self._chunk({}, finish), {**self.base, "choices": [], "usage": usage(response.get("usage"))}]
        if kind == "error" or kind == "response.failed":
            message = failed_message(event.get("response") or {}) if kind == "response.failed" else event.get("message")
            return [{**self.base, "choices": [], "error": {"message": str(message or "stream error")}}]
        return []  # created/in_progress, *.done, content parts, reasoning: nothing the chain reads
