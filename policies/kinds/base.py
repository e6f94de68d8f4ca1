"""The one small interface every policy kind implements.

A kind is a class with a `kind` name, the `phases` it runs in, a Cerberus `schema` for its
`policy.<kind>` block, and a constructor that compiles the block once (regexes, tables).
At request time it answers through one of two doors:

- text kinds (pii, dlp, prompt-injection, safety) implement `scan_text`, which returns the
  `Hit`s found in a piece of text. The base class turns hits into decisions on requests,
  responses and streams alike, so redaction and blocking behave the same everywhere.
- structural kinds (rbac, agent-firewall, data routing, spend) override `check_input` /
  `check_output` and look at headers, tools, targets and usage.

Policies are deterministic and do no I/O. State that must outlive one request (spend,
per-session counters) lives in the `PolicyState` handed to the constructor, which the
gateway keeps across reloads.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from policies.model import INSTRUCTION_ROLES, Exchange, Phase, Verdict
from policies.state import PolicyState

_INSTRUCTIONS_KEPT = 64  # instruction texts whose findings a policy remembers (see `Policy.scan_input`)
_INSTRUCTION_MAX_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Hit:
    """A finding in a piece of text: `text[start:end]` matched."""

    start: int
    end: int
    verdict: Verdict  # BLOCK, REDACT or ESCALATE
    reason_code: str
    replacement: str = ""  # what REDACT puts in place of the match
    message: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's answer for one phase. `None` from a check means allow."""

    verdict: Verdict
    reason_code: str
    message: str = ""
    redactions: int = 0
    retry_after_s: int | None = None  # for rate-limit style blocks (answered 429 + Retry-After)


def apply_hits(text: str, hits: Sequence[Hit]) -> tuple[str, int]:
    """Replace the REDACT hits in `text` (non-overlapping, leftmost first); return text and count."""
    spans = sorted((h for h in hits if h.verdict is Verdict.REDACT), key=lambda h: (h.start, -h.end))
    out: list[str] = []
    pos = 0
    count = 0
    for hit in spans:
        if hit.start < pos:
            continue  # overlaps a longer match already replaced
        out.append(text[pos : hit.start])
        out.append(hit.replacement)
        pos = hit.end
        count += 1
    out.append(text[pos:])
    return "".join(out), count


def _decide(hits: Sequence[Hit], redactions: int) -> Decision | None:
    for verdict in (Verdict.BLOCK, Verdict.ESCALATE):
        for hit in hits:
            if hit.verdict is verdict:
                return Decision(verdict, hit.reason_code, hit.message)
    if redactions:
        first = next(h for h in hits if h.verdict is Verdict.REDACT)
        return Decision(Verdict.REDACT, first.reason_code, first.message, redactions)
    return None


class Policy:
    """Base class of all policy kinds."""

    kind: ClassVar[str] = ""
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    schema: ClassVar[dict[str, Any]] = {}
    # Longest text a single hit can span; the stream guard keeps this much context
    # across chunk boundaries. Text kinds with longer patterns raise it.
    window: ClassVar[int] = 256
    # Dotted paths (in the `policy.<kind>` block) of options that hold regexes or lists of
    # regexes, so lint can report an invalid one with its own code.
    regex_fields: ClassVar[tuple[str, ...]] = ()
    # Whether the kind overrides `scan_text` (a text kind); set for each subclass as it is defined.
    scans_text: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.scans_text = cls.scan_text is not Policy.scan_text

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        self.options = options
        self.state = state
        self._instructions: dict[str, tuple[Hit, ...]] = {}  # see `scan_input`

    # --- text kinds -----------------------------------------------------------------
    def scan_text(self, text: str, phase: Phase) -> list[Hit]:
        """Findings in `text`. Text kinds override this; structural kinds don't."""
        return []

    def scan_input(self, text: str, role: Any) -> Sequence[Hit]:
        """`scan_text(text, INPUT)`, remembered for the application's own instructions.

        A system or developer message is the same on every request of an application, often
        kilobytes long (a 4 KB one costs pii-detector ~26 us and dlp-filter ~38 us a scan), so
        each policy keeps the findings of the last 64 such texts of up to 64 KiB. Findings are
        a pure function of the text (kinds are deterministic); messages of users and tools are
        always scanned afresh and never kept.
        """
        if role not in INSTRUCTION_ROLES or len(text) > _INSTRUCTION_MAX_CHARS:
            return self.scan_text(text, Phase.INPUT)
        known = self._instructions
        found = known.get(text)
        if found is None:
            found = tuple(self.scan_text(text, Phase.INPUT))
            if len(known) >= _INSTRUCTIONS_KEPT:
                del known[next(iter(known))]  # the oldest
            known[text] = found
        return found

    # --- the two phases ---------------------------------------------------------------
    def check_input(self, ex: Exchange) -> Decision | None:
        """Decide on the request; may redact `ex.messages` or narrow `ex.targets`."""
        if not self.scans_text:
            return None
        hits: list[Hit] = []
        redactions = 0
        scanned: dict[str, Sequence[Hit]] = {}  # text -> its findings, so no text is scanned twice

        def redact(text: str) -> str:
            nonlocal redactions
            found = scanned[text] if text in scanned else self.scan_text(text, Phase.INPUT)
            if not found:
                return text
            hits.extend(found)
            new, count = apply_hits(text, found)
            redactions += count
            return new

        # Scan first without changing anything, so a block leaves the request untouched.
        for role, text in ex.role_texts():
            found = scanned[text] = self.scan_input(text, role)
            if any(h.verdict is not Verdict.REDACT for h in found):
                return _decide(found, 0)
            if found:
                break
        else:
            return None
        ex.map_texts(redact)
        return _decide(hits, redactions)

    def check_output(self, ex: Exchange) -> Decision | None:
        """Decide on the response; may rewrite `ex.response_text`."""
        if not self.scans_text or not ex.response_text:
            return None
        hits = self.scan_text(ex.response_text, Phase.OUTPUT)
        if not hits:
            return None
        decision = _decide(hits, 0)
        if decision is not None:
            return decision
        ex.response_text, count = apply_hits(ex.response_text, hits)
        return _decide(hits, count)


def compile_regexes(kind: str, path: str, patterns: list[str], flags: int = 0) -> list[re.Pattern[str]]:
    """Compile a config's regexes once; an invalid one raises `re.error` (with `.pattern`) naming where it is."""
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern, flags))
        except re.error as exc:
            raise re.error(f"policy.{kind}.{path}[{i}]: invalid regex: {exc.msg}", exc.pattern, exc.pos) from exc
    return compiled


def compile_globs(globs: list[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex for shell-style globs (`*`, `?`, `[...]`); None for none."""
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs), re.IGNORECASE)


def tool_name(item: dict[str, Any]) -> str:
    """The name of a tool definition or tool call in canonical (OpenAI) form."""
    function = item.get("function")
    name = function.get("name") if isinstance(function, dict) else item.get("name")
    return name if isinstance(name, str) else ""
