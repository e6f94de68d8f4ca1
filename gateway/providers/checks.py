"""What an upstream answer must look like before the proxy reads it (a canonical completion or chunk).

An upstream that answers junk (`usage.prompt_tokens: "x"`, a choice that is a string, a
content part nested hundreds deep, a stream error that is not an object) gets a 502
`upstream_error` from the adapters, never a 500 from deep inside the proxy or a policy. The
checks are a few `isinstance` per choice; only list contents (rare) are walked, to bound
their depth.
"""

from __future__ import annotations

from typing import Any

MAX_PART_DEPTH = 32  # nesting inside one content part (real ones are < 6 deep)
_USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


class Malformed(ValueError):
    """The answer is not what the OpenAI format allows; the message says what (no upstream text)."""


def usage(value: Any) -> None:
    """`usage` is absent or an object whose token counts are non-negative integers."""
    if value is None:
        return
    if type(value) is not dict:
        raise Malformed("`usage` is not an object")
    for key in _USAGE_COUNTS:
        count = value.get(key)
        if count is not None and (type(count) is not int or count < 0):  # type(): a bool is no count
            raise Malformed(f"`usage.{key}` is not a token count")


def _depth_ok(value: Any) -> bool:
    """Whether `value` nests at most MAX_PART_DEPTH deep (iterative: no recursion to exhaust)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_PART_DEPTH:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def _content(value: Any, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise Malformed(f"`{where}.content` is neither text nor a list of content parts")
    if not _depth_ok(value):
        raise Malformed(f"`{where}.content` nests deeper than {MAX_PART_DEPTH} levels")


def _tool_calls(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise Malformed(f"`{where}.tool_calls` is not a list")
    for call in value:
        if not isinstance(call, dict):
            raise Malformed(f"`{where}.tool_calls[]` is not an object")
        index, call_id = call.get("index", 0), call.get("id")
        if type(index) is not int or not (call_id is None or isinstance(call_id, str)):
            raise Malformed(f"`{where}.tool_calls[]` has an `index` that is not an integer or an `id` that is not text")
        function = call.get("function")
        if function is None:
            continue
        if not isinstance(function, dict) or not all(
                v is None or isinstance(v, str) for v in (function.get("name"), function.get("arguments"))):
            raise Malformed(f"`{where}.tool_calls[].function` is not {{name, arguments}} text")


def _choices(resp: dict[str, Any], key: str) -> None:
    """Each choice and its `message`/`delta` (`key`); error texts are built only on an error."""
    choices = resp.get("choices")
    if choices is None and key == "delta":
        return
    if type(choices) is not list:
        raise Malformed("the answer has no `choices` list")
    for choice in choices:
        if type(choice) is not dict:
            raise Malformed("a choice is not an object")
        index = choice.get("index", 0)
        if type(index) is not int:
            raise Malformed("a choice's `index` is not an integer")
        finish = choice.get("finish_reason")
        if finish is not None and type(finish) is not str:
            raise Malformed("a choice's `finish_reason` is not text")
        message = choice.get(key)
        if message is None:
            continue
        if type(message) is not dict:
            raise Malformed(f"`choices[{index}].{key}` is not an object")
        content, refusal, calls = message.get("content"), message.get("refusal"), message.get("tool_calls")
        if content is not None and type(content) is not str:
            _content(content, f"choices[{index}].{key}")
        if refusal is not None and type(refusal) is not str:
            raise Malformed(f"`choices[{index}].{key}.refusal` is not text")
        if calls is not None:
            _tool_calls(calls, f"choices[{index}].{key}")


def _object(value: Any, what: str) -> dict[str, Any]:
    """`value` when it is a JSON object; else `Malformed` saying that `what` is not one."""
    if type(value) is not dict:
        raise Malformed(f"{what} is not a JSON object")
    return value


def completion(resp: Any) -> dict[str, Any]:
    """`resp` when it is a chat completion the proxy can read; else `Malformed`."""
    _choices(_object(resp, "the answer"), "message")
    usage(resp.get("usage"))
    return resp


def chunk(value: Any) -> dict[str, Any]:
    """`value` when it is a stream chunk the proxy can read (an `error` chunk gets an object `error`)."""
    if "error" in _object(value, "a stream event") and not value.get("choices"):
        error = value["error"]
        if not isinstance(error, dict) or not isinstance(error.get("message", ""), str):
            value["error"] = {"message": str(error)[:300] if not isinstance(error, dict) else ""}
        return value
    _choices(value, "delta")
    usage(value.get("usage"))
    return value


def embeddings(resp: Any) -> dict[str, Any]:
    """`resp` when it is an embeddings answer the proxy can read; else `Malformed`."""
    if type(_object(resp, "the answer").get("data")) is not list:
        raise Malformed("the answer has no `data` list")
    usage(resp.get("usage"))
    return resp


def error_message(resp: Any, key: str) -> str | None:
    """The message of a 2xx answer that is an error object (`{"error": ...}` and no `key`), else None.
    `"error": null` is no error (a Response object carries it, and may have an empty `output`)."""
    if type(resp) is not dict or resp.get("error") is None or resp.get(key):
        return None
    error = resp["error"]
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) else ""
