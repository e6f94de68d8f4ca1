"""Anthropic Messages requests <-> canonical (OpenAI chat) requests, both ways.

`anthropic_request_to_openai` for a `/v1/messages` client's request on its way in;
`openai_request_to_anthropic` for a canonical request on its way to an Anthropic target (the
hot path of every Anthropic target). Content blocks and tool calls map in `anthropic_content`;
what maps to what, and what is dropped, is in docs/providers.md.
"""

from __future__ import annotations

from typing import Any

from gateway.providers.anthropic_content import (
    anthropic_parts_to_openai,
    as_blocks,
    openai_parts_to_anthropic,
    text_and_tool_calls,
    tool_id,
    tool_use,
)
from gateway.providers.canonical import text_of
from gateway.providers.translate import TranslationError, guarded

DEFAULT_ANTHROPIC_MAX_TOKENS = 4096


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, where: str = "") -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise TranslationError(f"`{where}{key}` must be {what}")
    return value


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise TranslationError("`messages` is required and must be a list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise TranslationError(f"messages[{i}] must be an object with a `role`")
    return messages


# ------------------------------------------------------------------------------------------ Anthropic -> OpenAI


def _tool_result_content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return content or ""
    parts = anthropic_parts_to_openai(as_blocks(content, "tool_result"))
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _anthropic_user_turn_to_openai(blocks: list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
    """A user turn's blocks onto `out`: tool results as `tool` messages (they must follow the
    assistant's tool_calls), then the rest as one user message."""
    for b in blocks:
        if b.get("type") == "tool_result":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": b.get("tool_use_id", ""),
                    "content": _tool_result_content(b.get("content")),
                }
            )
    rest = [b for b in blocks if b.get("type") != "tool_result"]
    if rest or not blocks:
        out.append({"role": "user", "content": anthropic_parts_to_openai(rest)})


def _anthropic_messages_to_openai(system: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`system` and the user/assistant turns as OpenAI messages."""
    out: list[dict[str, Any]] = []
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        out.append({"role": "system", "content": anthropic_parts_to_openai(as_blocks(system, "system"))})
    for i, message in enumerate(messages):
        role, content = message["role"], message.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"messages[{i}].role must be 'user' or 'assistant' (system goes in `system`)")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "assistant":
            text, calls = text_and_tool_calls(as_blocks(content, f"messages[{i}]"))
            turn: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
        else:
            _anthropic_user_turn_to_openai(as_blocks(content, f"messages[{i}]"), out)
    return out


def _anthropic_tools_to_openai(tools: list[Any] | None) -> list[dict[str, Any]]:
    """Custom tools as OpenAI function tools; server tools (web_search, ...) are dropped."""
    return [
        {
            "type": "function",
            "function": {
                k: v
                for k, v in (
                    ("name", t.get("name")),
                    ("description", t.get("description")),
                    ("parameters", t.get("input_schema")),
                )
                if v is not None
            },
        }
        for t in tools or ()
        if isinstance(t, dict) and t.get("type") in (None, "custom")
    ]


def _anthropic_tool_choice_to_openai(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(kind, "auto")


@guarded("request body")
def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """Translate an Anthropic Messages request body into the canonical OpenAI chat request."""
    messages = _messages(body)
    out_body: dict[str, Any] = {
        "model": body.get("model"),
        "messages": _anthropic_messages_to_openai(body.get("system"), messages),
    }
    _typed(body, "tools", list, "a list of tool definitions")
    _typed(body, "tool_choice", dict, 'an object like {"type": "auto"}')
    _typed(body, "stop_sequences", list, "a list of strings")
    _typed(body, "metadata", dict, 'an object like {"user_id": "..."}')
    tools = _anthropic_tools_to_openai(body.get("tools"))
    if tools:
        out_body["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if tools or choice.get("type") == "none":
            out_body["tool_choice"] = _anthropic_tool_choice_to_openai(choice)
        if choice.get("disable_parallel_tool_use") and tools:
            out_body["parallel_tool_calls"] = False
    for src, dst in (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(src) is not None:
            out_body[dst] = body[src]
    if body.get("stop_sequences"):
        out_body["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out_body["stream"] = True
        out_body["stream_options"] = {"include_usage": True}  # an Anthropic stream ends with usage
    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id:
        out_body["user"] = user_id
    return out_body


# ------------------------------------------------------------------------------------------ OpenAI -> Anthropic


def _append_turn(out: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]], content: Any = None) -> None:
    """Append a turn to `out`; Anthropic wants user/assistant turns to alternate, so consecutive
    same-role turns merge. `content` (a plain string) is kept as it is when the turn stands alone."""
    if out and out[-1]["role"] == role:
        last = out[-1]
        if isinstance(last["content"], str):
            last["content"] = [{"type": "text", "text": last["content"]}] if last["content"] else []
        last["content"].extend(blocks)
    else:
        out.append({"role": role, "content": content if content is not None else blocks})


def _openai_messages_to_anthropic(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system blocks (system and developer messages) and the alternating turns of OpenAI messages."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, content = message["role"], message.get("content")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(openai_parts_to_anthropic(content, where))
        elif role == "user":
            if isinstance(content, str):
                _append_turn(out, "user", [{"type": "text", "text": content}] if content else [], content)
            else:
                _append_turn(out, "user", openai_parts_to_anthropic(content, where))
        elif role == "assistant":
            blocks = openai_parts_to_anthropic(content, where)
            for call in _typed(message, "tool_calls", list, "a list of tool calls", f"{where}.") or ():
                blocks.append(tool_use(call))
            plain = isinstance(content, str) and content and not message.get("tool_calls")
            _append_turn(out, "assistant", blocks, content if plain else None)
        elif role == "tool":
            result = text_of(content) if isinstance(content, list | str | None) else str(content)
            _append_turn(
                out,
                "user",
                [{"type": "tool_result", "tool_use_id": tool_id(message.get("tool_call_id")), "content": result}],
            )
        else:
            raise TranslationError(f"{where}.role {role!r} is not one of system, developer, user, assistant, tool")
    return system, out


def _openai_tools_to_anthropic(tools: list[Any] | None) -> list[dict[str, Any]]:
    """Function tools (with a name) as Anthropic tools; other tools are dropped."""
    out = []
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(function, dict) and function.get("name"):
            t = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object"}}
            if function.get("description"):
                t["description"] = function["description"]
            out.append(t)
    return out


def _openai_tool_choice_to_anthropic(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"type": "tool", "name": name} if name else None
    return {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}.get(choice)


@guarded("request body")
def openai_request_to_anthropic(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Translate a canonical OpenAI chat request into an Anthropic Messages request for `model`."""
    system, out_messages = _openai_messages_to_anthropic(_messages(body))
    _typed(body, "tools", list, "a list of tool definitions")
    _typed(body, "tool_choice", (str, dict), '"auto", "none", "required" or {"type": "function", ...}')
    _typed(body, "stop", (str, list), "a string or a list of strings")
    out: dict[str, Any] = {"model": model, "messages": out_messages}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 and system[0]["type"] == "text" else system
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else DEFAULT_ANTHROPIC_MAX_TOKENS
    if isinstance(body.get("temperature"), int | float):
        out["temperature"] = min(max(float(body["temperature"]), 0.0), 1.0)  # OpenAI 0..2, Anthropic 0..1
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    tools = _openai_tools_to_anthropic(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _openai_tool_choice_to_anthropic(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice:
            out["tool_choice"] = choice
    return out
