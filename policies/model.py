"""Values that travel between the parts: verdicts, policy results, the per-request exchange.

This module is the contract between `policies/` (which decides) and `gateway/` (which
carries traffic). It imports nothing of ours and nothing outside the standard library.

Canonical request form: every request reaches the chain in OpenAI chat format, whatever
route it came in on. `messages` is a list of `{"role", "content"}` dicts whose `content`
is a string or a list of parts (`{"type": "text", "text": ...}`); assistant messages may
carry `tool_calls` (`[{"id", "type": "function", "function": {"name", "arguments"}}]`);
`tools` is the list of tool definitions (`{"type": "function", "function": {"name", ...}}`).
The gateway translates Anthropic requests into this form and back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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


@dataclass(slots=True)
class Exchange:
    """The mutable working copy of one request as it passes the chain.

    Input-phase policies may rewrite `messages` (redaction) and narrow `targets`
    (data routing). Output-phase policies read and may rewrite `response_text`
    and read `response_tool_calls`.
    """

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    targets: list[Target] = field(default_factory=list)
    max_tokens: int | None = None
    response_text: str = ""
    response_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int = 0  # usage, known after the upstream answered
    output_tokens: int = 0
    notes: dict[str, Any] = field(default_factory=dict)  # per-request scratch space of policies

    @property
    def user_id(self) -> str | None:
        return self.headers.get("x-user-id")

    @property
    def agent_id(self) -> str | None:
        return self.headers.get("x-agent-id")

    @property
    def user_role(self) -> str | None:
        return self.headers.get("x-user-role")

    @property
    def session_id(self) -> str | None:
        return self.headers.get("x-session-id")

    def iter_texts(self) -> Iterator[str]:
        """Every piece of text of the request's messages, in order."""
        for _, text in self.role_texts():
            yield text

    def role_texts(self) -> Iterator[tuple[Any, str]]:
        """(role, text) for every piece of text of the request's messages, in order."""
        for message in self.messages:
            role = message.get("role")
            content = message.get("content")
            if isinstance(content, str):
                yield role, content
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        yield role, part["text"]

    def map_texts(self, fn: Callable[[str], str]) -> None:
        """Replace every piece of text of the request's messages by `fn(text)`."""
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = fn(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = fn(part["text"])

    def tool_calls(self) -> Iterator[dict[str, Any]]:
        """Tool calls present in the request's assistant messages."""
        for message in self.messages:
            yield from message.get("tool_calls") or ()


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
