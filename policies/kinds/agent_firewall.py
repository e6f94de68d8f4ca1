"""agent-firewall: which tools an agent may be offered and call, and how many calls a session gets.

`blocked_tools` (globs) always win; when `allowed_tools` (globs) is given, any other tool
is refused. Both are checked on the tool definitions and the tool calls of the request,
and on the tool calls of the response. Glob matching ignores case. With
`max_actions_per_session`, the response tool calls of each `X-Session-ID` are counted
(requests without that header are not counted); a response that would go over the limit
is blocked, and so is a request offering tools in a session that has reached it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from policies.counters import Claim
from policies.kinds import register
from policies.kinds.base import Decision, Policy, compile_globs, tool_name
from policies.model import Exchange, Phase, Verdict
from policies.rules import choice, option, strings
from policies.state import PolicyState

_ALLOWED = "Tools (shell-style globs, case-insensitive) that may be offered and called; any other is refused."


@register
class AgentFirewall(Policy):
    kind = "agent-firewall"
    phases = frozenset({Phase.INPUT, Phase.OUTPUT})
    schema = {
        "allowed_tools": strings(_ALLOWED),
        "blocked_tools": strings("Tools (globs) always refused; they win over allowed_tools."),
        "max_actions_per_session": option(
            "integer", "Response tool calls allowed per X-Session-ID (unlimited when absent).", min=1),
        "action": choice(["block", "escalate"], "Verdict on a refused tool.", "block"),
    }

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        self.allowlist = "allowed_tools" in options
        self.allowed = compile_globs(options.get("allowed_tools") or [])
        self.blocked = compile_globs(options.get("blocked_tools") or [])
        self.max_actions = options.get("max_actions_per_session")
        self.verdict = Verdict.ESCALATE if options.get("action") == "escalate" else Verdict.BLOCK

    def _check(self, names: Iterable[str]) -> Decision | None:
        for name in names:
            if self.blocked is not None and self.blocked.fullmatch(name):
                return Decision(self.verdict, "tool_blocked", f"tool '{name}' is blocked")
            if self.allowlist and (self.allowed is None or not self.allowed.fullmatch(name)):
                return Decision(self.verdict, "tool_not_allowed", f"tool '{name}' is not in allowed_tools")
        return None

    def _limit(self) -> Decision:
        return Decision(
            self.verdict,
            "session_action_limit",
            f"session reached max_actions_per_session ({self.max_actions})",
        )

    def _key(self, session: str) -> str:
        return f"agent-firewall:session:{session}"

    def claims(self, ex: Exchange, phase: Phase) -> Sequence[Claim]:
        session = ex.session_id
        if not self.max_actions or not session:
            return ()
        if phase is Phase.INPUT:  # a session at its limit may not be offered tools
            return (Claim(self._key(session), "session", 0, self.max_actions, need=0),) if ex.tools else ()
        calls = ex.response_tool_calls
        if not calls or self._check([tool_name(c) for c in calls]) is not None:
            return ()
        return (Claim(self._key(session), "session", len(calls), self.max_actions),)

    def _reached(self, ex: Exchange) -> bool:
        session = ex.session_id
        result = ex.tally.results.get(self._key(session)) if self.max_actions and session else None
        return result is not None and not result.ok

    def check_input(self, ex: Exchange) -> Decision | None:
        decision = self._check([tool_name(t) for t in ex.tools] + [tool_name(c) for c in ex.tool_calls()])
        if decision is not None:
            return decision
        return self._limit() if ex.tools and self._reached(ex) else None

    def check_output(self, ex: Exchange) -> Decision | None:
        calls = ex.response_tool_calls
        decision = self._check([tool_name(c) for c in calls])
        if decision is not None or not calls:
            return decision
        return self._limit() if self._reached(ex) else None
