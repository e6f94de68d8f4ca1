"""`--otlp-endpoint`: spans per request, exported over OTLP/HTTP to a local receiver that decodes
the protobuf (opentelemetry-proto); W3C traceparent in from the client and out to the upstream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.control.tracing import parse_traceparent
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import write_config
from tests.waiting import wait_for

pytest.importorskip("opentelemetry.sdk", reason="the kt-gateway[otel] extra is not installed")
from bench.otlp_receiver import Receiver

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def traced_gateway(tmp_path: Path, fake: FakeUpstream, start_gateway: Any, receiver: Receiver, *ids: str,
                   **extra: Any) -> openai.OpenAI:
    """A gateway traced to `receiver`, one openai target per id on `fake` and dlp-filter blocking
    project-bluebird; an SDK client of it. `KEY_ENV` must be set (monkeypatch)."""
    targets = [{"id": i, "provider": "openai", "model": "gpt-4o-mini", "base_url": fake.base_url,
                "secret_key_ref": {"env": KEY_ENV}} for i in ids]
    config = write_config(tmp_path / "c.yaml", targets, chain=["dlp-filter"],
                          policy={"dlp-filter": {"blocked_terms": ["project-bluebird"], "action": "block"}}, **extra)
    gw = start_gateway(config, otlp_endpoint=receiver.url)
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)


def test_a_fallback_is_one_request_span_with_two_attempts_under_the_clients_trace(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-up")
    client = traced_gateway(tmp_path, fake_upstream, start_gateway, receiver, "primary", "backup",
                            fallback={"strategy": "ordered", "max_retries": 1, "retry_on": ["5xx"]})
    fake_upstream.add_fault("status", status=503)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert answer.choices[0].message.content

    spans = wait_for(lambda: len(receiver.spans) >= 5 and receiver.spans, timeout=20,
                     message="no trace reached the receiver")
    assert receiver.content_types[0] == "application/x-protobuf"
    by_name = {s["name"]: s for s in spans}
    root = by_name["chat gpt-4o-mini"]
    assert root["trace_id"] == CLIENT_TRACE and root["parent"] == CLIENT_SPAN  # the client's traceparent honoured
    assert root["kind"] == 2  # SERVER
    assert root["attrs"]["gen_ai.request.model"] == "gpt-4o-mini"
    assert root["attrs"]["gen_ai.provider.name"] == root["attrs"]["gen_ai.system"] == "openai"
    assert root["attrs"]["gen_ai.usage.input_tokens"] > 0 and root["attrs"]["gen_ai.usage.output_tokens"] > 0
    assert root["attrs"]["kt.attempts"] == 2
    children = [s for s in spans if s["parent"] == root["span_id"]]
    assert all(s["trace_id"] == CLIENT_TRACE for s in children)
    assert [s["name"] for s in sorted(children, key=lambda s: s["start"])] == [
        "input_chain", "upstream primary", "upstream backup", "output_chain"]
    failed, served = by_name["upstream primary"], by_name["upstream backup"]
    assert failed["status"] == 2 and failed["attrs"]["error.type"] == "5xx"  # ERROR: the fallback is visible
    assert served["status"] != 2 and served["kind"] == 3  # CLIENT
    assert root["start"] <= failed["start"] <= failed["end"] <= served["start"] <= served["end"] <= root["end"]
    # each attempt told the upstream its own span as the parent
    sent = [parse_traceparent(r.header("traceparent")) for r in fake_upstream.requests_to("/v1/chat/completions")]
    assert [(f"{t:032x}", f"{p:016x}") for t, p, _ in sent] == [
        (CLIENT_TRACE, failed["span_id"]), (CLIENT_TRACE, served["span_id"])]


def test_without_a_client_traceparent_the_request_starts_a_trace(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-up")
    targets = [{"id": "only", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
                "secret_key_ref": {"env": KEY_ENV}}]
    gw = start_gateway(write_config(tmp_path / "c.yaml", targets), otlp_endpoint=receiver.url)
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers={"traceparent": "00-zz-nonsense-01"})
    spans = wait_for(lambda: len(receiver.spans) >= 2 and receiver.spans, timeout=20)
    root = next(s for s in spans if s["name"] == "chat gpt-4o-mini")
    assert root["parent"] == "" and root["trace_id"] != "0" * 32
    upstream = next(s for s in spans if s["name"] == "upstream only")
    trace, parent, _ = parse_traceparent(fake_upstream.requests[-1].header("traceparent"))
    assert (f"{trace:032x}", f"{parent:016x}") == (root["trace_id"], upstream["span_id"])


def test_off_by_default_no_traceparent_upstream_and_no_opentelemetry_import(
        tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway started without --otlp-endpoint never imports opentelemetry and adds no header."""
    monkeypatch.setenv(KEY_ENV, "sk-up")
    targets = [{"id": "only", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
                "secret_key_ref": {"env": KEY_ENV}}]
    config = write_config(tmp_path / "c.yaml", targets)
    script = f"""
import sys, openai
from tests.gateway_harness import GatewayThread
gw = GatewayThread({str(config)!r}, state_dir={str(tmp_path / "state")!r}).start()
try:
    openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}],
        extra_headers={{"traceparent": "00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}})
finally:
    gw.stop()
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert fake_upstream.requests[-1].header("traceparent") is None  # not forwarded: kt is no tracer then


def test_traceparent_parsing() -> None:
    assert parse_traceparent(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01") == (int(CLIENT_TRACE, 16), int(CLIENT_SPAN, 16),
                                                                         True)
    for bad in (None, "", "00-" + "0" * 32 + f"-{CLIENT_SPAN}-01", f"00-{CLIENT_TRACE}-" + "0" * 16 + "-01",
                "zz", f"00-{CLIENT_TRACE[:-1]}-{CLIENT_SPAN}-01"):
        assert parse_traceparent(bad) is None


def test_the_flag_and_its_env_var_reach_the_gateway(tmp_path: Path, receiver: Receiver, gateway_process: Any) -> None:
    """`kt gateway run` with OTEL_EXPORTER_OTLP_ENDPOINT exports a span of a mock request."""
    config = tmp_path / "c.yaml"
    config.write_text("pack: {name: t, version: 1.0.0, enabled: true}\nproviders:\n  targets:\n"
                      "    - {id: demo, provider: mock, model: demo-model}\npolicies:\n  chain: []\npolicy: {}\n")
    gw = gateway_process(config, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
    assert gw.chat("hello")[0] == 200
    root = wait_for(lambda: next((s for s in receiver.spans if s["name"] == "chat demo-model"), None),
                    timeout=20, message="no request span from kt gateway run")
    assert root["attrs"]["gen_ai.provider.name"] == "mock"


def test_without_the_extra_the_flag_is_refused_with_what_to_install(tmp_path: Path) -> None:
    script = """
import sys
class NoOtel:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("opentelemetry"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoOtel())
sys.argv = ["kt", "gateway", "run", "--config", sys.argv[1], "--otlp-endpoint", "http://127.0.0.1:9"]
from kt.cli import main
main()
"""
    config = tmp_path / "c.yaml"
    config.write_text("pack: {name: t, version: 1.0.0, enabled: true}\nproviders:\n  targets:\n"
                      "    - {id: demo, provider: mock, model: demo-model}\npolicies:\n  chain: []\npolicy: {}\n")
    out = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 1 and "pip install 'kt-gateway[otel]'" in out.stderr


def test_a_streamed_request_and_a_blocked_one_are_traced(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-up")
    client = traced_gateway(tmp_path, fake_upstream, start_gateway, receiver, "only")
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.APIStatusError) as blocked:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "about project-bluebird"}])
    assert blocked.value.status_code == 409
    roots = wait_for(lambda: len([s for s in receiver.spans if s["name"] == "chat gpt-4o-mini"]) >= 2
                     and [s for s in receiver.spans if s["name"] == "chat gpt-4o-mini"], timeout=20)
    streamed, refused = sorted(roots, key=lambda s: s["start"])
    names = {s["name"] for s in receiver.spans if s["parent"] == streamed["span_id"]}
    assert names == {"input_chain", "upstream only", "output_chain"}
    assert streamed["attrs"]["gen_ai.usage.output_tokens"] > 0
    assert {s["name"] for s in receiver.spans if s["parent"] == refused["span_id"]} == {"input_chain"}
    assert refused["attrs"]["error.type"] == "input_blocked" and refused["status"] != 2
    chain = next(s for s in receiver.spans if s["parent"] == refused["span_id"])
    assert chain["attrs"]["kt.verdict"] == "block" and chain["attrs"]["kt.policy"] == "dlp-filter"


def test_a_stream_has_its_output_chain_span_also_when_blocked_midway(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The output chain of a stream runs while it is relayed: its span lies within the attempt's and ends
    with the last check (or with the block that cut the stream)."""
    monkeypatch.setenv(KEY_ENV, "sk-up")
    client = traced_gateway(tmp_path, fake_upstream, start_gateway, receiver, "only")
    fake_upstream.queue_reply("all clear, nothing to see here", chunks=4)
    assert "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
    fake_upstream.queue_reply("first some words, then project-bluebird, then more", chunks=8)
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                    messages=[{"role": "user", "content": "hi"}]):
            got += [c.delta.content or "" for c in chunk.choices]
    assert got and "project-bluebird" not in "".join(got)  # blocked after the first bytes

    def roots() -> list[dict[str, Any]] | None:
        found = [s for s in receiver.spans if s["name"] == "chat gpt-4o-mini"]
        return found if len(found) >= 2 else None

    passed, blocked = sorted(wait_for(roots, timeout=20, message="no traces of the two streams"),
                             key=lambda s: s["start"])
    assert blocked["attrs"]["error.type"] == "output_blocked"
    for root in (passed, blocked):
        children = {s["name"]: s for s in receiver.spans if s["parent"] == root["span_id"]}
        assert set(children) == {"input_chain", "upstream only", "output_chain"}
        chain, attempt = children["output_chain"], children["upstream only"]
        assert chain["kind"] == 1  # INTERNAL
        assert root["start"] <= attempt["start"] <= chain["start"] <= chain["end"] <= attempt["end"] <= root["end"]
    with pytest.raises(openai.BadRequestError):  # refused before any child span: the request span alone
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    alone = wait_for(lambda: next((s for s in receiver.spans if s["attrs"].get("error.type") == "model_not_found"),
                                  None), timeout=20, message="no span of the refused request")
    assert alone["start"] <= alone["end"] and not [s for s in receiver.spans if s["parent"] == alone["span_id"]]
