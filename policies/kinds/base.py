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
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from policies.counters import Claim
from policies.model import INSTRUCTION_ROLES, Exchange, Phase, Verdict
from policies.rules import choice
from policies.state import PolicyState
from policies.texts import Path, Text, location, unreadable_parts

_INSTRUCTIONS_KEPT = 64  # instruction texts whose findings a policy remembers (see `Policy.scan_input`)
_INSTRUCTION_MAX_CHARS = 64 * 1024
_DEFINITIONS_KEPT = 64  # sets of tool definitions whose findings a policy remembers (`definition_findings`)


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


def _applied(hits: Sequence[Hit]) -> list[Hit]:
    """The REDACT hits a redaction applies: leftmost first, one overlapping a longer match already applied skipped."""
    spans = sorted((h for h in hits if h.verdict is Verdict.REDACT), key=lambda h: (h.start, -h.end))
    out: list[Hit] = []
    pos = 0
    for hit in spans:
        if hit.start >= pos:
            out.append(hit)
            pos = hit.end
    return out


def apply_hits(text: str, hits: Sequence[Hit]) -> tuple[str, int]:
    """Replace the REDACT hits in `text` (non-overlapping, leftmost first); return text and count."""
    applied = _applied(hits)
    out: list[str] = []
    pos = 0
    for hit in applied:
        out.append(text[pos : hit.start])
        out.append(hit.replacement)
        pos = hit.end
    out.append(text[pos:])
    return "".join(out), len(applied)


def apply_hits_across(texts: Sequence[str], hits: Sequence[Hit]) -> tuple[list[str], int]:
    """`apply_hits` on texts read as one (a message's text parts), the hits in offsets of their concatenation.

    A match's replacement goes into the text where it starts and the rest of the match is removed from the
    texts it runs on into, so the new texts joined equal the redacted concatenation; a text no match touches
    is returned as the very same string. Returns the texts and the count (a match across texts counts once)."""
    applied = _applied(hits)
    out: list[str] = []
    base = 0
    for text in texts:
        end = base + len(text)
        pieces: list[str] = []
        pos = base
        for hit in applied:
            if hit.start >= end or (hit.start < base and hit.end <= base):
                continue  # in a later text, or wholly in an earlier one
            if hit.start >= base:
                pieces.append(text[pos - base : hit.start - base])
                pieces.append(hit.replacement)
            pos = min(hit.end, end)
        if pieces or pos != base:
            pieces.append(text[pos - base :])
            text = "".join(pieces)
        out.append(text)
        base = end
    return out, len(applied)


def _decide(hits: Sequence[Hit], redactions: int, path: Path | None = None) -> Decision | None:
    """The decision on a text's (or a request's) hits; a block or escalation found outside the
    messages' content (`path`) names where it was found."""
    for verdict in (Verdict.BLOCK, Verdict.ESCALATE):
        for hit in hits:
            if hit.verdict is verdict:
                return Decision(verdict, hit.reason_code, located(hit.message, path))
    if redactions:
        first = next(h for h in hits if h.verdict is Verdict.REDACT)
        return Decision(Verdict.REDACT, first.reason_code, first.message, redactions)
    return None


def located(message: str, path: Path | None) -> str:
    """`message (in tools[2].function.description)` for a text outside the messages' content."""
    if path is None or path[0] == "content" or (path[0] == "messages" and path[2:3] == ("content",)):
        return message
    return f"{message} (in {location(path)})" if message else f"found in {location(path)}"


def located_across(message: str, path: Path) -> str:
    """`message (in messages[0].content: its text parts read as one)` for a finding that spans a message's parts."""
    where = f"{location(path)}: its text parts read as one"
    return f"{message} (in {where})" if message else f"found in {where}"


# Every text kind's option for content it cannot read (images, audio, files): `allow` forwards it
# unscanned (the default), `block` refuses the request in the input phase (`unscannable_decision`).
UNSCANNABLE_OPTION = "on_unscannable_input"
UNSCANNABLE_REASON = "unscannable_input"
UNSCANNABLE_RULE = choice(["allow", "block"], "What a request carrying content this kind cannot scan (an image, "
                          "audio, a file) gets: allow forwards it unscanned, block refuses it (unscannable_input).",
                          "allow")


def unscannable_decision(kind: str, ex: Exchange) -> Decision | None:
    """A block naming where the request carries content `kind` cannot scan (never the content), or None."""
    found = unreadable_parts(ex.messages)
    if not found:
        return None
    path, part = found[0]
    more = f"; {len(found)} such parts in all" if len(found) > 1 else ""
    return Decision(Verdict.BLOCK, UNSCANNABLE_REASON,
                    f"policy {kind} cannot scan {location(path)} ({part}{more}) and blocks what it cannot scan "
                    f"({UNSCANNABLE_REASON}); send text instead")


_NOTHING: dict[str, Any] = {}
# Between texts scanned as one (see `Policy.joins_texts`): a line break keeps `^`/`$` (MULTILINE) and
# word boundaries as they are at a text's ends; the NUL between stops `\s+`, words and base64 runs.
JOINER = "\n\x00\n"
_CONTEXT_SENSITIVE = re.compile(r"\^|\$|\\[AZz]|\(\?<?[=!]")


def context_free(patterns: Sequence[re.Pattern[str]], multiline: bool = False) -> bool:
    """Whether no pattern has an anchor or a lookaround (`^`/`$` allowed when compiled MULTILINE)."""
    for rx in patterns:
        source = rx.pattern
        if multiline and rx.flags & re.MULTILINE:
            source = source.replace("^", "").replace("$", "")
        if _CONTEXT_SENSITIVE.search(source):
            return False
    return True


class _Redactor:
    """A text visitor (`Exchange.map_texts`, `map_response`) that redacts each text by its findings,
    looked up by the text itself, and tallies the hits applied and the redactions made. The texts of
    `by_path` (text parts with a finding across parts, see `Policy.across_parts`) get their new text there."""

    __slots__ = ("by_path", "by_text", "hits", "redactions")

    def __init__(self, by_text: dict[str, Sequence[Hit]], by_path: dict[Path, str] | None = None) -> None:
        self.by_text = by_text
        self.by_path = by_path
        self.hits: list[Hit] = []
        self.redactions = 0

    def __call__(self, path: Path, role: Any, text: str) -> str:
        if self.by_path and path in self.by_path:
            return self.by_path[path]
        found = self.by_text.get(text)
        if not found:
            return text
        self.hits.extend(found)
        new, count = apply_hits(text, found)
        self.redactions += count
        return new


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
    # Whether the kind overrides `claims` (keeps counters); set for each subclass as it is defined.
    counts: ClassVar[bool] = False
    # Whether scanning texts joined by `JOINER` finds something whenever one of them alone would
    # (false alarms are fine: each text is then scanned alone). True for kinds whose patterns use
    # no anchors (`^`, `$` without MULTILINE, `\A`, `\Z`) and no lookaround that a `JOINER`
    # character could satisfy or spoil; set per instance by kinds whose users write patterns.
    joins_texts: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.scans_text = cls.scan_text is not Policy.scan_text
        cls.counts = cls.claims is not Policy.claims
        if cls.scans_text and UNSCANNABLE_OPTION not in cls.schema:  # every text kind takes the option
            cls.schema = {**cls.schema, UNSCANNABLE_OPTION: UNSCANNABLE_RULE}

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        self.options = options
        self.state = state
        # `on_unscannable_input: block`: a text kind's `check_input` first asks `unscannable_decision` (with
        # `allow`, the default, a request costs this one flag test).
        self.refuses_unreadable = self.scans_text and options.get(UNSCANNABLE_OPTION) == "block"
        self._instructions: dict[str, tuple[Hit, ...]] = {}  # see `scan_input`
        self._definitions: dict[bytes, dict[str, tuple[Path, tuple[Hit, ...]]]] = {}  # see `definition_findings`

    # --- counters ---------------------------------------------------------------------
    def claims(self, ex: Exchange, phase: Phase) -> Sequence[Claim]:
        """The counters this policy needs checked or added for `ex` in `phase` (no I/O: only declared).

        Whoever runs the chain reserves them before the phase and leaves the results in
        `ex.tally.results` (by claim key) for `check_input`/`check_output` to read."""
        return ()

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

    def definition_findings(self, ex: Exchange) -> dict[str, tuple[Path, tuple[Hit, ...]]]:
        """{text: (where, hits)} for the texts of the request's definitions in which this policy found something.

        Tool definitions (with legacy functions and a response JSON schema) are the same on every
        request of an application and can be long (20 tools: ~400 texts), so each policy remembers
        its findings for the last 64 sets of definitions, by their JSON (up to 256 KiB; see
        `Exchange.definitions_key`): a set seen before costs one dictionary lookup, a set that
        changed is scanned whole. Do not modify the answer.
        """
        key = ex.definitions_key()
        if key is not None and not key:  # none
            return _NOTHING
        known = self._definitions
        found = known.get(key) if key is not None else None
        if found is None:
            found = {}
            # Hundreds of short texts: one scan of them all first, each alone only when that finds something.
            if not self.joins_texts or self.scan_definition(ex.definitions_joined(JOINER)):
                for path, _, text in ex.definition_texts():
                    if text not in found:
                        hits = self.scan_definition(text)
                        if hits:
                            found[text] = (path, tuple(hits))
            if key is not None:
                if len(known) >= _DEFINITIONS_KEPT:
                    del known[next(iter(known))]  # the oldest
                known[key] = found
        return found

    @property
    def definition_sets_kept(self) -> int:
        """How many sets of definitions this policy remembers findings for (at most 64)."""
        return len(self._definitions)

    def scan_definition(self, text: str) -> Sequence[Hit]:
        """Findings in a text of the definitions (`definition_findings` remembers them)."""
        return self.scan_text(text, Phase.INPUT)

    # --- the two phases ---------------------------------------------------------------
    def check_input(self, ex: Exchange) -> Decision | None:
        """Decide on the request; may redact its texts where they stand, or narrow `ex.targets`."""
        if not self.scans_text:
            return None
        if self.refuses_unreadable and (refused := unscannable_decision(self.kind, ex)) is not None:
            return refused
        found_in: dict[str, Sequence[Hit]] = {}  # text -> its findings, so no text is scanned twice
        redacting = False
        # Scan first without changing anything, so a block leaves the request untouched.
        for path, role, text in ex.texts():
            if text in found_in:
                continue
            found = found_in[text] = self.scan_input(text, role)
            if found:
                if any(h.verdict is not Verdict.REDACT for h in found):
                    return _decide(found, 0, path)
                redacting = True
        across = self.across_parts(ex, found_in)
        if isinstance(across, Decision):
            return across
        defined = self.definition_findings(ex)
        for path, found in defined.values():
            if any(h.verdict is not Verdict.REDACT for h in found):
                return _decide(found, 0, path)
        if not redacting and not defined and across is None:
            return None
        by_text = {text: found for text, (_, found) in defined.items()}
        by_text.update((text, found) for text, found in found_in.items() if found)
        by_path: dict[Path, str] = {}
        redact = _Redactor(by_text, by_path)
        for parts, found in across or ():
            new, count = apply_hits_across([text for _, _, text in parts], found)
            by_path.update((where, text) for (where, _, _), text in zip(parts, new, strict=True))
            redact.hits.extend(found)
            redact.redactions += count
        ex.map_texts(redact, conversation=redacting or across is not None, definitions=bool(defined))
        return _decide(redact.hits, redact.redactions)

    def across_parts(self, ex: Exchange, found_in: dict[str, Sequence[Hit]]
                     ) -> Decision | list[tuple[tuple[Text, ...], list[Hit]]] | None:
        """What a scan of each message's text parts joined (as the model reads them) finds beyond each part alone.

        A block (naming the message's content) when a finding blocks; else, for the messages where a
        redaction spans parts, their parts and all the hits to apply (each part's own, in the joined
        text's offsets, and the new ones); None when nothing new was found. `found_in` holds each
        part's own findings. A request whose every message has a string or a single text part costs
        one check per message (none at all when every content is a string)."""
        out: list[tuple[tuple[Text, ...], list[Hit]]] = []
        for path, role, parts in ex.part_runs():
            hits = self.scan_input("".join(text for _, _, text in parts), role)
            if not hits:
                continue
            own: list[Hit] = []
            base = 0
            for _, _, text in parts:
                own.extend(replace(h, start=h.start + base, end=h.end + base) for h in found_in.get(text) or ())
                base += len(text)
            seen = {(h.start, h.end) for h in own}
            new = [h for h in hits if (h.start, h.end) not in seen]
            if not new:
                continue  # each finding lies in one part: redacted as every text is
            decision = _decide(new, 0)
            if decision is not None and decision.verdict is not Verdict.REDACT:
                return replace(decision, message=located_across(decision.message, path))
            out.append((parts, own + new))
        return out or None

    def check_output(self, ex: Exchange) -> Decision | None:
        """Decide on one choice of the response; may rewrite its texts (content, refusal, tool calls)."""
        if not self.scans_text:
            return None
        if not ex.response_tool_calls and not ex.response_refusal and not ex.response_fields:  # text only
            if not ex.response_text:
                return None
            hits = self.scan_text(ex.response_text, Phase.OUTPUT)
            if not hits:
                return None
            decision = _decide(hits, 0)
            if decision is not None:
                return decision
            ex.response_text, count = apply_hits(ex.response_text, hits)
            return _decide(hits, count)
        return self.check_response_texts(ex)

    def check_response_texts(self, ex: Exchange, calls_only: bool = False) -> Decision | None:
        """Scan the answer's texts (only its tool calls with `calls_only`); block, or redact them in place."""
        found_in: dict[str, Sequence[Hit]] = {}
        for path, _, text in ex.response_texts(calls_only):
            if text in found_in:
                continue
            found = self.scan_text(text, Phase.OUTPUT)
            if found:
                if any(h.verdict is not Verdict.REDACT for h in found):
                    return _decide(found, 0, path)
                found_in[text] = found
        if not found_in:
            return None
        redact = _Redactor(found_in)
        ex.map_response(redact, calls_only)
        return _decide(redact.hits, redact.redactions)


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
