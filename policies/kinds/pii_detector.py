"""pii-detector: personal data in requests and responses, redacted or blocked.

Detects e-mail addresses, phone numbers (international `+...` and North American forms),
payment card numbers (13-19 digits, Luhn-checked), IBANs (ISO 13616 mod-97 checked),
US social security numbers and IPv4 addresses; with `healthcare_mode` also medical record
numbers and NPIs (labelled, NPI Luhn-checked). Checksums keep near-misses out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from policies.kinds import register
from policies.kinds.base import Hit, Policy, compile_regexes
from policies.model import Phase, Verdict
from policies.rules import choice, flag, meta, option, section, strings
from policies.state import PolicyState
from policies.textfold import Folded, find_all, fold, merge_windows

REASON = "pii_detected"


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment cards and NPIs."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# IBAN lengths by country (ISO 13616 registry); other countries: 15-34 characters.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28, "CZ": 24,
    "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GI": 23, "GL": 18,
    "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SA": 24, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "TR": 26, "UA": 29,
}  # fmt: skip


def iban_ok(text: str) -> bool:
    """ISO 13616: country length and the mod-97 check."""
    iban = re.sub(r"[ -]", "", text).upper()
    expected = _IBAN_LENGTHS.get(iban[:2])
    if (expected and len(iban) != expected) or not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _card_ok(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)


def _phone_ok(text: str) -> bool:
    return 7 <= len(_digits(text)) <= 15


@dataclass(frozen=True, slots=True)
class Entity:
    label: str
    regex: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    group: int = 0  # the regex group that is the PII (the rest is context such as a label)
    # Number-shaped entities are looked for only around runs of digits (see `_CLUSTER`):
    min_digits: int = 0  # digits the run needs
    before: int = 0  # characters of the match that may precede the run (a "+", a label)
    needs: str = ""  # a character the run must contain


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
ENTITIES: dict[str, Entity] = {
    "email": Entity(
        "EMAIL",
        re.compile(r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ),
    "credit_card": Entity(
        "CREDIT_CARD", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?!\d)", re.A), _card_ok, min_digits=13
    ),
    "iban": Entity(
        "IBAN",
        re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b", re.A),
        iban_ok,
        min_digits=4,
        before=2,
    ),
    "ssn": Entity(
        "SSN",
        re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])", re.A),
        min_digits=9,
    ),
    "phone": Entity(
        "PHONE",
        re.compile(
            r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)"
            r"|(?<![\w+(])(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)",
            re.A,
        ),
        _phone_ok,
        min_digits=7,
        before=2,
    ),
    "ipv4": Entity(
        "IPV4", re.compile(rf"(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\d|\.\d)", re.A), min_digits=4, needs="."
    ),
    # Healthcare identifiers are recognised by their label; the number is what gets redacted.
    "mrn": Entity(
        "MRN",
        re.compile(r"\b(?:MRN|medical\s+record\s+(?:number|no\.?|#))[\s:#]*(\d{6,10})\b", re.I | re.A),
        group=1,
        min_digits=6,
        before=40,
    ),
    "npi": Entity(
        "NPI",
        re.compile(r"\bNPI[\s:#]*(\d{10})\b", re.I | re.A),
        lambda npi: luhn_ok("80840" + npi),
        group=1,
        min_digits=10,
        before=16,
    ),
}
BASE_ENTITIES = ("email", "phone", "credit_card", "iban", "ssn", "ipv4")
HEALTHCARE_ENTITIES = ("mrn", "npi")
LABELS = [e.label for e in ENTITIES.values()] + ["CUSTOM"]


def _partial(label: str, text: str) -> str:
    """Keep the domain of an e-mail, the first two octets of an IP, the last 4 of numbers."""
    if label == "EMAIL":
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain}"
    if label == "IPV4":
        return ".".join([*text.split(".")[:2], "*", "*"])
    keep = 4 if sum(c.isalnum() for c in text) > 6 else 0
    out: list[str] = []
    for ch in reversed(text):
        if ch.isalnum():
            out.append(ch if keep > 0 else "*")
            keep -= 1
        else:
            out.append(ch)
    return "".join(reversed(out))


@register
class PiiDetector(Policy):
    kind = "pii-detector"
    joins_texts = True  # built-in patterns only; their lookarounds exclude line breaks and NUL
    phases = frozenset({Phase.INPUT, Phase.OUTPUT})
    regex_fields = ("detect_patterns",)
    window = 320  # longest e-mail address (254) with room to spare
    schema = {
        "action": choice(["redact", "block"], "Redact personal data or block the request.", "redact"),
        "pci_mode": flag("Detect payment card numbers.", True),
        "healthcare_mode": flag("Also detect medical record numbers and NPIs.", False),
        "entities": option("list", "Entity types to detect (default: all but the healthcare ones).",
                           schema={"type": "string", "allowed": list(ENTITIES)}),
        "detect_patterns": strings("Extra Python regexes, redacted as CUSTOM."),
        "redaction": section("How redacted text is marked.", {
            "marker_format": choice(["label", "asterisks", "partial"],
                                    "[REDACTED:EMAIL], ****, or a partly masked value.", "label"),
            "include_metadata": flag("Count redactions in the event.", True),
            "preserve_length": flag("asterisks keep the length of the value.", True),
            "custom_markers": {
                "type": "dict",
                "keysrules": {"type": "string", "allowed": LABELS},
                "valuesrules": {"type": "string"},
                "meta": meta("Replacement text per entity label, e.g. {EMAIL: '<email>'}."),
            },
        }),
    }

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        self.verdict = Verdict.BLOCK if options.get("action", "redact") == "block" else Verdict.REDACT
        names = list(options.get("entities") or BASE_ENTITIES)
        if options.get("healthcare_mode", False) and "entities" not in options:
            names += HEALTHCARE_ENTITIES
        if not options.get("pci_mode", True):
            names = [n for n in names if n != "credit_card"]
        builtin = [ENTITIES[n] for n in dict.fromkeys(names)]
        self.email = next((e for e in builtin if e.label == "EMAIL"), None)
        self.numeric = [e for e in builtin if e.label != "EMAIL"]
        custom = compile_regexes(self.kind, "detect_patterns", options.get("detect_patterns") or [])
        self.custom = [Entity("CUSTOM", rx) for rx in custom]
        redaction = options.get("redaction") or {}
        self.marker_format = redaction.get("marker_format", "label")
        self.preserve_length = redaction.get("preserve_length", True)
        self.include_metadata = redaction.get("include_metadata", True)
        self.custom_markers = dict(redaction.get("custom_markers") or {})

    def marker(self, label: str, text: str) -> str:
        """What replaces `text` (an entity of type `label`) in redact mode."""
        if label in self.custom_markers:
            return self.custom_markers[label]
        if self.marker_format == "asterisks":
            return "*" * len(text) if self.preserve_length else "****"
        if self.marker_format == "partial":
            return _partial(label, text)
        return f"[REDACTED:{label}]"

    def scan_text(self, text: str, phase: Phase) -> list[Hit]:
        # Matching runs on folded text (fullwidth digits, zero-width characters inside a
        # number); spans map back to the original. The built-in entities are only looked
        # for near an '@' or a run of 4+ digits, so prose costs one fast scan, not one per entity.
        folded = fold(text)
        text = folded.text
        hits: list[Hit] = []
        if self.email is not None and "@" in text:
            self._found(self.email, folded, _emails(self.email.regex, text), hits)
        if self.numeric and _DIGITS4.search(text) is not None:
            clusters = []
            for m in _CLUSTER.finditer(text):
                run = m.group()
                digits = sum(c.isdigit() for c in run)
                if digits >= 4:
                    clusters.append((m.start(), m.end(), digits, run))
            for entity in self.numeric:
                windows = (
                    (start - entity.before, end + 2)
                    for start, end, digits, run in clusters
                    if digits >= entity.min_digits and entity.needs in run
                )
                for lo, hi in merge_windows(windows):
                    self._scan(entity, folded, lo, hi, hits)
        for entity in self.custom:
            self._scan(entity, folded, 0, len(text), hits)
        return hits

    def _scan(self, entity: Entity, folded: Folded, lo: int, hi: int, hits: list[Hit]) -> None:
        self._found(entity, folded, entity.regex.finditer(folded.text, max(lo, 0), hi), hits)

    def _found(self, entity: Entity, folded: Folded, matches: Iterable[re.Match[str]], hits: list[Hit]) -> None:
        for m in matches:
            value = m.group(entity.group)
            if entity.check is not None and not entity.check(value):
                continue
            message = f"PII detected: {entity.label}" if self.include_metadata else "PII detected"
            replacement = self.marker(entity.label, value) if self.verdict is Verdict.REDACT else ""
            start, end = folded.span(m.start(entity.group), m.end(entity.group))
            hits.append(Hit(start, end, self.verdict, REASON, replacement, message))


def _emails(regex: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """E-mail matches, tried once at each '@' from where its local part starts (at most 65 back).

    One anchored attempt per '@' instead of a search through the text around it, which tried
    the pattern at every position. Matches do not overlap, as a search's would not.
    """
    end = 0
    for at in find_all(text, "@"):
        if at < end:
            continue
        start, floor = at, max(at - 65, end)
        while start > floor and (text[start - 1].isalnum() or text[start - 1] in "_.%+-"):  # the class of \w.%+-
            start -= 1
        m = regex.match(text, start, at + 256)
        if m is not None:
            end = m.end()
            yield m


# A run that may hold a number-shaped entity (IBANs have capitals inside). ASCII digits:
# folding has turned other digit forms into them.
_CLUSTER = re.compile(r"[0-9][0-9A-Z .()/+-]*")
_DIGITS4 = re.compile(r"[0-9](?:[0-9A-Z .()/+-]*?[0-9]){3}")  # some cluster has 4+ digits (cheap pre-check)
