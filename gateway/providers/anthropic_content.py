"""Anthropic content blocks <-> OpenAI content parts and tool calls, shared by requests and answers.

Text, images (base64 or URL), documents and files, `tool_use` blocks <-> `tool_calls`, tool-call
ids as Anthropic accepts them. The tables are in docs/providers.md.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.providers.translate import TranslationError

_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.S)
_NOT_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")


def as_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """`content` (a string or a list of blocks/parts) as a list of blocks; `where` names it in the error."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise TranslationError(f"{where}.content must be a string or a list of content blocks")
    return content


# ------------------------------------------------------------------------------------------ Anthropic -> OpenAI


def _anthropic_image_to_openai(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _anthropic_document_to_openai(block: dict[str, Any]) -> list[dict[str, Any]]:
    """A `document` block: plain-text sources become text (so policies see them), base64 a file part."""
    source = block.get("source") or {}
    if source.get("type") == "text":
        return [{"type": "text", "text": source.get("data", "")}]
    if source.get("type") == "content":
        return anthropic_parts_to_openai(as_blocks(source.get("content"), "document.source"))
    if source.get("type") == "base64":
        file = {"file_data": f"data:{source.get('media_type', 'application/pdf')};base64,{source.get('data', '')}"}
        if block.get("title"):
            file["filename"] = block["title"]
        return [{"type": "file", "file": file}]
    return []


def anthropic_parts_to_openai(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic text, image and document blocks as OpenAI content parts (other blocks are dropped)."""
    parts = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and (part := _anthropic_image_to_openai(block)):
            parts.append(part)
        elif kind == "document":
            parts.extend(_anthropic_document_to_openai(block))
    return parts


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def text_and_tool_calls(content: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The joined text blocks and the tool_use blocks as OpenAI `tool_calls` of Anthropic content."""
    text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id", ""),
            "type": "function",
            "function": {"name": b.get("name", ""), "arguments": _dumps(b.get("input") or {})},
        }
        for b in content
        if b.get("type") == "tool_use"
    ]
    return text, calls


# ------------------------------------------------------------------------------------------ OpenAI -> Anthropic


def _openai_image_to_anthropic(part: dict[str, Any]) -> dict[str, Any]:
    url = (part.get("image_url") or {}).get("url", "")
    match = _DATA_URL.match(url)
    if match:
        return {"type": "image", "source": {"type": "base64", "media_type": match[1], "data": match[2]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def openai_parts_to_anthropic(content: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI text, refusal, image and (data: URL) file parts as Anthropic blocks; empty texts are dropped."""
    out = []
    for part in as_blocks(content, where):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get("text") if kind == "text" else part.get("refusal")
            if text:  # Anthropic rejects empty text blocks
                out.append({"type": "text", "text": text})
        elif kind == "image_url":
            out.append(_openai_image_to_anthropic(part))
        elif kind == "file" and (match := _DATA_URL.match((part.get("file") or {}).get("file_data") or "")):
            document = {"type": "document", "source": {"type": "base64", "media_type": match[1], "data": match[2]}}
            if part["file"].get("filename"):
                document["title"] = part["file"]["filename"]
            out.append(document)
    return out


def _parse_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI `function.arguments` (a JSON string) -> Anthropic `input` (an object), leniently.

    Models sometimes emit truncated or invalid JSON; that is kept as `{"_raw_arguments": text}`
    rather than failing the whole request.
    """
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        return {"_raw_arguments": str(arguments)}
    return value if isinstance(value, dict) else {"_raw_arguments": str(arguments)}


def tool_id(openai_id: Any) -> str:
    """An OpenAI tool-call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`; other characters become `_`)."""
    return _NOT_TOOL_ID.sub("_", str(openai_id or "")) or "toolu_"


def tool_use(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as an Anthropic `tool_use` block."""
    function = call.get("function") or {}
    return {"type": "tool_use", "id": tool_id(call.get("id")), "name": function.get("name", ""),
            "input": _parse_arguments(function.get("arguments"))}
