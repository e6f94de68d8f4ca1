"""Request validation of the proxy routes: a 400 with the envelope that names the field to fix.

`validate_chat` checks an OpenAI chat request, `validate_messages` an Anthropic Messages one
(`/v1/messages`) the same way: the model, the messages (roles, content of known shapes), the
booleans and positive integers. Both run before translation and before any policy.
"""

from __future__ import annotations

from typing import Any

from gateway.proxy.errors import invalid

# Content block types of the Messages API (the anthropic SDK's ContentBlockParam); others are refused.
ANTHROPIC_BLOCKS = frozenset({
    "text", "image", "document", "search_result", "thinking", "redacted_thinking", "tool_use", "tool_result",
    "server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result", "tool_search_tool_result",
    "container_upload",
})
_TOOL_RESULT_BLOCKS = frozenset({"text", "image", "document", "search_result", "tool_reference"})
# per block type: (field, type it must have, what to say) that the block needs
_BLOCK_FIELDS: dict[str, tuple[tuple[str, type, str], ...]] = {
    "text": (("text", str, "a string"),),
    "image": (("source", dict, "an object"),),
    "document": (("source", dict, "an object"),),
    "tool_use": (("id", str, "a string"), ("name", str, "a string"), ("input", dict, "an object")),
    "tool_result": (("tool_use_id", str, "a string"),),
    "thinking": (("thinking", str, "a string"),),
}


def positive_int(body: dict[str, Any], key: str, required: bool = False) -> None:
    """`body[key]` is an integer of at least 1 (not a boolean); absent is fine unless `required`."""
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"`{key}` is required: a positive integer", f"invalid_{key}")
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(f"`{key}` must be a positive integer, got {_shown(value)}", f"invalid_{key}")


def boolean(body: dict[str, Any], key: str) -> None:
    if key in body and not isinstance(body[key], bool):
        raise invalid(f"`{key}` must be true or false, got {_shown(body[key])}", f"invalid_{key}")


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("`model` is required and must be a non-empty string", "missing_model")
    return model


MAX_JSON_DEPTH = 128  # orjson re-serialises at most 255 levels, and translation recurses: deeper is a 400


def nested_deeper(body: Any, raw: bytes, limit: int) -> bool:
    """Whether `body` (parsed from `raw`) nests containers deeper than `limit`.

    A body with no more brackets than `limit` cannot (the common case costs two byte counts);
    others are walked without recursion."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    stack = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def messages_of(body: dict[str, Any]) -> list[Any]:
    """The request's `messages`: a non-empty list (what each holds is the caller's to check)."""
    messages = body.get("messages")
    if messages is None:
        raise invalid("`messages` is required: a non-empty list of {role, content} objects", "missing_messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("`messages` must be a non-empty list of {role, content} objects", "invalid_messages")
    return messages


def validate_chat(body: dict[str, Any]) -> dict[str, Any]:
    """Check an OpenAI chat request's shape; raise a 400 saying what to fix."""
    model_of(body)
    for i, message in enumerate(messages_of(body)):
        if not isinstance(message, dict):
            raise invalid(f"`messages[{i}]` must be an object with `role` and `content`", "invalid_messages")
        if not isinstance(message.get("role"), str):
            raise invalid(f"`messages[{i}].role` is required and must be a string", "invalid_messages")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid(f"`messages[{i}].content` must be a string or a list of content parts", "invalid_messages")
        if type(content) is list:  # a bare string part is no OpenAI shape, and a server may still print it
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise invalid(f"`messages[{i}].content[{j}]` must be a content part object such as "
                                  '{"type": "text", "text": "..."}', "invalid_messages")
    boolean(body, "stream")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise invalid("`tools` must be a list of tool definitions", "invalid_tools")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        positive_int(body, key)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("`stream_options` must be an object", "invalid_stream_options")
    return body


def validate_messages(body: dict[str, Any]) -> dict[str, Any]:
    """Check an Anthropic Messages request's shape (as /v1/chat/completions checks its own); raise a 400
    naming the field to fix."""
    model_of(body)
    positive_int(body, "max_tokens", required=True)
    for i, message in enumerate(messages_of(body)):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"`{where}` must be an object with `role` and `content`", "invalid_messages")
        role = message.get("role")
        if role != "user" and role != "assistant":
            raise invalid(f"`{where}.role` must be 'user' or 'assistant' (a system prompt goes in `system`), "
                          f"got {_shown(role)}", "invalid_messages")
        content = message.get("content")
        if not isinstance(content, str):
            _blocks(content, f"{where}.content", ANTHROPIC_BLOCKS, "invalid_messages")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _blocks(system, "system", frozenset({"text"}), "invalid_system")
    boolean(body, "stream")
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise invalid(f"`{key}` must be a number, got {_shown(value)}", f"invalid_{key}")
    positive_int(body, "top_k")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise invalid("`stop_sequences` must be a list of strings", "invalid_stop_sequences")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("`tools` must be a list of tool definitions", "invalid_tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise invalid(f"`tools[{i}]` must be an object with a string `name`", "invalid_tools")
    return body


def _blocks(content: Any, where: str, types: frozenset[str], code: str) -> None:
    """`content` is a list of content blocks of `types`, each with the fields its type needs."""
    if not isinstance(content, list):
        raise invalid(f"`{where}` must be a string or a list of content blocks, got {_shown(content)}", code)
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(block, dict):
            raise invalid(f"`{at}` must be a content block object such as {{\"type\": \"text\", \"text\": \"...\"}}",
                          code)
        kind = block.get("type")
        if not isinstance(kind, str) or kind not in types:  # (a list or an object is not hashable)
            raise invalid(f"`{at}.type` must be one of {', '.join(sorted(types))}; got {_shown(kind)}", code)
        for field, kind_of, what in _BLOCK_FIELDS.get(kind, ()):
            if not isinstance(block.get(field), kind_of):
                raise invalid(f"`{at}.{field}` is required for a {kind} block and must be {what}", code)
        if kind == "tool_result":
            inner = block.get("content")
            if inner is not None and not isinstance(inner, str):
                _blocks(inner, f"{at}.content", _TOOL_RESULT_BLOCKS, code)


def _shown(value: Any) -> str:
    """A short description of a wrong value for an error message (its type, and a short scalar itself)."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:40])
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


__all__ = ["ANTHROPIC_BLOCKS", "MAX_JSON_DEPTH", "boolean", "nested_deeper", "positive_int", "validate_chat",
           "validate_messages"]
