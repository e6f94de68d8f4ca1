"""The chain's contract: order, short-circuit, redaction composition, fail mode, streams."""

from __future__ import annotations

import re
from typing import ClassVar

import pytest

from policies.chain import Chain
from policies.kinds.base import Hit, Policy
from policies.model import Exchange, Phase, Verdict
from policies.state import PolicyState


class Term(Policy):
    """A test kind: matches a regex, with a configurable verdict."""

    kind = "term"
    phases: ClassVar = frozenset({Phase.INPUT, Phase.OUTPUT})

    def __init__(self, pattern: str, verdict: Verdict, name: str = "term") -> None:
        super().__init__({}, PolicyState())
        self.kind = name
        self.regex = re.compile(pattern)
        self.verdict = verdict

    def scan_text(self, text: str, phase: Phase) -> list[Hit]:
        return [Hit(m.start(), m.end(), self.verdict, f"{self.kind}_hit", "[X]") for m in self.regex.finditer(text)]


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
