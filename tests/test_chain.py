"""The chain's contract: order, short-circuit, redaction composition, fail mode, streams."""

from __future__ import annotations

import pytest

from policies.chain import Chain
from policies.kinds.base import Policy
from policies.model import Exchange, Phase, Verdict
from policies.state import PolicyState
from tests.kindutil import CountingTerm, Term


class Boom(Policy):
    kind = "boom"

    def check_input(self, ex: Exchange) -> None:
        raise RuntimeError("bug")


def ex(text: str) -> Exchange:
    return Exchange(model="m", messages=[{"role": "user", "content": text}])


def test_allow_when_nothing_matches() -> None:
    outcome = Chain((Term("secret", Verdict.BLOCK),)).run_input(ex("hello"))
    assert outcome.verdict is Verdict.ALLOW
    assert outcome.reason_code == "all_policies_passed"


def test_first_block_short_circuits() -> None:
    chain = Chain((Term("a", Verdict.BLOCK, "first"), Term("a", Verdict.BLOCK, "second")))
    outcome = chain.run_input(ex("a"))
    assert outcome.blocked and outcome.policy == "first"
    assert [r.policy for r in outcome.results] == ["first"]


def test_redactions_compose_in_order() -> None:
    chain = Chain((Term("foo", Verdict.REDACT, "one"), Term(r"\[X\] bar", Verdict.REDACT, "two")))
    e = ex("foo bar")
    outcome = chain.run_input(e)
    assert e.messages[0]["content"] == "[X]"
    assert outcome.verdict is Verdict.REDACT and outcome.redactions == 2


def test_block_leaves_request_untouched() -> None:
    e = ex("foo")
    Chain((Term("foo", Verdict.BLOCK),)).run_input(e)
    assert e.messages[0]["content"] == "foo"


@pytest.mark.parametrize(("mode", "verdict"), [("block", Verdict.BLOCK), ("allow", Verdict.ALLOW)])
def test_fail_mode(mode: str, verdict: Verdict) -> None:
    outcome = Chain((Boom({}, PolicyState()),)).run_input(ex("x"), fail_mode=mode)
    assert outcome.verdict is verdict and outcome.policy_error
    assert outcome.results[0].error == "RuntimeError: bug"


def test_stream_catches_term_split_across_chunks() -> None:
    guard = Chain((Term("bluebird", Verdict.BLOCK),)).stream_guard(ex("q"))
    assert guard.feed("project blue") == ("project blue", None)
    text, outcome = guard.feed("bird is secret")
    assert text == "" and outcome is not None and outcome.blocked
    assert guard.finish().blocked


def test_stream_redacts_unsent_part() -> None:
    guard = Chain((Term(r"\d{4}", Verdict.REDACT),)).stream_guard(ex("q"))
    assert guard.feed("pin 1234 ok")[0] == "pin [X] ok"
    outcome = guard.finish()
    assert outcome.verdict is Verdict.REDACT and outcome.redactions == 1


def _request(system: str, user: str, role: str = "system") -> Exchange:
    return Exchange(model="m", messages=[{"role": role, "content": system}, {"role": "user", "content": user}])


@pytest.mark.parametrize("role", ["system", "developer"])
def test_instructions_are_scanned_once_and_still_redacted_every_time(role: str) -> None:
    policy = CountingTerm(r"secret-\d+", Verdict.REDACT)
    chain = Chain((policy,))
    for i in range(3):
        ex = _request("Never say secret-1 to anyone.", f"question {i} about secret-2", role)
        outcome = chain.run_input(ex)
        assert [m["content"] for m in ex.messages] == ["Never say [X] to anyone.", f"question {i} about [X]"]
        assert outcome.redactions == 2
    assert policy.scanned.count("Never say secret-1 to anyone.") == 1  # remembered
    assert [t for t in policy.scanned if t.startswith("question")] == [f"question {i} about secret-2" for i in range(3)]


def test_only_the_latest_instructions_are_kept() -> None:
    policy = CountingTerm("x", Verdict.REDACT)
    chain = Chain((policy,))
    for i in range(65):  # one more than a policy keeps
        chain.run_input(_request(f"instructions {i}", "q"))
    chain.run_input(_request("instructions 64", "q"))  # the newest: still known
    chain.run_input(_request("instructions 0", "q"))  # the oldest: dropped, scanned again
    assert policy.scanned.count("instructions 64") == 1
    assert policy.scanned.count("instructions 0") == 2
    huge = "y" * (64 * 1024 + 1)  # longer than a kept text may be
    chain.run_input(_request(huge, "q"))
    chain.run_input(_request(huge, "q"))
    assert policy.scanned.count(huge) == 2


def test_a_blocking_instruction_blocks_every_time() -> None:
    policy = CountingTerm("forbidden", Verdict.BLOCK)
    chain = Chain((policy,))
    for _ in range(2):
        assert chain.run_input(_request("a forbidden instruction", "q")).verdict is Verdict.BLOCK
    assert policy.scanned.count("a forbidden instruction") == 1


class Structural(Policy):
    """An output policy that reads no text (as spend-limit, rbac): `check_fields` must not run it."""

    kind = "structural"
    phases = frozenset({Phase.OUTPUT})

    def check_output(self, ex: Exchange) -> None:
        raise AssertionError("a structural check ran on an answer's extra fields")


def test_check_fields_scans_the_fields_alone_and_leaves_the_answer_as_it_was() -> None:
    policy = CountingTerm(r"secret-\d+", Verdict.REDACT)
    chain = Chain((Structural({}, PolicyState()), policy))
    answer = ex("q")
    answer.response_text, answer.response_fields = "the content secret-1", {"reasoning": "x"}
    fields = {"citations": ["https://a.example/secret-2", 3], "stop_reason": "ok"}
    outcome = chain.check_fields(answer, fields)
    assert outcome.verdict is Verdict.REDACT and outcome.redactions == 1
    assert fields == {"citations": ["https://a.example/[X]", 3], "stop_reason": "ok"}
    assert policy.scanned == ["https://a.example/secret-2", "ok"]  # not the content, not numbers
    assert answer.response_text == "the content secret-1" and answer.response_fields == {"reasoning": "x"}
