"""Structured logs: one JSON line per request, no prompt text."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.control.logs import log_request, setup_logging, shutdown_logging


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_request_line_has_the_fields_and_never_the_prompt(fmt):
    stream = io.StringIO()
    setup_logging(fmt, "info", stream)
    try:
        log_request({"id": "evt_1", "request_id": "req_1", "route": "/v1/chat/completions", "status": 409,
                     "verdict": "block", "reason_code": "dlp_blocked_term", "latency_ms": 1.23456,
                     "config_revision": "abc", "prompt": "my secret prompt", "prompt_sha256": "ff"})
        logging.getLogger("kt.gateway.reload").error("config reload refused", extra={"error": "E001"})
    finally:
        shutdown_logging()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "my secret prompt" not in stream.getvalue()
    if fmt == "json":
        line = json.loads(lines[0])
        assert line["msg"] == "request" and line["level"] == "info"
        assert {k: line[k] for k in ("request_id", "status", "verdict", "reason_code", "config_revision")} == {
            "request_id": "req_1", "status": 409, "verdict": "block", "reason_code": "dlp_blocked_term",
            "config_revision": "abc"}
        assert line["latency_ms"] == 1.235 and line["event_id"] == "evt_1"
        assert json.loads(lines[1])["error"] == "E001"
    else:
        assert "request_id=req_1" in lines[0] and "ERROR" in lines[1]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="json or text"):
        setup_logging("xml")
