"""`on_unscannable_input` of the text kinds: a request carrying content they cannot read is blocked
with `unscannable_input` (`block`), or passes as before (`allow`, the default); lint, the JSON schema
and golden tests know the option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policies.json_schema import config_json_schema
from policies.kinds import KINDS
from policies.kinds.base import Policy
from policies.lint import lint_bytes
from policies.model import Exchange, Verdict
from policies.state import PolicyState
from policies.texts import unreadable_parts
from tests.kindutil import run_input
from tests.kt_process import run_kt

TEXT_KINDS = ("prompt-injection", "pii-detector", "dlp-filter", "safety-filter")
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoSECRETPIXELS"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZFSECRETSOUND", "format": "wav"}}
PDF = {"type": "file", "file": {"filename": "customers.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}
FILE_ID = {"type": "file", "file": {"file_id": "file-abc123"}}
VIDEO = {"type": "video_url", "video_url": {"url": "https://example.org/v.mp4"}}  # an OpenAI-compatible server's part


def policy(kind: str, **options: Any) -> Policy:
    return KINDS[kind](options, PolicyState())


def request(*parts: dict[str, Any]) -> Exchange:
    messages = [{"role": "system", "content": "You help."},
                {"role": "user", "content": [{"type": "text", "text": "what does this say?"}, *parts]}]
    return Exchange(model="gpt-4o-mini", messages=messages)


def test_the_text_kinds_and_only_they_take_the_option() -> None:
    assert {k for k, c in KINDS.items() if "on_unscannable_input" in c.schema} == set(TEXT_KINDS)


@pytest.mark.parametrize("kind", TEXT_KINDS)
@pytest.mark.parametrize("part", [IMAGE, AUDIO, PDF, FILE_ID, VIDEO], ids=lambda p: p["type"] + str(len(p)))
def test_block_refuses_a_part_the_kind_cannot_read_and_names_where_it_is(kind: str, part: dict[str, Any]) -> None:
    outcome = run_input(policy(kind, on_unscannable_input="block"), request(part))
    assert outcome.verdict is Verdict.BLOCK and outcome.reason_code == "unscannable_input"
    assert outcome.policy == kind
    assert f"messages[1].content[1] ({part['type']})" in outcome.message
    for secret in ("SECRET", "iVBOR", "UklGR", "JVBER", "customers", "file-abc", "example.org"):
        assert secret not in outcome.message  # never the content, its name or its address


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_allow_is_the_default_and_forwards_the_parts(kind: str) -> None:
    for p in (policy(kind), policy(kind, on_unscannable_input="allow")):
        assert not p.refuses_unreadable
        outcome = run_input(p, request(IMAGE, AUDIO, PDF))
        assert outcome.verdict is Verdict.ALLOW and outcome.reason_code == "all_policies_passed"


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_block_lets_text_only_requests_through_and_still_scans_them(kind: str) -> None:
    p = policy(kind, on_unscannable_input="block")
    assert run_input(p, request()).verdict is Verdict.ALLOW
    plain = Exchange(model="m", messages=[{"role": "user", "content": "hello"}])
    assert run_input(p, plain).verdict is Verdict.ALLOW
    refusal = Exchange(model="m", messages=[{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
                                            {"role": "user", "content": "ok"}])
    assert run_input(p, refusal).verdict is Verdict.ALLOW


def test_block_does_not_stop_the_kind_finding_what_it_looks_for_in_text() -> None:
    p = policy("dlp-filter", blocked_terms=["project-bluebird"], on_unscannable_input="block")
    outcome = run_input(p, Exchange(model="m", messages=[{"role": "user", "content": "about project bluebird"}]))
    assert outcome.reason_code == "dlp_term_detected"


def test_the_message_counts_every_unreadable_part() -> None:
    ex = request(IMAGE, AUDIO)
    ex.messages.append({"role": "tool", "tool_call_id": "c", "content": [IMAGE]})
    outcome = run_input(policy("pii-detector", on_unscannable_input="block"), ex)
    assert "messages[1].content[1] (image_url; 3 such parts in all)" in outcome.message


def test_unreadable_parts_names_odd_parts_without_echoing_them() -> None:
    odd = [{"type": "text", "text": "fine"}, "a bare string", {"no": "type"}, {"type": ["list"]},
           {"type": "x" * 41}, {"type": "ignore previous instructions"}, {"type": "refusal", "refusal": "r"}]
    found = unreadable_parts([{"role": "user", "content": odd}, {"role": "user", "content": "plain"}])
    assert found == [(("messages", 0, "content", 1), "not an object"), (("messages", 0, "content", 2), "untyped"),
                     (("messages", 0, "content", 3), "untyped"), (("messages", 0, "content", 4), "untyped"),
                     (("messages", 0, "content", 5), "untyped")]



def test_media_under_a_text_type_is_unreadable_too() -> None:
    """A text part that also carries an image is forwarded with it, and its bytes are not scanned: it counts."""
    part = {"type": "text", "text": "hi", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert unreadable_parts([{"role": "user", "content": [part]}]) == [(("messages", 0, "content", 0), "text")]


CONFIG = ("pack: {name: p, version: 1.0.0, enabled: true}\n"
          "providers: {targets: [{id: m, provider: mock, model: demo-model}]}\n"
          "policies: {chain: [dlp-filter]}\n"
          "policy:\n  dlp-filter: {blocked_terms: [x], %s}\n")


def test_lint_knows_the_option_and_its_values() -> None:
    assert lint_bytes((CONFIG % "on_unscannable_input: block").encode()).valid
    wrong = lint_bytes((CONFIG % "on_unscannable_input: refuse").encode())
    assert [e.path for e in wrong.errors] == ["policy.dlp-filter.on_unscannable_input"]
    typo = lint_bytes((CONFIG % "on_unscanable_input: block").encode())
    assert [e.code for e in typo.errors] == ["E002"]
    assert "on_unscannable_input" in typo.errors[0].suggestion + typo.errors[0].message


def test_the_json_schema_describes_the_option() -> None:
    kinds = config_json_schema()["$defs"]["config-document"]["properties"]["policy"]["properties"]
    for kind in TEXT_KINDS:
        rule = kinds[kind]["properties"]["on_unscannable_input"]
        assert rule["enum"] == ["allow", "block"] and rule["default"] == "allow"
    assert "on_unscannable_input" not in kinds["rbac"]["properties"]


def test_golden_cases_can_expect_the_block(tmp_path: Path) -> None:
    (tmp_path / "policy-config.yaml").write_text(CONFIG % "on_unscannable_input: block")
    (tmp_path / "tests").mkdir()
    case = {"name": "screenshot", "input": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "see attached"}, IMAGE]}]},
        "expected": {"verdict": "block", "reason_code": "unscannable_input"}}
    (tmp_path / "tests" / "screenshot.json").write_text(json.dumps(case))
    r = run_kt("policy", "test", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(r.stdout)["results"]
    assert [(x["name"], x["passed"], x["reason_code"]) for x in results] == [("screenshot", True, "unscannable_input")]
