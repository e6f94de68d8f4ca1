"""Output policies check the parts of an answer outside its choices' messages that reach the client.

A search model answers with top-level `citations` (URLs) and `search_results` (title, url, snippet:
Perplexity), in the JSON answer and on every stream chunk; an OpenAI-compatible server adds fields to
a choice (vLLM's `stop_reason`: the stop string that ended it). kt relays those as they are, so every
string in them is checked like the content: redacted in place, or the answer blocked. In a stream a
field repeated on every chunk is checked once per distinct value and redacted alike on each chunk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.proxy.relay import StreamRelay
from policies.model import Phase
from tests.fake_upstream import FakeUpstream
from tests.fake_wire import Reply, sse
from tests.gateway_harness import GatewayThread, TermKind, write_config
from tests.raw_upstream import RawUpstream, chat_answer, relayed
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
EMAIL = "alice.martin@example.com"
USER = [{"role": "user", "content": "who runs the staff page?"}]
ANSWER = "The staff page is run by the office [1]."
URL = f"https://example.org/staff/{EMAIL}"
SHOWN_URL = "https://example.org/staff/[REDACTED:EMAIL]"
TOP = {"citations": [URL, "https://example.org/about"],
       "search_results": [{"title": "Staff", "url": "https://example.org/staff", "date": "2025-01-02",
                           "snippet": f"Write to {EMAIL} for anything."}]}
SHOWN_TOP = {"citations": [SHOWN_URL, "https://example.org/about"],
             "search_results": [{**TOP["search_results"][0], "snippet": "Write to [REDACTED:EMAIL] for anything."}]}


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-upstream")


def gateway(tmp_path: Path, base_url: str, start_gateway: Any, chain: list[str] | None = None,
            policy: dict[str, Any] | None = None) -> GatewayThread:
    spec = {"id": "t", "provider": "openai", "model": "sonar", "base_url": base_url, "secret_key_ref": {"env": KEY_ENV}}
    chain = chain or ["pii-detector"]
    return start_gateway(write_config(tmp_path / "c.yaml", [spec], chain, policy or {"pii-detector": {}}))


def oai(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)


def stream_chunks(gw: GatewayThread) -> list[dict[str, Any]]:
    return [c.model_dump() for c in oai(gw).chat.completions.create(model="sonar", messages=USER, stream=True)]


def test_citations_and_search_results_are_redacted_in_json_and_on_every_stream_chunk(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    gw = gateway(tmp_path, fake_upstream.base_url, start_gateway)
    fake_upstream.queue_reply(Reply(text=ANSWER, top=TOP))
    got = oai(gw).chat.completions.create(model="sonar", messages=USER).model_dump()
    assert {k: got[k] for k in TOP} == SHOWN_TOP and got["choices"][0]["message"]["content"] == ANSWER
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "redact" and event["policy"] == "pii-detector"

    fake_upstream.queue_reply(Reply(text=ANSWER, top=TOP, chunks=5))
    chunks = stream_chunks(gw)
    assert len(chunks) >= 7 and all({k: c[k] for k in TOP} == SHOWN_TOP for c in chunks)
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"]) == ANSWER
    assert wait_for(lambda: len(gw.events) == 2 and gw.events)[-1]["verdict"] == "redact"


@pytest.mark.parametrize("field", ["citations", "search_results"])
def test_an_address_in_a_citation_blocks_the_answer_with_block(tmp_path: Path, fake_upstream: FakeUpstream,
                                                               start_gateway: Any, field: str) -> None:
    gw = gateway(tmp_path, fake_upstream.base_url, start_gateway, policy={"pii-detector": {"action": "block"}})
    top = {field: TOP[field]}
    fake_upstream.queue_reply(Reply(text=ANSWER, top=top))
    with pytest.raises(openai.ConflictError) as err:
        oai(gw).chat.completions.create(model="sonar", messages=USER)
    assert err.value.body["code"] == "output_blocked" and err.value.body["policy"] == "pii-detector"
    assert field in err.value.body["message"]  # where it was found

    fake_upstream.queue_reply(Reply(text=ANSWER, top=top))
    with pytest.raises(openai.ConflictError):  # its first chunk carries it: nothing was sent
        stream_chunks(gw)
    assert wait_for(lambda: len(gw.events) == 2 and gw.events)[-1]["verdict"] == "block"


def test_a_choice_stop_reason_is_checked_in_json_and_streams(tmp_path: Path, fake_upstream: FakeUpstream,
                                                             start_gateway: Any) -> None:
    """vLLM's `stop_reason` is the stop string that ended the choice (or a token id: a number, not read)."""
    gw = gateway(tmp_path, fake_upstream.base_url, start_gateway)
    extras = {"stop_reason": f"mail {EMAIL}", "native_finish_reason": "STOP"}
    fake_upstream.queue_reply(Reply(text=ANSWER, choice_extras=extras))
    choice = oai(gw).chat.completions.create(model="sonar", messages=USER).model_dump()["choices"][0]
    assert choice["stop_reason"] == "mail [REDACTED:EMAIL]" and choice["native_finish_reason"] == "STOP"

    fake_upstream.queue_reply(Reply(text=ANSWER, choice_extras=extras))
    last = [c for c in stream_chunks(gw) if c["choices"] and c["choices"][0]["finish_reason"]][-1]["choices"][0]
    assert last["stop_reason"] == "mail [REDACTED:EMAIL]" and last["native_finish_reason"] == "STOP"

    fake_upstream.queue_reply(Reply(text=ANSWER, choice_extras={"stop_reason": 128009}))  # a token id
    raw = oai(gw).chat.completions.with_raw_response.create(model="sonar", messages=USER)
    assert json.loads(raw.http_response.content)["choices"][0]["stop_reason"] == 128009



def test_a_stop_reason_that_blocks_a_stream_is_one_block_in_the_event(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                       start_gateway: Any) -> None:
    gw = gateway(tmp_path, fake_upstream.base_url, start_gateway, policy={"pii-detector": {"action": "block"}})
    fake_upstream.queue_reply(Reply(text=ANSWER, choice_extras={"stop_reason": f"mail {EMAIL}"}))
    with pytest.raises(openai.APIError):
        stream_chunks(gw)
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "block"
    assert [r["verdict"] for r in event["policies"] if r["policy"] == "pii-detector"].count("block") == 1


PLAIN = (b'{"id": "x-7",  "object": "chat.completion", "created": 1, "model": "sonar", "citations": '
         b'["https://example.org/about"], "search_results": [{"title": "About", "url": "https://example.org/about", '
         b'"snippet": "We are a small office."}], "choices": [{"index": 0, "message": {"role": "assistant", '
         b'"content": "Hello there"}, "logprobs": null, "finish_reason": "stop", "stop_reason": null}], '
         b'"usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}')
CHUNK = {"id": "x-8", "object": "chat.completion.chunk", "created": 1, "model": "sonar",
         "citations": ["https://example.org/about"],
         "choices": [{"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}]}
CHUNKS = [CHUNK, {**CHUNK, "choices": [{**CHUNK["choices"][0], "delta": {"content": " there"}}]},
          {**CHUNK, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop",
                                 "stop_reason": None}]}]
STREAM = b"".join(map(sse, CHUNKS)) + sse(b"[DONE]")


def test_an_answer_with_nothing_to_redact_is_relayed_byte_for_byte(tmp_path: Path, start_gateway: Any) -> None:
    with RawUpstream(chat_answer(PLAIN, STREAM)) as up:
        gw = gateway(tmp_path, up.base_url, start_gateway)
        assert relayed(oai(gw), model="sonar", messages=USER) == (PLAIN, STREAM)  # the upstream's bytes


def test_citations_repeated_on_50_chunks_are_scanned_once(tmp_path: Path, fake_upstream: FakeUpstream,
                                                          start_gateway: Any, test_kinds: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[str] = []
    scan = TermKind.scan_text

    def counting(self: TermKind, text: str, phase: Phase) -> Any:
        scanned.append(text)
        return scan(self, text, phase)

    monkeypatch.setattr(TermKind, "scan_text", counting)
    calls: list[int] = []
    guard = StreamRelay.guard_extras
    monkeypatch.setattr(StreamRelay, "guard_extras", lambda *a, **k: calls.append(1) or guard(*a, **k))
    gw = gateway(tmp_path, fake_upstream.base_url, start_gateway, ["test-term"],
                 {"test-term": {"pattern": "staff/alice", "verdict": "redact"}})
    text = " ".join(f"w{n}" for n in range(50))
    fake_upstream.queue_reply(Reply(text=text, top={"citations": [URL]}, chunks=50))
    chunks = stream_chunks(gw)
    assert len(calls) >= 50  # every chunk carried them
    assert len(chunks) >= 50 and all(c["citations"] == [URL.replace("staff/alice", "[REDACTED]")] for c in chunks)
    assert scanned.count(URL) == 1


def test_a_native_responses_stream_relays_its_annotation_events_checked(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                         start_gateway: Any) -> None:
    citation = {"type": "url_citation", "start_index": 0, "end_index": 4, "url": URL, "title": f"Staff of {EMAIL}"}
    shown = {**citation, "url": SHOWN_URL, "title": "Staff of [REDACTED:EMAIL]"}
    spec = {"id": "t", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
            "secret_key_ref": {"env": KEY_ENV}, "responses_api": "native"}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [spec], ["pii-detector"], {"pii-detector": {}}))
    fake_upstream.queue_reply(Reply(text=ANSWER, annotations=(citation,)))
    events = list(oai(gw).responses.create(model="gpt-4o-mini", input="who runs the staff page?", stream=True))
    added = [e.model_dump() for e in events if e.type == "response.output_text.annotation.added"]
    assert [(e["annotation"], e["annotation_index"], e["content_index"]) for e in added] == [(shown, 0, 0)]
    done = events[-1].model_dump()
    assert done["type"] == "response.completed"
    part = done["response"]["output"][0]["content"][0]
    assert part["text"] == ANSWER and part["annotations"] == [shown]
    assert EMAIL not in "".join(e.model_dump_json() for e in events)

    fake_upstream.queue_reply(Reply(text=ANSWER, annotations=(citation,)))  # pii-detector block: the stream ends
    gw2 = start_gateway(write_config(tmp_path / "b.yaml", [spec], ["pii-detector"],
                                     {"pii-detector": {"action": "block"}}))
    events = list(oai(gw2).responses.create(model="gpt-4o-mini", input="who runs the staff page?", stream=True))
    assert events[-1].type == "error" and events[-1].code == "output_blocked"
    assert not any(e.type == "response.output_text.annotation.added" for e in events)
