"""Values that travel between the parts: verdicts, policy results, the per-request exchange.

This module is the contract between `policies/` (which decides) and `gateway/` (which
carries traffic). It imports of ours only `policies.texts` (standard library and orjson).

Canonical request form: every request reaches the chain in OpenAI chat format, whatever
route it came in on. `messages` is a list of `{"role", "content"}` dicts whose `content`
is a string or a list of parts (`{"type": "text", "text": ...}`); assistant messages may
carry `tool_calls` (`[{"id", "type": "function", "function": {"name", "arguments"}}]`);
`tools` is the list of tool definitions (`{"type": "function", "function": {"name", ...}}`);
`request` is the whole request body (for `prediction`, `response_format`, `functions`,
`tool_choice`). The gateway translates Anthropic requests into this form and back.
Where in it a model reads text is `policies.texts`' business: `Exchange.texts()` and friends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from policies import texts as where
from policies.counters import Tally
from policies.texts import Path, Run, Text, Visit


class Verdict(StrEnum):
    """What a policy, or the whole chain, decided."""

    ALLOW = "allow"
    BLOCK = "block"
    REDACT = "redact"
    ESCALATE = "escalate"


class Phase(StrEnum):
    """When a policy runs: on the request before the upstream call, or on the response."""

    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class DataPolicy:
    """A provider target's data-handling promises."""

    zero_data_retention: bool = False
    training_opt_out: bool = False
    retention_days: int | None = None


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: `{env: VAR}` or `{store: name}`. Never the value itself."""

    env: str | None = None
    store: str | None = None

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"store:{self.store}"


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream provider target from `providers.targets[]`."""

    id: str
    provider: str
    model: str
    base_url: str | None = None
    secret_key_ref: SecretRef | None = None
    api_key_header: str = "Authorization"
    api_key_prefix: str = "Bearer "
    format: str = "openai"  # "openai" | "anthropic": the wire format the upstream speaks
    data_policy: DataPolicy = field(default_factory=DataPolicy)
    deployment: str | None = None  # azure-openai: the deployment name in the URL (default: `model`)
    api_version: str | None = None  # azure-openai: the `api-version` query parameter
    region: str | None = None  # bedrock: the AWS region (endpoint host and SigV4 scope)
    responses_native: bool = False  # openai, azure-openai: /v1/responses passed through as Responses (`responses_api`)


@dataclass(slots=True)
class PolicyResult:
    """One policy's decision on one phase of one request.

    Treat it as immutable. It is not a frozen dataclass because one is built per policy and
    phase of every request, and a frozen one costs three times as much to build (1.2 us).
    """

    policy: str
    phase: Phase
    verdict: Verdict
    reason_code: str = "passed"
    message: str = ""
    redactions: int = 0
    latency_ms: float = 0.0
    error: str | None = None  # set when the policy raised instead of deciding

    def as_dict(self) -> dict[str, Any]:
        d = {  # `_value_`: the plain string, without Enum's (slow) `value` descriptor
            "policy": self.policy,
            "phase": self.phase._value_,
            "verdict": self.verdict._value_,
            "reason_code": self.reason_code,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.message:
            d["message"] = self.message
        if self.redactions:
            d["redactions"] = self.redactions
        if self.error:
            d["error"] = self.error
        return d


# The application's own messages (its instructions), as opposed to what users and tools wrote.
INSTRUCTION_ROLES = frozenset({"system", "developer"})


# Tool definitions (with legacy functions and a response JSON schema) of up to this many bytes of
# JSON are remembered by policies (see `Exchange.definitions_key`).
DEFINITIONS_KEY_MAX = 256 * 1024
_UNKNOWN: Any = object()


def _header(name: str) -> property:
    """A read-only property: the request header `name` (lower-cased), None when absent."""

    def value(self: Exchange) -> str | None:
        return self.headers.get(name)

    return property(value, doc=f"The {name} request header (None when absent).")


@dataclass(slots=True)
class Exchange:
    """The mutable working copy of one request as it passes the chain.

    Input-phase policies read every text a model reads (`texts()`: the conversation;
    `definition_texts()`: tools, functions, response schema) and may rewrite them where they
    stand (`map_texts`), and narrow `targets` (data routing). Output-phase policies read and may
    rewrite the answer's texts of one choice (`response_texts()` / `map_response`): its
    `response_text`, `response_refusal`, `response_tool_calls` (rewritten in place) and the
    strings of `response_fields` (a rewritten field gets a new value there).
    """

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    targets: list[Target] = field(default_factory=list)
    max_tokens: int | None = None
    request: dict[str, Any] = field(default_factory=dict)  # the canonical body: prediction, response_format, ...
    response_text: str = ""
    response_refusal: str = ""
    response_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # The answer's other fields, by name (e.g. `reasoning_content`, `annotations`): every string in
    # them is checked, and a rewritten field is stored back here as a new value.
    response_fields: dict[str, Any] = field(default_factory=dict)
    input_tokens: int = 0  # usage, known after the upstream answered
    output_tokens: int = 0
    notes: dict[str, Any] = field(default_factory=dict)  # per-request scratch space of policies
    tally: Tally = field(default_factory=Tally)  # counters reserved for this request (policies.counters)
    _texts: list[Text] | None = field(default=None, init=False, repr=False)
    _definition_texts: list[Text] | None = field(default=None, init=False, repr=False)
    _definitions_key: Any = field(default=_UNKNOWN, init=False, repr=False)
    _plain: bool = field(default=False, init=False, repr=False)  # `_texts` came from `plain_texts`
    _joined: str | None = field(default=None, init=False, repr=False)
    _runs: list[Run] | None = field(default=None, init=False, repr=False)

    user_id = _header("x-user-id")  # rbac, spend-limit per user
    agent_id = _header("x-agent-id")  # agents: limits, spend-limit per agent
    user_role = _header("x-user-role")  # rbac
    session_id = _header("x-session-id")  # agent-firewall's actions per session

    # --- the request's texts ------------------------------------------------------------
    def texts(self) -> list[Text]:
        """(where, role, text) of every text of the conversation, in order (see `policies.texts`).

        The messages' content (strings, text and refusal parts, file names), their `name`,
        `refusal`, tool calls (name, and every string of the JSON `arguments`) and legacy
        `function_call`; the request's `prediction`, `tool_choice` name and fields kt does not
        know (role None). Built once and shared by the policies of the chain; `map_texts`
        renews it. Code that changes the request otherwise calls `forget_texts()`.
        """
        found = self._texts
        if found is None:
            found = where.plain_texts(self.messages)  # the usual request: no walk
            self._plain = found is not None
            if found is None:
                found = where.collect(self._visit_messages)
            if len(self.request) > 2:  # beyond model and messages
                found += where.collect(self._visit_extras)
            self._texts = found
        return found

    def part_runs(self) -> list[Run]:
        """The messages whose content has two or more text parts: the texts the model reads as one
        (`policies.texts.part_runs`). Built once, renewed by `map_texts`; none when every message's
        content is a string (no walk)."""
        runs = self._runs
        if runs is None:
            self.texts()
            runs = self._runs = [] if self._plain else where.part_runs(self.messages)
        return runs

    def _visit_messages(self, visit: Visit) -> None:
        where.visit_messages(self.messages, visit)

    def _visit_extras(self, visit: Visit) -> None:
        where.visit_request_extras(self.request, visit)

    def definition_texts(self) -> list[Text]:
        """(where, None, text) of every text the application defines: tools, legacy functions, response schema."""
        found = self._definition_texts
        if found is None:
            found = self._definition_texts = where.collect(self._visit_definitions)
        return found

    def _visit_definitions(self, visit: Visit) -> None:
        where.visit_definitions(self.tools, self.request, visit)

    def definitions_key(self) -> bytes | None:
        """The definitions as JSON: what policies remember their findings by; b"" when there are none,
        None when they are too large to remember."""
        key = self._definitions_key
        if key is _UNKNOWN:
            request = self.request
            if self.tools or (request and (request.get("functions") or request.get("response_format"))):
                key = where.definitions_key(self.tools, request, DEFINITIONS_KEY_MAX)
            else:
                key = b""
            self._definitions_key = key
        return key

    def definitions_joined(self, joiner: str) -> str:
        """Every text of the definitions joined by `joiner`: what a policy scans first, in one go, when
        its findings in the definitions are not remembered (built once)."""
        joined = self._joined
        if joined is None:
            joined = self._joined = joiner.join(t for _, _, t in self.definition_texts())
        return joined

    def iter_texts(self) -> Iterator[str]:
        """Every text of the conversation, in order (without the definitions)."""
        for _, _, text in self.texts():
            yield text

    def map_texts(self, fn: Callable[[Path, Any, str], str], conversation: bool = True,
                  definitions: bool = False) -> None:
        """Put `fn(where, role, text)` in place of every text of the conversation and/or the definitions."""
        if conversation:  # the texts as they are now, listed in the same pass
            texts = self._texts
            if texts is not None and self._plain:
                texts = where.map_plain(texts, self.messages, fn)
            else:
                texts = where.collect(self._visit_messages, fn)
            if len(self.request) > 2:
                texts += where.collect(self._visit_extras, fn)
            self._texts = texts
            self._runs = None
        if definitions:
            self._definition_texts = where.collect(self._visit_definitions, fn)
            self._definitions_key = _UNKNOWN
            self._joined = None

    def forget_texts(self) -> None:
        """Drop what `texts()` and the definitions' texts and key remembered (call after changing the request)."""
        self._texts = self._definition_texts = self._joined = self._runs = None
        self._definitions_key = _UNKNOWN

    def tool_calls(self) -> Iterator[dict[str, Any]]:
        """Tool calls present in the request's assistant messages."""
        for message in self.messages:
            yield from message.get("tool_calls") or ()

    # --- the answer's texts (one choice) -----------------------------------------------
    def response_texts(self, calls_only: bool = False) -> list[Text]:
        """(where, "assistant", text) of the answer: content, refusal, each tool call's name and arguments,
        every string of its other fields."""
        return where.collect(lambda visit: self.map_response(visit, calls_only))

    def map_response(self, fn: Callable[[Path, Any, str], str], calls_only: bool = False) -> None:
        """Put `fn(where, role, text)` in place of every text of the answer (tool calls rewritten in place)."""
        if not calls_only:
            if self.response_text:
                self.response_text = fn(("content",), "assistant", self.response_text)
            if self.response_refusal:
                self.response_refusal = fn(("refusal",), "assistant", self.response_refusal)
            fields = self.response_fields
            for key in fields:  # values replaced, keys kept: iterating is safe
                value = fields[key]
                new = where.visit_answer_fields(value, (key,), fn)
                if new is not value:
                    fields[key] = new
        for k, call in enumerate(self.response_tool_calls):
            where.visit_call(call, ("tool_calls", k), "assistant", fn)


@dataclass(slots=True)
class ChainOutcome:
    """What the chain decided for one phase (treat it as immutable; not frozen for speed, see PolicyResult).

    `verdict` is BLOCK when any policy blocked (or errored under fail-mode block),
    REDACT when something was redacted, ESCALATE when a policy escalated, else ALLOW.
    `policy` and `reason_code` name the decisive policy (the blocker, or the first
    that redacted/escalated); `reason_code` is "all_policies_passed" when all allowed.
    """

    verdict: Verdict
    reason_code: str
    results: tuple[PolicyResult, ...] = ()
    policy: str | None = None
    message: str = ""
    redactions: int = 0
    policy_error: bool = False  # a policy raised (see `fail_mode`)

    @property
    def blocked(self) -> bool:
        return self.verdict is Verdict.BLOCK
