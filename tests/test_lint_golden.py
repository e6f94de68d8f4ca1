"""The golden-case runner: input then output chain, isolation between cases, malformed cases."""

from __future__ import annotations

import json
from pathlib import Path

from policies import load_config_bytes
from policies.golden import run_golden
from tests.policy_samples import GOLDEN_CONFIG

CALL = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}


def write_case(d: Path, name: str, inp: dict, expected: dict) -> None:
    d.mkdir(exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps({"name": name, "input": inp, "expected": expected}))


def test_output_phase_and_isolation(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "find it"}]
    headers = {"X-Session-ID": "s1"}
    openai_body = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [CALL]}}]}
    # Each case may use the session's single action: state does not leak from one case to the next.
    write_case(tmp_path, "a", {"messages": msgs, "headers": headers, "upstream_response": openai_body},
               {"verdict": "allow", "targets": ["zdr"]})
    write_case(tmp_path, "b", {"messages": msgs, "headers": headers, "upstream_response": {"tool_calls": [CALL]}},
               {"verdict": "allow"})
    bad_call = {**CALL, "function": {"name": "delete_all", "arguments": "{}"}}
    write_case(tmp_path, "c", {"messages": msgs, "upstream_response": {"tool_calls": [bad_call]}},
               {"verdict": "block", "reason_code": "tool_not_allowed"})
    write_case(tmp_path, "d", {"messages": msgs}, {"verdict": "allow", "targets": ["std"]})
    results = run_golden(load_config_bytes(GOLDEN_CONFIG), tmp_path)
    assert [(r.name, r.passed) for r in results] == [("a", True), ("b", True), ("c", True), ("d", False)]
    assert results[0].targets == ("zdr",)
    assert [p.phase.value for p in results[2].policy_results][-1] == "output"


def test_malformed_cases_are_failed_results(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps([
        {"name": "ok", "input": {"messages": []}, "expected": {"verdict": "allow"}},
        {"name": "no-expected", "input": {"messages": []}},
        "not an object",
    ]))
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    results = run_golden(load_config_bytes(GOLDEN_CONFIG), tmp_path)
    by_name = {r.name: r for r in results}
    assert by_name["ok"].passed
    assert "E004" in by_name["no-expected"].error and by_name["no-expected"].verdict == "error"
    assert "JSON object" in by_name["list[2]"].error
    assert "cannot read golden case file" in by_name["latin1"].error
    assert not any(r.passed for r in results if r.name != "ok")


def test_output_refusal_and_tool_call_arguments_are_scanned(tmp_path: Path) -> None:
    config = load_config_bytes(b"""\
pack: {name: g, version: 1.0.0, enabled: true}
providers: {targets: [{id: t, provider: mock, model: m}]}
policies: {chain: [dlp-filter]}
policy: {dlp-filter: {blocked_terms: [project-bluebird], action: block}}
""")
    msgs = [{"role": "user", "content": "hi"}]
    call = {**CALL, "function": {"name": "search", "arguments": json.dumps({"q": "project-bluebird"})}}
    write_case(tmp_path, "a", {"messages": msgs, "upstream_response": {"refusal": "no: project-bluebird"}},
               {"verdict": "block"})
    write_case(tmp_path, "b", {"messages": msgs, "upstream_response": {"tool_calls": [call]}}, {"verdict": "block"})
    write_case(tmp_path, "c", {"messages": msgs, "tools": [{"type": "function", "function": {
        "name": "search", "description": "about project-bluebird"}}]}, {"verdict": "block"})
    write_case(tmp_path, "d", {"messages": msgs, "upstream_response": {"choices": [{"message": {
        "role": "assistant", "content": "ok", "reasoning_content": "they mean project-bluebird"}}]}},
        {"verdict": "block"})
    write_case(tmp_path, "e", {"messages": msgs, "upstream_response": {"content": "ok", "model": "project-bluebird",
                                                                       "function_call": call["function"]}},
               {"verdict": "block"})
    write_case(tmp_path, "f", {"messages": msgs, "upstream_response": {"content": "ok", "model": "project-bluebird"}},
               {"verdict": "allow"})
    write_case(tmp_path, "g", {"messages": msgs, "upstream_response": {
        "citations": ["https://example.org/project-bluebird"], "choices": [{"message": {"content": "ok"}}]}},
        {"verdict": "block"})
    write_case(tmp_path, "h", {"messages": msgs, "upstream_response": {"choices": [{
        "message": {"content": "ok"}, "stop_reason": "project-bluebird"}]}}, {"verdict": "block"})
    write_case(tmp_path, "i", {"messages": msgs, "upstream_response": {"model": "project-bluebird", "choices": [{
        "message": {"content": "ok"}, "finish_reason": "stop"}]}}, {"verdict": "allow"})
    assert [(r.name, r.passed) for r in run_golden(config, tmp_path)] == [
        ("a", True), ("b", True), ("c", True), ("d", True), ("e", True), ("f", True), ("g", True), ("h", True),
        ("i", True)]
