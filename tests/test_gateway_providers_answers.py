"""Issue 12 §3: nothing secret or unbounded comes back from an upstream.

A real gateway (in-process, loopback sockets) in front of `tests.raw_upstream`, a scripted
upstream that misbehaves byte by byte; the clients are the official openai and anthropic SDKs.
"""

from __future__ import annotations

import gzip
import logging
import sqlite3
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from gateway.providers.scrub import scrub
from gateway.providers.sse import SSEError, SSEParser
from tests.fake_wire import sse
from tests.gateway_harness import GatewayThread, write_config
from tests.raw_upstream import RawConn, RawRequest, RawUpstream
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
SECRET = "sk-proj-Zq8ThisIsTheGatewaysOwnKey4242"
MIB = 1024 * 1024
MESSAGES = [{"role": "user", "content": "hi"}]
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "a whole answer"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
ANTHROPIC_MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                     "content": [{"type": "text", "text": "a whole answer"}], "stop_reason": "end_turn",
                     "usage": {"input_tokens": 3, "output_tokens": 3}}


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


Respond = Callable[[RawRequest, RawConn], bool]


@pytest.fixture
def serve(tmp_path: Path, start_gateway: Any) -> Iterator[Callable[..., tuple[GatewayThread, RawUpstream]]]:
    """`serve(respond, provider="openai", chain=None, **settings)` -> (gateway, raw upstream) wired together."""
    ups: list[RawUpstream] = []

    def start(respond: Respond, provider: str = "openai", chain: list[str] | None = None,
              policy: dict[str, Any] | None = None, **settings: Any) -> tuple[GatewayThread, RawUpstream]:
        up = RawUpstream(respond).__enter__()
        ups.append(up)
        target = {"id": "t", "provider": provider, "model": "gpt-4o-mini", "base_url": up.base_url,
                  "secret_key_ref": {"env": KEY_ENV}}
        cfg = write_config(tmp_path / f"c{len(ups)}.yaml", [target], chain=chain, policy=policy,
                           fallback={"strategy": "ordered", "max_retries": 0, "retry_on": []})
        return start_gateway(cfg, **settings), up

    yield start
    for up in ups:
        up.__exit__()


def oai(gw: GatewayThread, timeout: float = 20) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0, timeout=timeout)


def ant(gw: GatewayThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)


def chat_error(gw: GatewayThread, stream: bool = False) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as err:
        answer = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=stream)
        if stream:
            list(answer)
    return err.value


def messages_error(gw: GatewayThread) -> anthropic.APIStatusError:
    with pytest.raises(anthropic.APIStatusError) as err:
        ant(gw).messages.create(model="gpt-4o-mini", max_tokens=10, messages=MESSAGES)
    return err.value


def sse_body(*events: Any) -> bytes:
    """A stream body of `events` (JSON objects, or bytes as they are)."""
    return b"".join(map(sse, events))


def stored_events(gw: GatewayThread) -> str:
    """Every stored decision event (the SQLite store) as text, once the store has them."""
    path = Path(gw.settings.state_dir) / "events.db"
    wait_for(lambda: path.exists() and sqlite3.connect(path).execute("select count(*) from events").fetchone()[0])
    return repr(sqlite3.connect(path).execute("select * from events").fetchall())


# --- secrets ----------------------------------------------------------------------------------------------


def test_scrub_removes_the_secret_and_anything_key_like() -> None:
    text = ("Incorrect API key provided: sk-proj-abc123DEF456ghi. Also Bearer eyJhbGciOiJIUzI1NiJ9.abc, "
            "x-api-key: sk-ant-api03-AAAA****BBBB, AKIAABCDEFGHIJKLMNOP, api_key=0123456789abcdef0123456789abcdef, "
            "and the plain secret hunter2hunter2")
    out = scrub(text, ["hunter2hunter2"])
    for leaked in ("abc123DEF456ghi", "eyJhbGciOi", "AAAA", "BBBB", "AKIAABCDEFGHIJKLMNOP", "0123456789abcdef",
                   "hunter2hunter2"):
        assert leaked not in out
    assert out.startswith("Incorrect API key provided: [REDACTED].")
    for plain in ("no tokens here, just text about keys and monkeys", "Bearer authentication required",
                  "Missing required key: response_format.json_schema.schema", "max_tokens: 4096 is too large"):
        assert scrub(plain) == plain  # an error's own words stay readable


@pytest.mark.parametrize("status", [400, 401, 500, 503])
def test_an_upstream_error_echoing_the_key_reaches_nobody(serve: Any, status: int,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    echo = {"error": {"message": f"Incorrect API key provided: {SECRET}. Authorization: Bearer {SECRET}",
                      "type": "invalid_request_error"}}
    gw, _ = serve(lambda req, conn: conn.send_json(echo, status=status))
    with caplog.at_level(logging.INFO):
        chat = chat_error(gw)
        messages = messages_error(gw)
    seen = [repr(chat.body), chat.message, repr(messages.body), messages.message, caplog.text, repr(gw.events),
            stored_events(gw)]
    assert all(SECRET not in text and SECRET[8:20] not in text for text in seen)
    assert chat.status_code in (400, 401, 502) and chat.body["type"] == "upstream_error"
    if status in (400, 500, 503):
        assert "Incorrect API key provided: [REDACTED]" in chat.body["message"]


@pytest.mark.parametrize(("route", "provider"), [("/v1/embeddings", "openai"), ("/v1/chat/completions", "openai"),
                                               ("/v1/messages", "openai"), ("/v1/chat/completions", "anthropic")])
def test_a_200_answer_that_is_an_error_echoing_the_key_is_a_scrubbed_502(serve: Any, route: str,
                                                                         provider: str) -> None:
    """Found by the fuzz campaign: a 200 /v1/embeddings error object was relayed byte for byte, key included."""
    echo = {"type": "error", "error": {"message": f"Incorrect API key provided: {SECRET}", "type": "auth"}}
    gw, _ = serve(lambda req, conn: conn.send_json(echo), provider=provider)
    if route == "/v1/embeddings":
        with pytest.raises(openai.APIStatusError) as err:
            oai(gw).embeddings.create(model="gpt-4o-mini", input="hi")
        error: Any = err.value
    else:
        error = chat_error(gw) if route == "/v1/chat/completions" else messages_error(gw)
    assert error.status_code == 502 and SECRET not in repr(error.body)
    assert "Incorrect API key provided: [REDACTED]" in repr(error.body)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_stream_error_event_echoing_the_key_is_scrubbed(serve: Any, provider: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def respond(req: RawRequest, conn: RawConn) -> bool:
        if provider == "openai":
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial "}}]}
            body = sse_body(chunk, {"error": {"message": f"upstream broke, key {SECRET}"}})
        else:
            start = {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 1}}}
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "partial "}}
            error = {"type": "error", "error": {"type": "api_error", "message": f"overloaded, x-api-key {SECRET}"}}
            body = b"".join(sse(e, e["type"]) for e in (start, delta, error))
        return conn.send_response(body, headers={"Content-Type": "text/event-stream"})

    gw, _ = serve(respond, provider=provider)
    with caplog.at_level(logging.INFO), pytest.raises(openai.APIError) as err:
        for _ in oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            pass
    assert SECRET not in str(err.value) and SECRET not in repr(err.value.body) and "[REDACTED]" in str(err.value)
    assert SECRET not in caplog.text and SECRET not in repr(gw.events) and SECRET not in stored_events(gw)


# --- junk is a 502 ----------------------------------------------------------------------------------------

DEEP_PART = b'{"type": "text", "text": "x", "nested": ' + b'{"a": ' * 500 + b"1" + b"}" * 500 + b"}"
JUNK: dict[str, tuple[bytes, int, dict[str, str]]] = {
    "usage not a count": (orjson.dumps({**COMPLETION, "usage": {"prompt_tokens": "x"}}), 200, {}),
    "deeply nested content part": (b'{"choices": [{"index": 0, "finish_reason": "stop", "message": '
                                   b'{"role": "assistant", "content": [' + DEEP_PART + b"]}}]}", 200, {}),
    "a choice that is text": (b'{"choices": ["x"]}', 200, {}),
    "a message that is text": (b'{"choices": [{"index": 0, "message": "x"}]}', 200, {}),
    "tool call arguments that are not text": (orjson.dumps({"choices": [{"index": 0, "message": {
        "role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": {"a": 1}}}]}}]}),
        200, {}),
    "no choices": (b'{"id": "x"}', 200, {}),
    "JSON that is not an object": (b"[1, 2]", 200, {}),
    "not JSON": (b"<html>bad gateway</html>", 200, {}),
    "status 999": (b'{"error": {"message": "what"}}', 999, {}),
    "a redirect": (b"", 302, {"Location": "http://elsewhere/"}),
    "Retry-After inf on a 503": (b'{"error": {"message": "busy"}}', 503, {"Retry-After": "inf"}),
}


@pytest.mark.parametrize("case", sorted(JUNK))
def test_junk_from_the_upstream_is_a_502_never_a_500(serve: Any, test_kinds: None, case: str) -> None:
    body, status, headers = JUNK[case]
    gw, _ = serve(lambda req, conn: conn.send_response(body, status, {"Content-Type": "application/json", **headers}),
                  chain=["test-term"], policy={"test-term": {"pattern": "forbidden"}})
    chat = chat_error(gw)
    assert chat.status_code == 502 and chat.body["type"] == "upstream_error", chat.body
    messages = messages_error(gw)
    assert messages.status_code == 502 and messages.body["error"]["type"] == "upstream_error", messages.body


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nxxxx",
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{}",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 4000,
])
def test_answers_that_are_not_usable_http_are_a_502(serve: Any, answer: bytes) -> None:
    def respond(req: RawRequest, conn: RawConn) -> bool:
        conn.send(answer)
        conn.wait_closed(timeout=30)
        return False

    gw, up = serve(respond)
    err = chat_error(gw)
    assert err.status_code == 502 and err.body["type"] == "upstream_error"
    assert wait_for(lambda: 1 in up.closed_at)


DEEP_FIELD = b'"extra": ' + b'{"a": ' * 300 + b"1" + b"}" * 300


def test_an_answer_that_cannot_be_reencoded_is_a_502(serve: Any, test_kinds: None) -> None:
    """Fields kt does not read but must re-encode (after a redaction, in a stream, for Anthropic clients)."""
    completion = (b'{"id": "c", "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", '
                  b'"content": "a forbidden word", "refusal": null}}], ' + DEEP_FIELD + b"}")
    gw, _ = serve(lambda req, conn: conn.send_json(completion), chain=["test-term"],
                  policy={"test-term": {"pattern": "forbidden", "verdict": "redact"}})
    assert chat_error(gw).status_code == 502
    chunk = (b'{"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}], '
             + DEEP_FIELD + b"}")
    gw, _ = serve(lambda req, conn: conn.send_response(sse_body(chunk, b"[DONE]"),
                                                       headers={"Content-Type": "text/event-stream"}))
    assert chat_error(gw, stream=True).status_code == 502
    image = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": [{"type": "image_url", "image_url": "not an object"}]}}]}
    gw, _ = serve(lambda req, conn: conn.send_json(image))
    assert messages_error(gw).status_code == 502


ANTHROPIC_JUNK = {
    "content that is text": {**ANTHROPIC_MESSAGE, "content": "x"},
    "a block that is text": {**ANTHROPIC_MESSAGE, "content": ["x"]},
    "tool input nested too deep": b'{"type": "message", "content": [{"type": "tool_use", "id": "t", "name": "f", '
                                  b'"input": ' + b'{"a": ' * 400 + b"1" + b"}" * 400 + b"}]}",
    "not an object": [ANTHROPIC_MESSAGE],
}


@pytest.mark.parametrize("case", sorted(ANTHROPIC_JUNK))
def test_junk_from_an_anthropic_upstream_is_a_502(serve: Any, case: str) -> None:
    gw, _ = serve(lambda req, conn: conn.send_json(ANTHROPIC_JUNK[case]), provider="anthropic")
    assert chat_error(gw).status_code == 502
    assert messages_error(gw).status_code == 502


def test_a_junk_anthropic_stream_event_is_a_502(serve: Any) -> None:
    events = b"event: message_start\ndata: [1]\n\n"
    gw, _ = serve(lambda req, conn: conn.send_response(events, headers={"Content-Type": "text/event-stream"}),
                  provider="anthropic")
    assert chat_error(gw, stream=True).status_code == 502


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-1"])
def test_an_unusable_retry_after_on_a_429_is_a_429_with_a_finite_retry_after(serve: Any, value: str) -> None:
    gw, _ = serve(lambda req, conn: conn.send_json({"error": {"message": "slow down"}}, status=429,
                                                   headers={"Retry-After": value}))
    err = chat_error(gw)
    assert err.status_code == 429 and err.body["code"] == "rate_limited"
    assert err.response.headers.get("retry-after", "1").isdigit()


@pytest.mark.parametrize("chunk", [
    {"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": {"prompt_tokens": "x"}},
    {"choices": [{"index": [0], "delta": {"content": "hi"}}]},
    {"choices": [{"index": 0, "delta": "hi"}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": [1], "function": {"name": "f"}}]}}]},
    [1, 2],
])
def test_a_junk_stream_chunk_is_a_502(serve: Any, chunk: Any) -> None:
    gw, _ = serve(lambda req, conn: conn.send_response(sse_body(chunk, b"[DONE]"),
                                                       headers={"Content-Type": "text/event-stream"}))
    err = chat_error(gw, stream=True)
    assert err.status_code == 502 and err.body["type"] == "upstream_error"
    with pytest.raises(anthropic.APIStatusError) as anthropic_err, \
            ant(gw).messages.stream(model="gpt-4o-mini", max_tokens=10, messages=MESSAGES) as stream:
        list(stream.text_stream)
    assert anthropic_err.value.status_code == 502


# --- limits -----------------------------------------------------------------------------------------------


def _peak_while(fn: Callable[[], Any]) -> int:
    """The peak of traced Python allocations (bytes) while `fn` runs (the gateway runs in this process)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _dropped(up: RawUpstream) -> bool:
    return wait_for(lambda: 1 in up.closed_at, timeout=10)


def test_response_headers_beyond_64_kib_are_a_502_and_the_connection_is_dropped(serve: Any) -> None:
    def respond(req: RawRequest, conn: RawConn) -> bool:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Junk: " + b"a" * (80 * 1024))
        conn.wait_closed()
        return False

    gw, up = serve(respond)
    err = chat_error(gw)
    assert err.status_code == 502 and "headers larger than 64 KiB" in err.body["message"]
    assert _dropped(up)


def test_a_body_beyond_max_response_size_is_a_502_and_memory_stays_flat(serve: Any) -> None:
    def respond(req: RawRequest, conn: RawConn) -> bool:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 209715200\r\n\r\n")
        piece = b" " * MIB
        for _ in range(200):
            if not conn.send(piece):
                break
        return False

    gw, up = serve(respond, max_response_size=2 * MIB)
    errors: list[openai.APIStatusError] = []
    peak = _peak_while(lambda: errors.append(chat_error(gw)))
    assert errors[0].status_code == 502 and "--max-response-size" in errors[0].body["message"]
    assert peak < 40 * MIB
    assert _dropped(up)


BOMB_SIZE = 400 * MIB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A gzip body of about 400 KB that inflates to 400 MB of spaces (built without holding 400 MB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b" " * MIB
    return b"".join([*(packer.compress(zeros) for _ in range(BOMB_SIZE // MIB)), packer.flush()])


@pytest.mark.parametrize("stream", [False, True])
def test_a_gzip_bomb_inflates_no_further_than_the_cap(serve: Any, bomb: bytes, stream: bool) -> None:
    assert len(bomb) < 500_000

    def respond(req: RawRequest, conn: RawConn) -> bool:
        kind = "text/event-stream" if stream else "application/json"
        conn.send_response(b"data: " + bomb if stream else bomb,
                           headers={"Content-Type": kind, "Content-Encoding": "gzip"})
        return True

    gw, up = serve(respond, max_response_size=8 * MIB)
    errors: list[openai.APIStatusError] = []
    peak = _peak_while(lambda: errors.append(chat_error(gw, stream=stream)))
    assert errors[0].status_code == 502 and errors[0].body["type"] == "upstream_error"
    assert peak < 64 * MIB
    assert _dropped(up)


def test_an_sse_line_without_end_is_cut_at_1_mib_quickly(serve: Any) -> None:
    def respond(req: RawRequest, conn: RawConn) -> bool:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"a" * 65536
        frame = b"%x\r\n%s\r\n" % (len(piece), piece)
        conn.send(b"8\r\ndata: {\"\r\n")
        for _ in range(50 * 16):  # 50 MB, never a newline
            if not conn.send(frame):
                break
        return False

    gw, up = serve(respond)
    started = time.monotonic()
    errors: list[openai.APIStatusError] = []
    peak = _peak_while(lambda: errors.append(chat_error(gw, stream=True)))
    assert errors[0].status_code == 502 and "SSE line is longer than 1048576 bytes" in errors[0].body["message"]
    assert time.monotonic() - started < 10 and peak < 32 * MIB
    assert _dropped(up)


def test_the_sse_parser_is_linear_and_bounded() -> None:
    parser = SSEParser(max_size=64 * MIB)
    piece = b"x" * 4096
    started = time.process_time()
    parser.feed(b"data: ")
    for _ in range(8 * 1024):  # 32 MB in 4 KiB pieces, no line end: quadratic re-scanning took minutes
        parser.feed(piece)
    assert parser.feed(b"\n\n") == [(None, "x" * (32 * MIB))]
    assert time.process_time() - started < 3
    bounded = SSEParser(max_size=1000)
    with pytest.raises(SSEError):
        bounded.feed(b"data: " + b"y" * 1001)
    with pytest.raises(SSEError):
        for _ in range(20):  # many short data lines of one event
            bounded.feed(b"data: " + b"z" * 90 + b"\n")
    split = SSEParser()  # a CRLF split across feeds is one line end
    assert split.feed(b"data: a\r") == [] and split.feed(b"\n\r\n") == [(None, "a")]


# --- stream requests answered with plain JSON ----------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "http/1.0 until close", "gzip"])
def test_a_stream_request_answered_with_json_is_relayed_as_a_stream(serve: Any, framing: str) -> None:
    def respond(req: RawRequest, conn: RawConn) -> bool:
        body = orjson.dumps(COMPLETION)
        if framing == "gzip":
            return conn.send_response(gzip.compress(body), headers={"Content-Type": "application/json",
                                                                    "Content-Encoding": "gzip"})
        if framing == "http/1.0 until close":
            conn.send_response(body, version="HTTP/1.0", length=False, headers={"Content-Type": "application/json"})
            return False
        return conn.send_json(body)

    gw, _ = serve(respond)
    chunks = list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a whole answer"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    with ant(gw).messages.stream(model="gpt-4o-mini", max_tokens=10, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "a whole answer"
        assert stream.get_final_message().stop_reason == "end_turn"


def test_an_anthropic_stream_request_answered_with_a_json_message_is_relayed(serve: Any) -> None:
    gw, _ = serve(lambda req, conn: conn.send_json(ANTHROPIC_MESSAGE), provider="anthropic")
    chunks = list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a whole answer"


def test_a_stream_request_answered_with_a_json_error_or_nothing_is_an_error(serve: Any) -> None:
    gw, _ = serve(lambda req, conn: conn.send_json({"error": {"message": f"no such model; key {SECRET}"}}))
    err = chat_error(gw, stream=True)
    assert err.status_code == 502 and "no such model" in err.body["message"] and SECRET not in err.body["message"]
    gw, _ = serve(lambda req, conn: conn.send_response(b"", headers={"Content-Type": "text/event-stream"}))
    err = chat_error(gw, stream=True)
    assert err.status_code == 502 and "without sending any event" in err.body["message"]


# --- the flag, end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
def test_max_response_size_of_kt_gateway_run(tmp_path: Path, how: str, gateway_process: Any) -> None:
    big = orjson.dumps({**COMPLETION, "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": "x" * 8000}}]})
    with RawUpstream(lambda req, conn: conn.send_json(big)) as up:
        target = {"id": "t", "provider": "openai", "model": "demo-model", "base_url": up.base_url,
                  "secret_key_ref": {"env": KEY_ENV}}
        cfg = write_config(tmp_path / "c.yaml", [target], fallback={"strategy": "ordered", "max_retries": 0,
                                                                   "retry_on": []})
        args = ("--max-response-size", "4KiB") if how == "flag" else ()
        env = {KEY_ENV: SECRET, **({"KEEPTRUSTS_GATEWAY_MAX_RESPONSE_SIZE": "4KiB"} if how == "env" else {})}
        gw = gateway_process(cfg, *args, env=env)
        try:
            status, _, body = gw.chat("hi")
            assert status == 502 and b"--max-response-size" in body and b"4096 bytes" in body
        finally:
            assert gw.stop() == 0
        assert "Traceback" not in gw.logs() and SECRET not in gw.logs()
