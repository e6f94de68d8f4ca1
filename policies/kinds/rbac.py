"""rbac: required identity headers, and which tools each role may use.

The role is the `X-User-Role` header (else `default_role`). A role's `allowed_tools`
(globs; when present, anything else is denied) and `denied_tools` (globs; these win) are
checked against the tools a request offers, the tool calls in its history, and the tool
calls in the response. Glob matching ignores case.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from policies.kinds import register
from policies.kinds.base import Decision, Policy, compile_globs, tool_name
from policies.model import Exchange, Phase, Verdict
from policies.rules import flag, meta, option, strings
from policies.state import PolicyState

_HEADER = {"type": "string", "regex": r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"}


@register
class Rbac(Policy):
    kind = "rbac"
    phases = frozenset({Phase.INPUT, Phase.OUTPUT})
    schema = {
        "deny_if_missing": option("list", "Headers every request must carry.", default=["X-User-ID"], schema=_HEADER),
        "require_auth": flag("Block requests whose role (X-User-Role, else default_role) is not in roles.", False),
        "default_role": option("string", "Role of requests without X-User-Role.", empty=False),
        "roles": {
            "type": "dict",
            "keysrules": {"type": "string", "empty": False},
            "valuesrules": {"type": "dict", "schema": {
                "allowed_tools": strings("Tools (globs) the role may use; others denied."),
                "denied_tools": strings("Tools (globs) the role may not use; these win."),
            }},
            "meta": meta("Tool rules per role name."),
        },
    }

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        self.required = tuple(h.lower() for h in options.get("deny_if_missing", ["X-User-ID"]))
        self.require_auth = options.get("require_auth", False)
        self.default_role = options.get("default_role")
        self.roles = {
            name: (
                compile_globs(rules.get("allowed_tools") or []) if "allowed_tools" in rules else None,
                compile_globs(rules.get("denied_tools") or []),
                "allowed_tools" in rules,
            )
            for name, rules in (options.get("roles") or {}).items()
        }

    def _check_tools(self, role: str | None, names: Iterable[str]) -> Decision | None:
        if role not in self.roles:
            return None
        allowed, denied, has_allowlist = self.roles[role]
        for name in names:
            if (denied is not None and denied.fullmatch(name)) or (
                has_allowlist and (allowed is None or not allowed.fullmatch(name))
            ):
                return Decision(Verdict.BLOCK, "rbac_tool_denied", f"role '{role}' may not use tool '{name}'")
        return None

    def _role(self, ex: Exchange) -> str | None:
        return ex.user_role or self.default_role

    def check_input(self, ex: Exchange) -> Decision | None:
        for header in self.required:
            if not ex.headers.get(header, "").strip():
                return Decision(Verdict.BLOCK, "rbac_missing_header", f"required header '{header}' is missing")
        role = self._role(ex)
        if self.require_auth and role not in self.roles:
            why = f"role '{role}' is not configured" if role else "no role (X-User-Role) given"
            return Decision(Verdict.BLOCK, "rbac_unknown_role", why)
        names = [tool_name(t) for t in ex.tools] + [tool_name(c) for c in ex.tool_calls()]
        return self._check_tools(role, names)

    def check_output(self, ex: Exchange) -> Decision | None:
        return self._check_tools(self._role(ex), [tool_name(c) for c in ex.response_tool_calls])
