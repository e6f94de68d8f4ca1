"""The OpenAI Responses API (`POST /v1/responses`) to and from the canonical (OpenAI chat) form.

kt serves Responses clients from any provider: the request becomes a canonical chat request
(so every policy sees every text of it), the canonical answer or stream becomes a Response
object or Responses' typed SSE events. Pure functions and one stream converter, no I/O.

Request (`responses_request_to_openai`): `instructions` -> a system message first; `input` as
a string (one user message) or items: messages (`input_text`, `output_text`, `refusal`,
`input_image` parts), `function_call` (an assistant tool call; consecutive ones merge) and
`function_call_output` (a tool message); `reasoning` items are dropped (they are the provider's
own state). `tools` of `type: function`, `tool_choice`, `text.format` (json_schema / json_object),
`max_output_tokens`, `temperature`, `top_p`, `parallel_tool_calls`, `reasoning.effort`, `user`
/ `safety_identifier`, `service_tier`. What needs stored state kt does not keep is refused by
name (`previous_response_id`, `conversation`, `store: true`, `background: true`, `prompt`), as
are built-in tools and item types that have no chat equivalent.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.providers.translate import TranslationError

# Where a text of the canonical request came from in the Responses request:
# (canonical holder, key, Responses holder, key). `copy_back` puts what the chain changed there.
Link = tuple[dict[str, Any], str, dict[str, Any], str]

STATEFUL = {
    "previous_response_id": "kt keeps no responses: send the whole conversation in `input` instead",
    "conversation": "kt keeps no conversations: send the whole conversation in `input` instead",
    "prompt": "kt cannot resolve stored prompt templates: send `instructions` and `input` instead",
}
IGNORED = frozenset({"metadata", "include", "truncation", "prompt_cache_key", "top_logprobs", "stream_options",
                     "max_tool_calls"})
_FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _fail(field: str, why: str) -> TranslationError:
    return TranslationError(f"`{field}`: {why}")


def copy_back(links: list[Link]) -> None:
    """Put the canonical texts the chain rewrote back where they stand in the Responses request."""
    for holder, key, source, source_key in links:
        value = holder.get(key)
        if value is not source.get(source_key):
            source[source_key] = value


def _content(content: Any, where: str, message: dict[str, Any], links: list[Link]) -> Any:
    """A Responses message content (text or parts) as chat content (for `message["content"]`)."""
    if not isinstance(content, list):
        raise _fail(f"{where}.content", "must be text or a list of content parts")
    parts: list[dict[str, Any]] = []
    sources: list[tuple[dict[str, Any], str]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = "refusal" if kind == "refusal" else "text"
        if kind in ("input_text", "output_text", "refusal") and isinstance(part.get(key), str):
            parts.append({"type": "text", "text": part[key]})
            sources.append((part, key))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _fail(f"{where}.content[{i}]", f"content part type {kind!r} is not supported by kt "
                        "(use input_text, output_text, refusal or input_image with an image_url)")
    if len(parts) == 1 and sources:
        links.append((message, "content", *sources[0]))
        return parts[0]["text"]
    texts = [p for p in parts if p["type"] == "text"]
    links += [(p, "text", *source) for p, source in zip(texts, sources, strict=True)]
    return parts


def _message(role: str, content: Any, where: str, source: dict[str, Any], key: str,
             links: list[Link]) -> dict[str, Any]:
    """A chat message of `role` for the Responses content `source[key]` (text or parts), linked to it."""
    message: dict[str, Any] = {"role": role, "content": content}
    if isinstance(content, str):
        links.append((message, "content", source, key))
    else:
        message["content"] = _content(content, where, message, links)
    return message


def _messages(body: dict[str, Any], links: list[Link]) -> list[dict[str, Any]]:
    items = body.get("input")
    if isinstance(items, str):
        return [_message("user", items, "input", body, "input", links)]
    if not isinstance(items, list) or not items:
        raise _fail("input", "must be a string or a non-empty list of items")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _fail(where, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _fail(f"{where}.role", "must be user, assistant, system or developer")
            out.append(_message(role, item.get("content"), where, item, "content", links))
        elif kind == "function_call":
            name, args, call_id = item.get("name"), item.get("arguments"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(args, str) or not isinstance(call_id, str):
                raise _fail(where, "a function_call needs string `call_id`, `name` and `arguments`")
            function = {"name": name, "arguments": args}
            links += [(function, "name", item, "name"), (function, "arguments", item, "arguments")]
            call = {"id": call_id, "type": "function", "function": function}
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise _fail(f"{where}.call_id", "must be a string")
            message = _message("tool", output, where, item, "output", links) if isinstance(output, list | str) \
                else {"role": "tool", "content": ""}
            message["tool_call_id"] = call_id
            out.append(message)
        elif kind == "reasoning":
            continue  # the provider's own reasoning state: nothing a chat upstream can take
        elif kind == "item_reference":
            raise _fail(where, "item references need stored responses, which kt does not keep; send the item itself")
        else:
            raise _fail(f"{where}.type", f"input item type {kind!r} is not supported by kt "
                        "(use message, function_call or function_call_output)")
    return out


def _tools(tools: Any, links: list[Link]) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _fail("tools", "must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _fail(f"tools[{i}]", f"tool type {kind!r} is not supported by kt: only `function` tools "
                        "(built-in tools run on OpenAI's side)")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        links += [(function, k, tool, k) for k in ("name", "description", "parameters") if k in function]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, links: list[Link]) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        function = {"name": choice["name"]}
        links.append((function, "name", choice, "name"))
        return {"type": "function", "function": function}
    raise _fail("tool_choice", "must be auto, none, required or {type: function, name}")


def _response_format(text: Any, links: list[Link]) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        links += [(spec, k, fmt, k) for k in ("name", "description", "schema") if k in spec]
        return {"type": "json_schema", "json_schema": spec}
    raise _fail("text.format", "must be {type: text}, {type: json_object} or {type: json_schema, name, schema}")


def responses_request_to_openai(body: dict[str, Any], links: list[Link] | None = None) -> dict[str, Any]:
    """The canonical chat request for a Responses request; `TranslationError` names what kt cannot do.

    `links` (when given) gets where each canonical text stands in `body`, for `copy_back`."""
    links = [] if links is None else links
    for field, why in STATEFUL.items():
        if body.get(field) is not None:
            raise _fail(field, why)
    if body.get("store") is True:
        raise _fail("store", "kt does not store responses (no retrieval later): omit `store` or send store: false")
    if body.get("background") is True:
        raise _fail("background", "kt answers in the foreground only: omit `background`")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model", "is required and must be a string")
    known = {"model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "temperature",
             "top_p", "parallel_tool_calls", "reasoning", "user", "safety_identifier", "service_tier", "stream",
             "store", "background", *STATEFUL, *IGNORED}
    for field in body:
        if field not in known:
            raise _fail(field, "is not a Responses field kt knows")
    messages = _messages(body, links)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _fail("instructions", "must be a string")
        messages.insert(0, _message("system", instructions, "instructions", body, "instructions", links))
    req: dict[str, Any] = {"model": model, "messages": messages}
    if body.get("tools"):
        req["tools"] = _tools(body["tools"], links)
    if body.get("tool_choice") is not None:
        req["tool_choice"] = _tool_choice(body["tool_choice"], links)
    if (fmt := _response_format(body.get("text"), links)) is not None:
        req["response_format"] = fmt
    limit = body.get("max_output_tokens")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            raise _fail("max_output_tokens", "must be a positive integer")
        req["max_completion_tokens"] = limit
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("parallel_tool_calls", "parallel_tool_calls"),
                     ("service_tier", "service_tier"), ("user", "user"), ("safety_identifier", "user")):
        if body.get(src) is not None:
            req[dst] = body[src]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        req["reasoning_effort"] = reasoning["effort"]
    if body.get("stream") is True:
        req["stream"] = True
    return req


# --- answers ---------------------------------------------------------------------------------


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": usage.get("total_tokens") or prompt + completion}


class Shell:
    """The Response object's fields that echo the request (the same in every event of one response)."""

    def __init__(self, body: dict[str, Any], model: str) -> None:
        text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        self.fields: dict[str, Any] = {
            "id": _new_id("resp_"), "object": "response", "created_at": int(time.time()),
            "background": False, "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {}, "model": model, "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "service_tier": body.get("service_tier"), "store": False, "temperature": body.get("temperature"),
            "text": text, "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p"), "truncation": body.get("truncation", "disabled"), "usage": None,
            "user": body.get("user"),
        }

    def response(self, status: str, output: list[dict[str, Any]], usage: Any = None,
                 finish: str | None = None) -> dict[str, Any]:
        reason = _FINISH.get(finish or "")
        if status == "completed" and reason:
            status = "incomplete"
        return {**self.fields, "status": status, "output": output, "usage": _usage(usage),
                "incomplete_details": {"reason": reason} if status == "incomplete" else None}


def _message_item(item_id: str, text: str, refusal: str, status: str,
                  annotations: list[Any] | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(call: dict[str, Any], item_id: str, status: str) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"type": "function_call", "id": item_id, "call_id": call.get("id") or _new_id("call_"),
            "name": function.get("name") or "", "arguments": function.get("arguments") or "", "status": status}


def completion_to_response(resp: dict[str, Any], shell: Shell) -> dict[str, Any]:
    """A canonical completion (its first choice) as a Response object."""
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = message.get("content")
    text = content if isinstance(content, str) else "".join(
        p.get("text", "") for p in content or () if isinstance(p, dict) and isinstance(p.get("text"), str))
    output: list[dict[str, Any]] = []
    if text or message.get("refusal"):
        output.append(_message_item(_new_id("msg_"), text, message.get("refusal") or "", "completed"))
    output += [_call_item(c, _new_id("fc_"), "completed") for c in message.get("tool_calls") or ()
               if isinstance(c, dict)]
    return shell.response("completed", output, resp.get("usage"), choice.get("finish_reason"))


class ChatStreamToResponses:
    """Canonical stream chunks (choice 0) in, Responses' typed events out (each a dict with `type`).

    `feed(chunk)` for every chunk, `close()` once at the end (the `response.completed` or
    `response.incomplete` event), `error(code, message)` for an error event. Events carry
    `sequence_number`; the first feed opens with `response.created` and `response.in_progress`."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.seq = 0
        self.started = False
        self.output: list[dict[str, Any]] = []  # finished items
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.text = self.refusal = ""
        self.annotations: list[Any] = []  # of the open message's text (a native target's citations)
        self.calls: dict[int, dict[str, Any]] = {}  # tool-call index -> item
        self.usage: Any = None
        self.finish: str | None = None

    def _event(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return event

    def _start(self) -> list[dict[str, Any]]:
        if self.started:
            return []
        self.started = True
        response = self.shell.response("in_progress", [])
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]

    def _close_open(self) -> list[dict[str, Any]]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = len(self.output)
        events = []
        if item["type"] == "message":
            done = _message_item(item["id"], self.text, self.refusal, "completed", self.annotations)
            for part_index, part in enumerate(done["content"]):
                if part["type"] == "output_text":
                    events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                              content_index=part_index, text=self.text, logprobs=[]))
                else:
                    events.append(self._event("response.refusal.done", item_id=item["id"], output_index=index,
                                              content_index=part_index, refusal=self.refusal))
                events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                          content_index=part_index, part=part))
            self.text, self.refusal, self.annotations = "", "", []
        else:
            done = {**item, "status": "completed"}
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"], arguments=item["arguments"]))
        self.output.append(done)
        events.append(self._event("response.output_item.done", output_index=index, item=done))
        return events

    def _text(self, channel: str, piece: str) -> list[dict[str, Any]]:
        events = []
        if self.open is None or self.open["type"] != "message":
            events += self._close_open()
            self.open = {"type": "message", "id": _new_id("msg_"), "status": "in_progress", "role": "assistant",
                         "content": []}
            events.append(self._event("response.output_item.added", output_index=len(self.output),
                                      item=dict(self.open)))
        item_id, index = self.open["id"], len(self.output)
        has_text = bool(self.text)
        part_index = 1 if channel == "refusal" and has_text else 0
        if channel == "content":
            if not self.text:
                events.append(self._event("response.content_part.added", item_id=item_id, output_index=index,
                                          content_index=0,
                                          part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
            self.text += piece
            events.append(self._event("response.output_text.delta", item_id=item_id, output_index=index,
                                      content_index=0, delta=piece, logprobs=[]))
        else:
            if not self.refusal:
                events.append(self._event("response.content_part.added", item_id=item_id, output_index=index,
                                          content_index=part_index, part={"type": "refusal", "refusal": ""}))
            self.refusal += piece
            events.append(self._event("response.refusal.delta", item_id=item_id, output_index=index,
                                      content_index=part_index, delta=piece))
        return events

    def _annotations(self, annotations: Any) -> list[dict[str, Any]]:
        """A native target's citations of the open message's text, one event each (none without a text)."""
        if not isinstance(annotations, list) or self.open is None or self.open["type"] != "message" or not self.text:
            return []
        events = []
        for annotation in annotations:
            events.append(self._event("response.output_text.annotation.added", item_id=self.open["id"],
                                      output_index=len(self.output), content_index=0,
                                      annotation_index=len(self.annotations), annotation=annotation))
            self.annotations.append(annotation)
        return events

    def _call(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        index = delta.get("index", 0)
        function = delta.get("function") or {}
        item = self.calls.get(index)
        if item is None or item is not self.open:
            events += self._close_open()
            item = self.calls[index] = self.open = {
                "type": "function_call", "id": _new_id("fc_"), "call_id": delta.get("id") or _new_id("call_"),
                "name": function.get("name") or "", "arguments": "", "status": "in_progress"}
            events.append(self._event("response.output_item.added", output_index=len(self.output), item=dict(item)))
        elif function.get("name"):
            item["name"] += function["name"]
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            item["arguments"] += piece
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=len(self.output), delta=piece))
        return events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._start()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for channel in ("content", "refusal"):
                piece = delta.get(channel)
                if isinstance(piece, str) and piece:
                    events += self._text(channel, piece)
            if delta.get("annotations"):
                events += self._annotations(delta["annotations"])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    events += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def close(self) -> list[dict[str, Any]]:
        events = self._start() + self._close_open()
        response = self.shell.response("completed", self.output, self.usage, self.finish)
        return [*events, self._event(f"response.{response['status']}", response=response)]

    def error(self, code: str, message: str) -> dict[str, Any]:
        return self._event("error", code=code, message=message, param=None)
