"""Server-Sent Events, both ways: the incremental parser of an upstream's stream and the formatter of ours.

No provider knowledge: the adapters read provider streams through `SSEParser`; the proxy,
`anthropic_stream` and `openai_stream` write streams and their errors with `format_sse`.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_LINE_END = re.compile(rb"\r\n|\n|\r")
MAX_SSE_EVENT = 1024 * 1024  # the longest SSE line, and the most `data` one event may carry


class SSEError(ValueError):
    """The stream is not SSE kt will read (a line or an event beyond `MAX_SSE_EVENT`)."""


class SSEParser:
    """Incremental Server-Sent Events parser: bytes in (any split), `(event, data)` pairs out.

    Follows the WHATWG rules: lines end in CRLF, LF or CR (also when split across chunks);
    `:` lines are comments; several `data:` lines join with "\\n"; a blank line dispatches;
    `event` is None when not given; `id`/`retry` are ignored. `data` is a str (e.g. "[DONE]").

    Linear in the bytes fed, whatever the split: only new bytes are searched for line ends and
    an unfinished line is kept in pieces. A line, or the data of one event, longer than
    `max_size` bytes raises `SSEError` (memory stays bounded by it).
    """

    def __init__(self, max_size: int = MAX_SSE_EVENT) -> None:
        self.max_size = max_size
        self._pending: list[bytes] = []  # pieces of the unfinished line
        self._pending_size = 0
        self._cr = False  # the last chunk ended in CR: an LF starting the next one belongs to it
        self._event: str | None = None
        self._data: list[str] = []
        self._data_size = 0
        self._head = b""  # the first bytes while they may still be a BOM
        self._first = True

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        """Consume `chunk`; return the events completed by it."""
        if self._first:
            chunk = self._head + chunk
            if len(chunk) < 3 and b"\xef\xbb\xbf".startswith(chunk):
                self._head = chunk
                return []
            self._first = False
            self._head = b""
            chunk = chunk.removeprefix(b"\xef\xbb\xbf")
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        out: list[tuple[str | None, str]] = []
        pos = 0
        for match in _LINE_END.finditer(chunk):
            piece = chunk[pos : match.start()]
            if self._pending:
                self._pending.append(piece)
                piece = b"".join(self._pending)
                self._pending, self._pending_size = [], 0
            if len(piece) > self.max_size:
                raise SSEError(f"an SSE line is longer than {self.max_size} bytes")
            self._line(piece, out)
            pos = match.end()
        if pos < len(chunk):
            self._pending.append(chunk[pos:])
            self._pending_size += len(chunk) - pos
            if self._pending_size > self.max_size:
                raise SSEError(f"an SSE line is longer than {self.max_size} bytes")
        elif chunk[-1:] == b"\r":
            self._cr = True
        return out

    def close(self) -> list[tuple[str | None, str]]:
        """End of stream: an unfinished line, and an event without its blank line, are dropped."""
        self._pending, self._pending_size = [], 0
        self._event, self._data, self._data_size = None, [], 0
        return []

    def _line(self, raw: bytes, out: list[tuple[str | None, str]]) -> None:
        if not raw:
            if self._data:
                out.append((self._event, "\n".join(self._data)))
            self._event, self._data, self._data_size = None, [], 0
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data_size += len(raw)
            if self._data_size > self.max_size:
                raise SSEError(f"an SSE event carries more than {self.max_size} bytes of data")
            self._data.append(value)
        elif name == "event":
            self._event = value or None


def format_sse(data: Any, event: str | None = None) -> bytes:
    """One SSE message: `event: <event>` (when given) and `data:` lines, ended by a blank line.

    `data` that is not a str is serialised as compact JSON.
    """
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    head = f"event: {event}\n" if event else ""
    body = "".join(f"data: {line}\n" for line in text.split("\n")) if "\n" in text else f"data: {text}\n"
    return (head + body + "\n").encode()
