"""Where a model reads text in a canonical (OpenAI chat) request and response, and how to rewrite it there.

One walker per structure visits every model-visible text with its location (a path such as
`("messages", 2, "tool_calls", 0, "function", "arguments")`, see `location`) and the role of the
message it stands in, and puts back what the visitor returns: `visit(path, role, text) -> text`.
Returning the very same string changes nothing; another string replaces the text where it stands.

- JSON that a model reads as data (tool-call `arguments`) is decoded; every string in it (object
  keys included, and numbers as their text) is visited, and it is re-encoded only when one of
  them changed, so it stays valid JSON. `arguments` that are not valid JSON are one plain text.
- JSON schemas (tool `parameters`, `response_format.json_schema.schema`) are walked the way a
  model reads them: descriptions, titles, `enum`/`const`/`default`/`examples` values, property
  names and the `required` lists that name them, and any other annotation; never the keywords
  themselves, nor `type`, `format`, `$ref` or the numeric limits.
- Deeper than `MAX_DEPTH` levels, a JSON value is visited as one text (its strings and numbers,
  one per line) and replaced by the (string) result when that changed.

The locations are listed in docs/policies.md ("Which texts each phase sees"). This module
imports only the standard library and orjson.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson

Path = tuple[Any, ...]
Text = tuple[Path, Any, str]  # (where, role, text)
Visit = Callable[[Path, Any, str], str]

MAX_DEPTH = 64

# JSON Schema keywords whose values a model does not read as text (types, references, limits).
_SCHEMA_KEYWORDS = frozenset({
    "type", "format", "$ref", "$schema", "$id", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary",
    "$comment", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
    "maxLength", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "minContains",
    "maxContains", "contentEncoding", "contentMediaType", "readOnly", "writeOnly", "deprecated", "nullable",
    "strict",
})  # fmt: skip
_SUBSCHEMA = frozenset({
    "items", "additionalProperties", "additionalItems", "not", "if", "then", "else", "contains", "propertyNames",
    "unevaluatedProperties", "unevaluatedItems", "contentSchema",
})  # fmt: skip
_SUBSCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_PART_TEXTS = ("text", "refusal")
_MEDIA = frozenset({"image_url", "input_audio", "file"})  # a media part's object, e.g. {"url", "detail"}
_MEDIA_PAYLOADS = frozenset({"data", "file_data"})  # the media itself; a `url` only when it is data
# Message fields walked by name, or ids the model does not read as text; any other field of a
# message is forwarded as it is (a chat template may print it), so every string in it is scanned.
_MESSAGE_FIELDS = frozenset({"role", "content", "name", "refusal", "tool_calls", "function_call", "tool_call_id"})
# Top-level request fields that hold no text a model reads, or whose texts are walked by name.
# Any other field (e.g. an OpenAI-compatible server's `documents` or `chat_template`) is forwarded
# as it is, so every string in it is a text to scan.
REQUEST_FIELDS = frozenset({
    "model", "messages", "tools", "functions", "response_format", "prediction", "tool_choice", "function_call",
    "stream", "stream_options", "temperature", "top_p", "n", "max_tokens", "max_completion_tokens", "stop",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "seed", "user", "metadata",
    "store", "parallel_tool_calls", "service_tier", "modalities", "reasoning_effort", "audio", "verbosity",
    "safety_identifier", "prompt_cache_key", "web_search_options",
})  # fmt: skip  # content parts: text parts (and any part's `text`), refusal parts


# An answer's message fields walked by name (`Exchange.map_response`, the stream relay's channels), or
# holding no text (`role`; `audio` is its sound and the transcript the relay checks on its own); any
# other field (`reasoning_content`, `reasoning`, `reasoning_details`, `annotations`, ...) reaches the
# client as it is, so every string in it is a text to check (`visit_answer_fields`).
ANSWER_FIELDS = frozenset({"role", "content", "refusal", "tool_calls", "function_call", "audio"})
# Keys whose values in such a field are not text a model wrote: ids, types, positions, and opaque
# reasoning state (signed or encrypted: `signature`, `encrypted_content`, a `redacted_thinking`
# or `reasoning.encrypted` item's `data`), which a redaction would only break.
OPAQUE_ANSWER_KEYS = frozenset({
    "id", "type", "index", "role", "format", "signature", "encrypted_content", "finish_reason", "logprobs",
})  # fmt: skip
OPAQUE_DATA_TYPES = frozenset({"redacted_thinking", "reasoning.encrypted"})  # items whose `data` is encrypted


# A chat answer's (or stream chunk's) top-level fields and a choice's fields that hold no text a model or a
# search wrote (ids, times, names kt chose, numbers, Azure's filter verdicts: categories, booleans, severities),
# or that are walked by name (`choices`, `message`, `delta`); OpenAI's `obfuscation` is random padding. Any
# other field (Perplexity's `citations` and `search_results`, vLLM's `stop_reason`, OpenRouter's
# `native_finish_reason`, ...) reaches the client as it is, so every string in it is a text to check.
COMPLETION_FIELDS = frozenset({
    "id", "object", "created", "model", "system_fingerprint", "service_tier", "usage", "choices",
    "prompt_filter_results", "content_filter_results", "obfuscation",
})  # fmt: skip
CHOICE_FIELDS = frozenset({"index", "message", "delta", "finish_reason", "logprobs", "content_filter_results"})


def location(path: Path) -> str:
    """`("messages", 2, "content")` -> `messages[2].content`."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


# ---------------------------------------------------------------------------------------------- JSON values


def visit_data(value: Any, path: Path, role: Any, visit: Visit, keys: bool = True, depth: int = 0) -> Any:
    """Every string (object keys too when `keys`) and number of a decoded JSON value.

    Returns `value` itself when nothing changed, else a rebuilt value (a changed number becomes
    the string that replaced its text)."""
    if isinstance(value, str):
        return visit(path, role, value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        text = str(value)
        new = visit(path, role, text)
        return value if new == text else new
    if depth >= MAX_DEPTH and isinstance(value, dict | list):
        return _as_one_text(value, path, role, visit)
    depth += 1
    if isinstance(value, dict):
        out: dict[Any, Any] | None = None  # a copy, made at the first change
        for n, (key, item) in enumerate(value.items()):
            new_key = visit(path, role, key) if keys and isinstance(key, str) else key
            new_item = visit_data(item, path, role, visit, keys, depth)
            if out is None and (new_key is not key or new_item is not item):
                out = dict(itertools.islice(value.items(), n))
            if out is not None:
                out[new_key] = new_item
        return value if out is None else out
    if isinstance(value, list):
        return _mapped(value, lambda n, item: visit_data(item, path, role, visit, keys, depth))
    return value


def _mapped(items: list[Any], fn: Callable[[int, Any], Any]) -> list[Any]:
    """`fn(position, item)` over a list: the list itself when every result is its item, else a new list."""
    copy: list[Any] | None = None
    for n, item in enumerate(items):
        new = fn(n, item)
        if copy is not None:
            copy.append(new)
        elif new is not item:
            copy = items[:n]
            copy.append(new)
    return items if copy is None else copy


def answer_fields(message: dict[str, Any], known: frozenset[str] = ANSWER_FIELDS) -> dict[str, Any]:
    """The fields of an answer's message (or stream delta) beyond `known` that hold something, by name
    (not `null`, `[]`, `""`, 0: OpenAI's answers carry `annotations: []`)."""
    if message.keys() <= known:  # the usual answer: one set comparison
        return {}
    return {k: v for k, v in message.items() if k not in known and v}


def visit_answer_fields(value: Any, path: Path, visit: Visit, depth: int = 0) -> Any:
    """Every string of an answer's field kt does not know (`ANSWER_FIELDS`), with its path (keys and
    list positions), except under `OPAQUE_ANSWER_KEYS`; not numbers (positions, scores), not keys.

    Returns `value` itself when nothing changed, else a rebuilt value; deeper than `MAX_DEPTH`, a
    value is visited as one text."""
    if isinstance(value, str):
        return visit(path, "assistant", value)
    if not isinstance(value, dict | list):
        return value
    if depth >= MAX_DEPTH:
        return _as_one_text(value, path, "assistant", visit)
    depth += 1
    if isinstance(value, dict):
        out: dict[Any, Any] | None = None  # a copy, made at the first change
        kind = value.get("type")
        opaque_data = type(kind) is str and kind in OPAQUE_DATA_TYPES
        for n, (key, item) in enumerate(value.items()):
            skip = key in OPAQUE_ANSWER_KEYS or (key == "data" and opaque_data)
            new = item if skip else visit_answer_fields(item, (*path, key), visit, depth)
            if out is None and new is not item:
                out = dict(itertools.islice(value.items(), n))
            if out is not None:
                out[key] = new
        return value if out is None else out
    return _mapped(value, lambda n, item: visit_answer_fields(item, (*path, n), visit, depth))


def _as_one_text(value: Any, path: Path, role: Any, visit: Visit) -> Any:
    """A value nested too deep to walk: its strings (keys too) and numbers, one per line, as one text."""
    texts: list[str] = []
    stack = [value]
    while stack:  # no recursion: the value may be nested up to the JSON parser's limit
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            texts.extend(k for k in item if isinstance(k, str))
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            texts.append(str(item))
    text = "\n".join(texts)
    new = visit(path, role, text)
    return value if new == text else new


def visit_arguments(arguments: Any, path: Path, role: Any, visit: Visit) -> Any:
    """A tool call's `arguments`: decoded JSON (re-encoded when changed), else one plain text."""
    if not isinstance(arguments, str):
        return visit_data(arguments, path, role, visit) if isinstance(arguments, dict | list) else arguments
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return visit(path, role, arguments)
    new = visit_data(value, path, role, visit)
    return arguments if new is value else orjson.dumps(new).decode()


def visit_schema(schema: Any, path: Path, role: Any, visit: Visit, depth: int = 0) -> Any:
    """The texts a model reads in a JSON schema; returns the schema itself when nothing changed."""
    if not isinstance(schema, dict | list):
        return schema  # `true` / `false` schemas
    if depth >= MAX_DEPTH:
        return _as_one_text(schema, path, role, visit)
    depth += 1
    if isinstance(schema, list):  # a list of schemas (`items: [...]`)
        return _mapped(schema, lambda n, sub: visit_schema(sub, path, role, visit, depth))
    out: dict[str, Any] | None = None  # a copy, made at the first change
    for n, (key, value) in enumerate(schema.items()):
        if key in _SCHEMA_KEYWORDS:
            continue
        if key in _SUBSCHEMA or key in _SUBSCHEMA_LISTS:
            new = visit_schema(value, path, role, visit, depth)
        elif key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
            new = _visit_named(value, path, role, visit, depth)
        else:  # description, title, enum, const, default, examples, required, annotations
            new = visit_data(value, path, role, visit, True, depth)
        if out is None and new is not value:
            out = dict(itertools.islice(schema.items(), n))
        if out is not None:
            out[key] = new
    if out is not None and len(out) < len(schema):  # keywords after the first change
        out = {key: out.get(key, value) for key, value in schema.items()}
    return schema if out is None else out


def _visit_named(named: dict[str, Any], path: Path, role: Any, visit: Visit, depth: int) -> dict[str, Any]:
    out: dict[str, Any] | None = None
    for n, (name, sub) in enumerate(named.items()):
        new_name = visit(path, role, name) if isinstance(name, str) else name
        new_sub = visit_schema(sub, path, role, visit, depth)
        if out is None and (new_name is not name or new_sub is not sub):
            out = dict(itertools.islice(named.items(), n))
        if out is not None:
            out[new_name] = new_sub
    return named if out is None else out


def _put(holder: dict[str, Any], key: str, path: Path, role: Any, visit: Visit) -> None:
    """Visit `holder[key]` when it is a string; store the result when it changed."""
    text = holder.get(key)
    if isinstance(text, str):
        new = visit((*path, key), role, text)
        if new is not text:
            holder[key] = new


# ---------------------------------------------------------------------------------------------- requests


def visit_parts(parts: list[Any], path: Path, role: Any, visit: Visit) -> None:
    """Content parts (in place): `text` of any part, `refusal` parts, and every other string a part
    carries (a media part's `detail`, `format`, `filename`, a URL that is not a `data:` URL, any field
    kt does not know), but not the media payloads themselves (`on_unscannable_input` decides on those)."""
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            continue
        for key in _PART_TEXTS:
            if key in part:
                _put(part, key, (*path, j), role, visit)
        if len(part) > 2 or part.get("type") not in _PART_TEXTS:  # not a plain {type, text} part
            _visit_part_fields(part, (*path, j), role, visit)


def _visit_part_fields(part: dict[str, Any], path: Path, role: Any, visit: Visit) -> None:
    for key in [k for k in part if k not in _PART_TEXTS and k != "type"]:
        value = part[key]
        if key in _MEDIA and isinstance(value, dict):
            for field in [f for f in value if not _is_payload(f, value[f])]:
                item = value[field]
                new = visit_data(item, (*path, key, field), role, visit, keys=False)
                if new is not item:
                    value[field] = new
            continue
        new = visit_data(value, (*path, key), role, visit, keys=False)
        if new is not value:
            part[key] = new


def _is_payload(field: str, value: Any) -> bool:
    """A media part's bytes, which no text policy reads: audio or file data, a `data:` URL (an address
    such as `https://…/customer-42.png` is a text that leaves with the request, and is scanned)."""
    if field != "url":
        return field in _MEDIA_PAYLOADS
    return not isinstance(value, str) or value[:5].lower() == "data:"


def visit_call(call: Any, path: Path, role: Any, visit: Visit) -> None:
    """A tool call (or a legacy `function_call`): its function's name and arguments, in place."""
    if not isinstance(call, dict):
        return
    function = call.get("function")
    if isinstance(function, dict):
        path = (*path, "function")
    elif isinstance(call.get("custom"), dict):  # custom tool calls: {"custom": {"name", "input"}}
        function, path = call["custom"], (*path, "custom")
        _put(function, "input", path, role, visit)
    else:
        function = call  # a legacy `function_call` is the function itself
    _put(function, "name", path, role, visit)
    if "arguments" in function:
        arguments = function["arguments"]
        new = visit_arguments(arguments, (*path, "arguments"), role, visit)
        if new is not arguments:
            function["arguments"] = new


def visit_messages(messages: list[Any], visit: Visit) -> None:
    """Every text of the messages, in order, rewritten in place."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        content = message.get("content")
        if isinstance(content, str):
            new = visit(("messages", i, "content"), role, content)
            if new is not content:
                message["content"] = new
        elif isinstance(content, list):
            visit_parts(content, ("messages", i, "content"), role, visit)
        if len(message) > 2:  # beyond role and content: name, refusal, tool calls
            _put(message, "name", ("messages", i), role, visit)
            _put(message, "refusal", ("messages", i), role, visit)
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                for k, call in enumerate(calls):
                    visit_call(call, ("messages", i, "tool_calls", k), role, visit)
            if "function_call" in message:
                visit_call(message["function_call"], ("messages", i, "function_call"), role, visit)
            for key in [k for k in message if k not in _MESSAGE_FIELDS]:
                value = message[key]
                new = visit_data(value, ("messages", i, key), role, visit, keys=False)
                if new is not value:
                    message[key] = new


# Content-part types whose every model-visible byte is a text `visit_parts` visits; any other part
# (`image_url`, `input_audio`, `file`, a server's `video_url`, ...) holds what no text policy reads.
READABLE_PARTS = frozenset({"text", "refusal"})
_SHOWN_TYPE = 40  # longest part type named in a message (it comes from the client)


def unreadable_parts(messages: list[Any]) -> list[tuple[Path, str]]:
    """(where, part type) of every content part of the messages that holds something other than text.

    The type is named only when it is a short identifier (it comes from the client); a part that is not
    an object is `"not an object"`, one without a usable `type` `"untyped"`."""
    out: list[tuple[Path, str]] = []
    for i, message in enumerate(messages):
        content = message.get("content") if type(message) is dict else None
        if type(content) is not list:  # a string (the usual message), None, or a shape validation refused
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if type(kind) is str and kind in READABLE_PARTS and _MEDIA.isdisjoint(part):  # media under a text type: not
                continue
            if not isinstance(part, dict):
                shown = "not an object"
            elif isinstance(kind, str) and 0 < len(kind) <= _SHOWN_TYPE and kind.replace("_", "").isalnum() \
                    and kind.isascii():
                shown = kind
            else:
                shown = "untyped"
            out.append((("messages", i, "content", j), shown))
    return out


# A message's text parts as the model reads them: one text, the parts' texts in order (see `part_runs`).
Run = tuple[Path, Any, tuple[Text, ...]]  # (where: the message's content, role, each part's (where, role, text))


def part_runs(messages: list[Any]) -> list[Run]:
    """The messages whose content holds two or more text (or refusal) parts, with those parts' texts in order.

    OpenAI and OpenAI-compatible servers read a message's text parts as one text (concatenated), so a text
    kind scans them also joined ("" between): a secret split across parts is found. A part of another kind
    (an image) between two text parts does not separate them: no text stands between them either."""
    out: list[Run] = []
    for i, message in enumerate(messages):
        content = message.get("content") if type(message) is dict else None
        if type(content) is not list or len(content) < 2:  # a string (the usual message), or a single part
            continue
        role = message.get("role")
        found: list[Text] = []
        for j, part in enumerate(content):
            kind = part.get("type") if type(part) is dict else None
            if kind == "text" or kind == "refusal":
                text = part.get(kind)
                if type(text) is str:
                    found.append((("messages", i, "content", j, kind), role, text))
        if len(found) > 1:
            out.append((("messages", i, "content"), role, tuple(found)))
    return out


def plain_texts(messages: list[Any]) -> list[Text] | None:
    """The texts of messages that are all `{"role", "content": "<string>"}` (the usual request), else None."""
    out: list[Text] = []
    for i, message in enumerate(messages):
        if type(message) is not dict or len(message) != 2:
            return None
        content = message.get("content")
        if type(content) is not str:
            return None
        out.append((("messages", i, "content"), message.get("role"), content))
    return out


def map_plain(texts: list[Text], messages: list[Any], fn: Visit) -> list[Text]:
    """`fn` over the plain messages' contents (as `plain_texts` listed them); the new list."""
    out: list[Text] = []
    for i, message in enumerate(messages):
        path, role, text = texts[i]
        new = fn(path, role, text)
        if new is not text:
            message["content"] = new
        out.append((path, role, new))
    return out


def visit_request_extras(request: dict[str, Any], visit: Visit) -> None:
    """The request's texts outside the messages and the definitions: `prediction`, `tool_choice`, and every
    string of a field not in `REQUEST_FIELDS`."""
    prediction = request.get("prediction")
    if isinstance(prediction, dict):
        content = prediction.get("content")
        if isinstance(content, list):
            visit_parts(content, ("prediction", "content"), None, visit)
        else:
            _put(prediction, "content", ("prediction",), None, visit)
    choice = request.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        _put(choice["function"], "name", ("tool_choice", "function"), None, visit)
    if len(request) > 2:  # beyond model and messages
        for key in [k for k in request if k not in REQUEST_FIELDS]:
            value = request[key]
            new = visit_data(value, (key,), None, visit, keys=False)
            if new is not value:
                request[key] = new


def visit_named_schema(spec: dict[str, Any], path: Path, schema_key: str, visit: Visit) -> None:
    """A definition the model reads (in place): its name, description and the JSON schema under `schema_key`
    (a function's `parameters`, `response_format.json_schema`'s `schema`)."""
    _put(spec, "name", path, None, visit)
    _put(spec, "description", path, None, visit)
    if schema_key in spec:
        schema = spec[schema_key]
        new = visit_schema(schema, (*path, schema_key), None, visit)
        if new is not schema:
            spec[schema_key] = new


def visit_definitions(tools: list[Any], request: dict[str, Any], visit: Visit) -> None:
    """What the application defines for the model: tools, legacy functions, a response JSON schema."""
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        if isinstance(function, dict):
            visit_named_schema(function, ("tools", k, "function"), "parameters", visit)
            continue
        for key, value in tool.items():  # other tool types (e.g. custom): every string value
            if key != "type":
                new = visit_data(value, ("tools", k, key), None, visit, keys=False)
                if new is not value:
                    tool[key] = new
    functions = request.get("functions")
    if isinstance(functions, list):
        for k, function in enumerate(functions):
            if isinstance(function, dict):
                visit_named_schema(function, ("functions", k), "parameters", visit)
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and isinstance(response_format.get("json_schema"), dict):
        visit_named_schema(response_format["json_schema"], ("response_format", "json_schema"), "schema", visit)


def definitions_json(tools: list[Any], request: dict[str, Any]) -> bytes | None:
    """The definitions as one JSON text; None when they are not JSON (a golden case's odd YAML values)."""
    try:
        return orjson.dumps((tools, request.get("functions"), request.get("response_format")))
    except TypeError:
        return None


def definitions_key(tools: list[Any], request: dict[str, Any], limit: int) -> bytes | None:
    """The definitions as one JSON text (what a policy remembers them by); None when over `limit` bytes."""
    key = definitions_json(tools, request)
    return key if key is not None and len(key) <= limit else None


def collect(walk: Callable[[Visit], None], fn: Visit | None = None) -> list[Text]:
    """The (where, role, text) of every text `walk` visits, in order; with `fn`, each text is
    first replaced by `fn(where, role, text)` and the result listed."""
    out: list[Text] = []
    append = out.append
    if fn is None:

        def keep(path: Path, role: Any, text: str) -> str:
            append((path, role, text))
            return text
    else:

        def keep(path: Path, role: Any, text: str) -> str:
            new = fn(path, role, text)
            append((path, role, new))
            return new

    walk(keep)
    return out
