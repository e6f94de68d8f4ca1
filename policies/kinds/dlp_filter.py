"""dlp-filter: secrets and confidential terms, redacted or blocked, in requests and responses.

`detect_patterns` are regexes matched as written (add `(?i)` for case-insensitivity), on
text folded like the terms' (so a zero-width space inside a key does not hide it).
`blocked_terms` match case-insensitively as whole words, after folding zero-width
characters, Unicode compatibility forms and look-alike letters (see policies.termmatch);
with `fuzzy_matching` also misspellings within `max_distance` edits.
`sensitivity_level: high` adds built-in credential patterns; `restricted` also blocks
whatever `action` says.
"""

from __future__ import annotations

import re
from typing import Any

from policies.kinds import register
from policies.kinds.base import Hit, Policy, compile_regexes, context_free
from policies.model import Phase, Verdict
from policies.rules import FUZZY_DISTANCE, choice, flag, option, strings
from policies.state import PolicyState
from policies.termmatch import TermMatcher
from policies.textfold import fold

PATTERN_REASON = "dlp_pattern_detected"
TERM_REASON = "dlp_term_detected"
MARKER = "[REDACTED:DLP]"

# Well-known credential shapes, added at sensitivity_level high and restricted.
CREDENTIAL_PATTERNS = (
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36}\b",  # GitHub token
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack token
    r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----",
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI / Anthropic API key
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
)


@register
class DlpFilter(Policy):
    kind = "dlp-filter"
    phases = frozenset({Phase.INPUT, Phase.OUTPUT})
    regex_fields = ("detect_patterns",)
    window = 512
    schema = {
        "detect_patterns": strings("Python regexes matched as written (add (?i) to ignore case)."),
        "blocked_terms": option("list", "Terms matched case-insensitively as whole words, through look-alike evasions.",
                                schema={"type": "string", "empty": False, "maxlength": 200}),
        "action": choice(["redact", "block"], "Redact the match or block the request.", "redact"),
        "fuzzy_matching": flag("Also match misspelled terms within max_distance edits.", False),
        "max_distance": FUZZY_DISTANCE,
        "sensitivity_level": choice(["standard", "high", "restricted"],
                                    "high adds built-in credential patterns; restricted also always blocks.",
                                    "standard"),
    }

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        level = options.get("sensitivity_level", "standard")
        block = options.get("action", "redact") == "block" or level == "restricted"
        self.verdict = Verdict.BLOCK if block else Verdict.REDACT
        self.patterns = compile_regexes(self.kind, "detect_patterns", list(options.get("detect_patterns") or []))
        if level in ("high", "restricted"):
            self.patterns += [re.compile(p) for p in CREDENTIAL_PATTERNS]
        self.terms = TermMatcher(
            ((t, t) for t in options.get("blocked_terms") or []),
            fuzzy=options.get("fuzzy_matching", False),
            max_distance=options.get("max_distance", 1),
        )
        self.window = max(type(self).window, 2 * self.terms.longest + 16)
        self.joins_texts = context_free(self.patterns)

    def scan_text(self, text: str, phase: Phase) -> list[Hit]:
        marker = MARKER if self.verdict is Verdict.REDACT else ""
        folded = fold(text)
        hits = [
            Hit(*folded.span(m.start(), m.end()), self.verdict, PATTERN_REASON, marker, "DLP pattern detected")
            for rx in self.patterns
            for m in rx.finditer(folded.text)
            if m.end() > m.start()
        ]
        hits += [
            Hit(t.start, t.end, self.verdict, TERM_REASON, marker, "DLP blocked term detected")
            for t in self.terms.find(text, folded)
        ]
        return hits
