"""rbac: required headers, roles, tool allow/deny lists on requests and responses."""

from __future__ import annotations

from policies.kinds.rbac import Rbac
from policies.model import Verdict
from policies.state import PolicyState
from tests.kindutil import run_input, user

ROLES = {
    "viewer": {"allowed_tools": ["search", "get_*"]},
    "admin": {"denied_tools": ["drop_*"]},
    "locked": {"allowed_tools": []},
}


def rbac(**options: object) -> Rbac:
    return Rbac(dict(options), PolicyState())


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {}}}


def call(name: str) -> dict:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}}


def req(role: str | None = None, tools: tuple[str, ...] = (), user_id: str | None = "u1"):
    headers = {}
    if role:
        headers["x-user-role"] = role
    if user_id:
        headers["x-user-id"] = user_id
    return user("hi", headers=headers, tools=[tool(t) for t in tools])


def test_missing_header_blocks_by_default() -> None:
    outcome = run_input(rbac(), req(user_id=None))
    assert outcome.blocked and outcome.reason_code == "rbac_missing_header" and "x-user-id" in outcome.message
    assert run_input(rbac(), req()).verdict is Verdict.ALLOW


def test_deny_if_missing_is_case_insensitive_and_configurable() -> None:
    policy = rbac(deny_if_missing=["X-Tenant", "X-User-ID"])
    assert run_input(policy, req()).reason_code == "rbac_missing_header"
    ex = req()
    ex.headers["x-tenant"] = "acme"
    assert run_input(policy, ex).verdict is Verdict.ALLOW
    assert run_input(rbac(deny_if_missing=[]), req(user_id=None)).verdict is Verdict.ALLOW
    blank = req()
    blank.headers["x-user-id"] = "  "
    assert run_input(rbac(), blank).reason_code == "rbac_missing_header"


def test_allowed_tools_per_role() -> None:
    policy = rbac(roles=ROLES)
    assert run_input(policy, req("viewer", ("search", "get_ticket"))).verdict is Verdict.ALLOW
    outcome = run_input(policy, req("viewer", ("search", "delete_ticket")))
    assert outcome.blocked and outcome.reason_code == "rbac_tool_denied" and "delete_ticket" in outcome.message
    assert run_input(policy, req("viewer", ("GET_TICKET",))).verdict is Verdict.ALLOW  # globs ignore case
    assert run_input(policy, req("locked", ("search",))).blocked  # empty allow-list allows nothing


def test_denied_tools_win() -> None:
    policy = rbac(roles=ROLES)
    assert run_input(policy, req("admin", ("delete_ticket",))).verdict is Verdict.ALLOW
    assert run_input(policy, req("admin", ("drop_table",))).reason_code == "rbac_tool_denied"


def test_tool_calls_in_history_are_checked() -> None:
    ex = req("viewer")
    ex.messages.append({"role": "assistant", "content": None, "tool_calls": [call("delete_ticket")]})
    assert run_input(rbac(roles=ROLES), ex).reason_code == "rbac_tool_denied"


def test_response_tool_calls_are_checked() -> None:
    policy = rbac(roles=ROLES)
    ex = req("viewer", ("search",))
    ex.response_tool_calls = [call("delete_ticket")]
    outcome = policy.check_output(ex)
    assert outcome is not None and outcome.verdict is Verdict.BLOCK and outcome.reason_code == "rbac_tool_denied"
    ex.response_tool_calls = [call("search")]
    assert policy.check_output(ex) is None


def test_unknown_role_and_default_role() -> None:
    assert run_input(rbac(roles=ROLES), req("intern", ("anything",))).verdict is Verdict.ALLOW
    strict = rbac(roles=ROLES, require_auth=True)
    assert run_input(strict, req("intern")).reason_code == "rbac_unknown_role"
    assert run_input(strict, req()).reason_code == "rbac_unknown_role"
    assert run_input(strict, req("viewer")).verdict is Verdict.ALLOW
    default = rbac(roles=ROLES, default_role="viewer")
    assert run_input(default, req(None, ("delete_ticket",))).reason_code == "rbac_tool_denied"
