"""Structured logs: JSON lines (default) or text, written off the event loop by a listener thread.

One line per request at info (from the decision event: request_id, route, status, verdict,
reason, latency, revision; never prompt text), one per reload, errors with their context.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}
_REQUEST_FIELDS = ("request_id", "route", "status", "verdict", "reason_code", "latency_ms", "config_revision",
                   "model", "provider", "event_id")
request_log = logging.getLogger("kt.gateway.request")
_listener: logging.handlers.QueueListener | None = None
_requests: queue.SimpleQueue[Any] | None = None  # the listener's queue: request lines skip LogRecord creation


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: msg key=value ...` for humans."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        fields = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        text = f"{ts} {record.levelname} {record.name}: {record.getMessage()}" + (f" {fields}" if fields else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _QueueHandler(logging.handlers.QueueHandler):
    """Hands records to the listener thread as they are (formatting happens there)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _Listener(logging.handlers.QueueListener):
    """Also accepts `(created, fields)` request tuples and turns them into records on its thread."""

    def prepare(self, record: Any) -> logging.LogRecord:
        if isinstance(record, tuple):
            created, fields = record
            record = request_log.makeRecord(request_log.name, logging.INFO, "", 0, "request", (), None, extra=fields)
            record.created = created
        return record


def setup_logging(fmt: str = "json", level: str | int = "info", stream: TextIO | None = None) -> None:
    """Route the `kt` loggers to `stream` (stderr) as JSON lines or text, via a background thread."""
    global _listener
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}: use json or text")
    shutdown_logging()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    global _requests
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    _requests = records
    _listener = _Listener(records, handler, respect_handler_level=False)
    _listener.start()
    root = logging.getLogger("kt")
    root.handlers[:] = [_QueueHandler(records)]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    root.propagate = False
    for name in ("tornado.access", "tornado.application", "tornado.general"):
        logging.getLogger(name).handlers[:] = [root.handlers[0]]
        logging.getLogger(name).propagate = False
    logging.getLogger("tornado.access").setLevel(logging.WARNING)  # our request line replaces it


def shutdown_logging() -> None:
    """Flush and stop the listener thread."""
    global _listener, _requests
    _requests = None
    if _listener is not None:
        _listener.stop()
        _listener = None
        for name in ("kt", "tornado.access", "tornado.application", "tornado.general"):
            logging.getLogger(name).handlers[:] = []
            logging.getLogger(name).propagate = True


def log_request(event: dict[str, Any]) -> None:
    """The per-request info line, from a decision event (an observer for `runtime.observers`).

    Costs the event loop a dict and a queue put; the record is built and formatted on the
    listener thread.
    """
    if not request_log.isEnabledFor(logging.INFO):
        return
    fields = {k: event[k] for k in _REQUEST_FIELDS if k in event}
    if "id" in event:
        fields["event_id"] = event["id"]
    if isinstance(fields.get("latency_ms"), float):
        fields["latency_ms"] = round(fields["latency_ms"], 3)
    if _requests is not None:
        _requests.put((time.time(), fields))
    else:
        request_log.info("request", extra=fields)
