"""Small helpers shared by the tests of the policy kinds."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from policies.chain import Chain
from policies.kinds.base import Hit, Policy, apply_hits
from policies.model import ChainOutcome, Exchange, Phase, Verdict
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


class CountingTerm(Term):
    """`Term` that counts the texts it scanned."""

    def __init__(self, pattern: str, verdict: Verdict) -> None:
        super().__init__(pattern, verdict)
        self.scanned: list[str] = []

    def scan_text(self, text: str, phase: Phase) -> list[Hit]:
        self.scanned.append(text)
        return super().scan_text(text, phase)


def user(*texts: str, **kw: Any) -> Exchange:
    """An exchange whose request is one user message per text."""
    messages = [{"role": "user", "content": t} for t in texts]
    return Exchange(model=kw.pop("model", "gpt-4o-mini"), messages=messages, **kw)


def run_input(policy: Policy, ex: Exchange) -> ChainOutcome:
    return Chain((policy,)).run_input(ex)


def run_output(policy: Policy, text: str, ex: Exchange | None = None) -> tuple[ChainOutcome, str]:
    ex = ex or user("q")
    ex.response_text = text
    outcome = Chain((policy,)).run_output(ex)
    return outcome, ex.response_text


def redacted(policy: Policy, text: str, phase: Phase = Phase.INPUT) -> str:
    return apply_hits(text, policy.scan_text(text, phase))[0]


def stream(policy: Policy, chunks: list[str]) -> tuple[str, ChainOutcome]:
    """Feed `chunks` through the stream guard; (text forwarded, final outcome)."""
    guard = Chain((policy,)).stream_guard(user("q"))
    sent = []
    for chunk in chunks:
        text, blocked = guard.feed(chunk)
        sent.append(text)
        if blocked is not None:
            break
    return "".join(sent), guard.finish()
