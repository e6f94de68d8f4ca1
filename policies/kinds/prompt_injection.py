"""prompt-injection: instruction-override attempts and fake role boundaries in requests.

Every text a model reads is scanned (see `Exchange.texts`), except the content of `system` and
`developer` messages (the application's own instructions): user, assistant and tool messages,
names, tool-call arguments, and the tool definitions and response schema (they often come from
third parties, e.g. MCP servers; remembered per set like other kinds do).
Before matching, text is folded (zero-width characters dropped, NFKC, accents and
look-alike letters folded; see policies.textfold) and base64 runs are decoded and scanned
too (two levels deep). Matching is deterministic regex; `embedding_threshold` is accepted
for compatibility and unused.
"""

from __future__ import annotations

import re
from typing import Any

from policies.kinds import register
from policies.kinds.base import (
    Decision,
    Hit,
    Policy,
    compile_regexes,
    context_free,
    located,
    located_across,
    unscannable_decision,
)
from policies.model import INSTRUCTION_ROLES, Exchange, Phase, Verdict
from policies.rules import choice, flag, option, section, strings
from policies.state import PolicyState
from policies.textfold import ascii_words, base64_segments, find_all, fold, lower, merge_windows, words_table
from policies.texts import Path

REASON = "prompt_injection_detected"

_ANY = r"(?:all|any|every|the|your|my|these|those|of|previous|prior|above|earlier|preceding|initial|original|system)"
ATTACK_PATTERNS = (
    # "ignore all previous instructions", "disregard the above rules", "forget your guidelines"
    rf"(?<!n't\s)(?<!not\s)(?<!never\s)\b(?:ignore|disregard|forget|override|bypass|skip|drop)\s+(?:{_ANY}\s+){{0,4}}"
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|constraints|context|messages?)\b",
    r"\b(?:reveal|print|show|output|repeat|leak|display|dump|tell\s+me)\s+(?:me\s+)?(?:your|the)\s+(?:full\s+|entire\s+)?"
    r"(?:system\s+prompt|initial\s+(?:prompt|instructions)|hidden\s+(?:prompt|instructions)|instructions\s+above)",
    r"\bwhat\s+(?:is|are|was|were)\s+your\s+(?:system\s+prompt|initial\s+instructions|hidden\s+instructions)",
    r"\byou\s+are\s+now\s+(?:in\s+)?(?:dan|developer\s+mode|jailbroken|unrestricted|unfiltered|evil)\b",
    r"\b(?:enable|enter|activate|switch\s+to)\s+(?:dan|developer|god|jailbreak|unrestricted)\s+mode\b",
    r"\bdo\s+anything\s+now\b",
    r"\bpretend\s+(?:that\s+)?(?:you\s+)?(?:are|have)\s+(?:no|not\s+any)\s+"
    r"(?:restrictions|rules|guidelines|filters|limits|policies)\b",
    r"\bact\s+as\s+(?:an?\s+)?(?:unrestricted|unfiltered|jailbroken|uncensored)\b",
    r"\b(?:new|updated|real)\s+system\s+(?:prompt|instructions)\s*:",
)
# Role headers written into user content: "### system:", "[SYSTEM]", "<system>", "SYSTEM OVERRIDE:".
FAKE_BOUNDARIES = (
    r"^[ \t>]*(?:#{1,6}|={2,}|-{2,}|\*{2,})[ \t]*(?:system|assistant|developer)"
    r"(?:[ \t]+(?:prompt|message|instructions?))?[ \t]*(?::|(?:#{1,6}|={2,}|-{2,}|\*{2,})|$)",
    r"\[/?(?:system|assistant|developer)(?:[ \t]+(?:prompt|message))?\]",
    r"</?(?:system|system_prompt|system-prompt|assistant|developer)>",
    r"^[ \t]*(?:system|developer)[ \t]+(?:override|prompt|message|instructions?)[ \t]*:",
)
# Chat-template control tokens (enforce_delimiters): <|im_start|>, [INST], <<SYS>>, ...
DELIMITER_TOKENS = (
    r"<\|(?:im_start|im_end|im_sep|endoftext|system|user|assistant|eot_id|start_header_id|end_header_id)\|>",
    r"\[/?inst\]",
    r"<</?sys>>",
)
# Every built-in attack pattern starts with one of these words, every fake boundary holds
# a role word, every delimiter one of the hints: patterns run only where those occur.
ATTACK_TRIGGERS = (
    "ignore", "disregard", "forget", "override", "bypass", "skip", "drop", "reveal", "print", "show", "output",
    "repeat", "leak", "display", "dump", "tell", "what", "you", "enable", "enter", "activate", "switch", "do",
    "pretend", "act", "new", "updated", "real",
)  # fmt: skip
_TRIGGER_SET = frozenset(ATTACK_TRIGGERS)
_LETTERS_ONLY = words_table(str.isalpha)
ROLE_WORDS = ("system", "assistant", "developer")
DELIMITER_HINTS = ("<|", "inst]", "sys>>")


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for lower-cased text."""
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.MULTILINE)


@register
class PromptInjection(Policy):
    kind = "prompt-injection"
    phases = frozenset({Phase.INPUT})
    regex_fields = ("detection.attack_patterns",)
    window = 512
    schema = {
        "embedding_threshold": option("number", "Accepted for compatibility; matching is deterministic.", min=0, max=1),
        "detection": section("What counts as an attack.", {
            "attack_patterns": strings("Extra Python regexes (matched ignoring case) beside the built-in ones."),
            "embedding_threshold": option("number", "Accepted for compatibility; unused.", min=0, max=1),
        }),
        "encoding": section("Evasions undone before matching.", {
            "decode_base64": flag("Scan base64 runs decoded (two levels deep).", True),
            "normalize_unicode": flag("Fold Unicode compatibility forms and zero-width characters.", True),
            "detect_homoglyphs": flag("Fold look-alike letters.", True),
        }),
        "boundaries": section("Fake role boundaries in user text.", {
            "enforce_delimiters": flag("Flag chat-template delimiter tokens.", True),
            "reject_fake_boundaries": flag("Flag fake 'system:' style boundaries.", True),
        }),
        "response": section("What a detection does.", {
            "action": choice(["block", "escalate", "log"], "Verdict on a detection.", "block"),
            "message": option("string", "Message returned to the client on a block.", empty=False, maxlength=500),
            "log_level": choice(["debug", "info", "warning", "error"], "Log level of a detection.", "warning"),
        }),
    }

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        detection = options.get("detection") or {}
        encoding = options.get("encoding") or {}
        boundaries = options.get("boundaries") or {}
        response = options.get("response") or {}
        custom = list(detection.get("attack_patterns") or [])
        flags = re.IGNORECASE | re.MULTILINE
        custom_rx = compile_regexes(self.kind, "detection.attack_patterns", custom, flags)
        self.attacks = _compile(ATTACK_PATTERNS)
        self.custom = custom_rx
        self.joins_texts = context_free(custom_rx, multiline=True)  # built-ins: see JOINER
        self.boundaries = _compile(FAKE_BOUNDARIES) if boundaries.get("reject_fake_boundaries", True) else None
        self.delimiters = _compile(DELIMITER_TOKENS) if boundaries.get("enforce_delimiters", True) else None
        self.decode_base64 = encoding.get("decode_base64", True)
        self.normalize = encoding.get("normalize_unicode", True)
        self.homoglyphs = encoding.get("detect_homoglyphs", True)
        self.action = response.get("action", "block")
        self.message = response.get("message", "")
        self.log_level = response.get("log_level", "warning")
        self.embedding_threshold = detection.get("embedding_threshold", options.get("embedding_threshold"))

    def _find(self, text: str, depth: int = 0) -> tuple[int, int, str] | None:
        """The first finding in `text` as (start, end, what), or None."""
        folded = fold(text, self.normalize, self.homoglyphs)
        found = self._search(folded.text, lower(folded.text))
        if found is not None:
            start, end, what = found
            return (*folded.span(start, max(end, start + 1)), what)
        if self.decode_base64 and depth < 2:
            for start, end, decoded in base64_segments(text):
                inner = self._find(decoded, depth + 1)
                if inner is not None:
                    return start, end, f"{inner[2]} (base64-encoded)"
        return None

    def _search(self, text: str, low: str) -> tuple[int, int, str] | None:
        # Which trigger words occur at all: one C-speed pass (non-ASCII text checks them all).
        present = _TRIGGER_SET.intersection(ascii_words(low, _LETTERS_ONLY)) if low.isascii() else ATTACK_TRIGGERS
        for word in present:
            for i in find_all(low, word):
                m = self.attacks.match(low, i)
                if m is not None:
                    return m.start(), m.end(), "instruction override"
        for rx in self.custom:
            m = rx.search(text)
            if m is not None:
                return m.start(), m.end(), "instruction override"
        if self.boundaries is not None:
            # Around each role word: from its line's start (if near) to its line's end (if near).
            windows = []
            for word in ROLE_WORDS:
                if word not in low:
                    continue
                for i in find_all(low, word):
                    line = low.rfind("\n", 0, i) + 1
                    line_end = low.find("\n", i)
                    lo = line if i - line <= 64 else i - 64
                    windows.append((lo, min(len(low) if line_end < 0 else line_end, i + 64)))
            for lo, hi in merge_windows(windows):
                m = self.boundaries.search(low, lo, hi)
                if m is not None:
                    return m.start(), m.end(), "fake role boundary"
        if self.delimiters is not None and any(hint in low for hint in DELIMITER_HINTS):
            m = self.delimiters.search(low)
            if m is not None:
                return m.start(), m.end(), "chat template delimiter"
        return None

    def scan_text(self, text: str, phase: Phase) -> list[Hit]:
        found = self._find(text)
        if found is None or self.action == "log":
            return []
        verdict = Verdict.ESCALATE if self.action == "escalate" else Verdict.BLOCK
        start, end, what = found
        return [Hit(start, end, verdict, REASON, "", self.message or f"prompt injection detected: {what}")]

    def _hits(self, text: str) -> list[Hit]:
        """The first finding in `text` as a hit (verdict ALLOW with `response.action: log`)."""
        found = self._find(text)
        if found is None:
            return []
        verdict = {"log": Verdict.ALLOW, "escalate": Verdict.ESCALATE}.get(self.action, Verdict.BLOCK)
        start, end, what = found
        return [Hit(start, end, verdict, REASON, "", self.message or f"prompt injection detected: {what}")]

    def scan_definition(self, text: str) -> list[Hit]:
        return self._hits(text)

    def check_input(self, ex: Exchange) -> Decision | None:
        if self.refuses_unreadable and (refused := unscannable_decision(self.kind, ex)) is not None:
            return refused
        for path, role, text in ex.texts():
            if role in INSTRUCTION_ROLES:  # the application's own instructions are trusted
                continue
            found = self._hits(text)
            if found:
                return self._decision(found[0], path)
        for path, role, parts in ex.part_runs():  # a message's text parts, read as one text
            if role not in INSTRUCTION_ROLES:
                found = self._hits("".join(text for _, _, text in parts))
                if found:
                    return Decision(found[0].verdict, REASON, located_across(found[0].message, path))
        for path, found in self.definition_findings(ex).values():  # tool definitions are not: they travel
            return self._decision(found[0], path)
        return None

    def _decision(self, hit: Hit, path: Path) -> Decision:
        message = located(hit.message, path)
        # With `log`, the finding is recorded in the decision event and the request passes.
        return Decision(hit.verdict, REASON, message)
