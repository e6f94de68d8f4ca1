"""safety-filter: keyword categories of harmful requests and answers, blocked or escalated.

Deterministic by design: each category is a list of phrases matched as whole words,
case-insensitively and through evasions (zero-width characters, look-alike letters; see
policies.termmatch), optionally fuzzily. `mode` picks the default categories; `block_if`
replaces them; `categories` adds phrases to a built-in category or defines a custom one
(custom categories are always checked).
"""

from __future__ import annotations

from typing import Any

from policies.kinds import register
from policies.kinds.base import Hit, Policy
from policies.model import Phase, Verdict
from policies.rules import FUZZY_DISTANCE, choice, flag, meta, option
from policies.state import PolicyState
from policies.termmatch import TermMatcher

REASON = "safety_violation"

CATEGORIES: dict[str, tuple[str, ...]] = {
    "violence": (
        "how to kill someone", "how to kill a person", "how to murder", "get away with murder", "hire a hitman",
        "plan a mass shooting", "plan a school shooting", "how to torture someone", "poison someone",
    ),
    "weapons": (
        "build a bomb", "make a bomb", "pipe bomb", "homemade explosive", "make thermite", "make napalm",
        "molotov cocktail", "ghost gun", "3d printed gun", "untraceable gun", "convert to full auto", "auto sear",
        "make a silencer", "nerve agent synthesis", "make sarin", "weaponize anthrax",
    ),
    "self_harm": (
        "kill myself", "want to die", "end my life", "suicide method", "how to commit suicide", "painless way to die",
        "how to cut myself", "self harm methods", "overdose on purpose",
    ),
    "drugs": (
        "synthesize methamphetamine", "cook meth", "make meth", "synthesize fentanyl", "make crack cocaine",
        "make heroin", "extract dmt",
    ),
    "cyberattack": (
        "write ransomware", "create ransomware", "ransomware payload", "build a botnet", "ddos attack script",
        "write a keylogger", "phishing kit", "steal credentials", "bypass antivirus detection",
        "zero day exploit for sale",
    ),
    "sexual_minors": (
        "child sexual abuse material", "csam", "child porn", "sexualize a minor", "sexual content minors",
    ),
    "terrorism": ("join isis", "plan a terrorist attack", "terrorist attack plan", "recruit for jihad", "build an ied"),
    "critical_infrastructure": (
        "scada exploit", "plc exploit", "ics malware", "disable the power grid", "take down the power grid",
        "attack a water treatment plant", "poison the water supply", "hack a nuclear plant",
        "bypass safety instrumented system", "disable safety interlocks",
    ),
    "vehicle_tampering": (
        "disable abs", "bypass the immobilizer", "disable airbags", "can bus injection", "hack a car remotely",
        "disable emissions controls", "emissions defeat device", "remove speed limiter", "odometer rollback",
    ),
    "academic_dishonesty": (
        "write my essay for me", "do my homework for me", "take my exam for me", "answers to the exam",
        "bypass turnitin", "avoid plagiarism detection",
    ),
    "evidence_tampering": ("fabricate evidence", "plant evidence", "tamper with evidence", "destroy evidence"),
    "stalking": (
        "track someone without consent", "track my ex", "stalk my ex", "find someone's home address",
        "install spyware on phone", "dox someone",
    ),
}  # fmt: skip
GENERAL = ("violence", "weapons", "self_harm", "drugs", "cyberattack", "sexual_minors", "terrorism")
MODES: dict[str, tuple[str, ...]] = {
    "general": GENERAL,
    "critical_infrastructure": (*GENERAL, "critical_infrastructure"),
    "automotive": (*GENERAL, "vehicle_tampering"),
    "education": (*GENERAL, "academic_dishonesty"),
    "law_enforcement": (*GENERAL, "evidence_tampering", "stalking"),
}


@register
class SafetyFilter(Policy):
    kind = "safety-filter"
    joins_texts = True  # whole-word phrases
    phases = frozenset({Phase.INPUT, Phase.OUTPUT})
    schema = {
        "mode": choice(MODES, "Picks the default categories.", "general"),
        "block_if": option("list", "Built-in categories to check, replacing the mode's.",
                           schema={"type": "string", "allowed": list(CATEGORIES)}),
        "categories": {
            "type": "dict",
            "keysrules": {"type": "string", "regex": r"[a-z][a-z0-9_]*"},
            "valuesrules": {"type": "list", "schema": {"type": "string", "empty": False, "maxlength": 200}},
            "meta": meta("Phrases added to a built-in category, or a custom category (always checked)."),
        },
        "action": choice(["block", "escalate"], "Verdict on a match.", "block"),
        "fuzzy_matching": flag("Also match misspellings within max_distance edits.", False),
        "max_distance": FUZZY_DISTANCE,
    }

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        custom = options.get("categories") or {}
        active = list(options.get("block_if", MODES[options.get("mode", "general")]))
        active += [name for name in custom if name not in CATEGORIES]
        self.categories = tuple(dict.fromkeys(active))
        self.verdict = Verdict.ESCALATE if options.get("action") == "escalate" else Verdict.BLOCK
        self.matcher = TermMatcher(
            (
                (phrase, name)
                for name in self.categories
                for phrase in (*CATEGORIES.get(name, ()), *custom.get(name, ()))
            ),
            fuzzy=options.get("fuzzy_matching", False),
            max_distance=options.get("max_distance", 1),
        )
        self.window = max(type(self).window, 2 * self.matcher.longest + 16)

    def scan_text(self, text: str, phase: Phase) -> list[Hit]:
        return [
            Hit(t.start, t.end, self.verdict, REASON, "", f"safety category: {t.tag}") for t in self.matcher.find(text)
        ]
