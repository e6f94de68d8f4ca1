"""agent-firewall: tool allow/block globs on definitions and calls, per-session action limits."""

from __future__ import annotations

from policies.chain import Chain
from policies.counters import Claim
from policies.kinds.agent_firewall import AgentFirewall
from policies.model import Exchange, Verdict
from policies.state import PolicyState
from tests.kindutil import run_input, user


def fw(state: PolicyState | None = None, **options: object) -> AgentFirewall:
    return AgentFirewall(dict(options), state or PolicyState())


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {}}}


def call(name: str) -> dict:
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": "{}"}}


def req(*tools: str, session: str | None = "s1") -> Exchange:
    return user("hi", tools=[tool(t) for t in tools], headers={"x-session-id": session} if session else {})


def respond(policy: AgentFirewall, ex: Exchange, *calls: str):
    ex.response_tool_calls = [call(c) for c in calls]
    return Chain((policy,)).run_output(ex)


def test_blocked_tool_definition() -> None:
    outcome = run_input(fw(blocked_tools=["shell_*"]), req("search", "shell_exec"))
    assert outcome.blocked and outcome.reason_code == "tool_blocked" and "shell_exec" in outcome.message
    assert run_input(fw(blocked_tools=["shell_*"]), req("Shell_Exec")).blocked  # case does not evade
    assert run_input(fw(blocked_tools=["shell_*"]), req("search")).verdict is Verdict.ALLOW


def test_allowed_tools() -> None:
    policy = fw(allowed_tools=["search", "create_*"])
    assert run_input(policy, req("search", "create_ticket")).verdict is Verdict.ALLOW
    outcome = run_input(policy, req("search", "delete_ticket"))
    assert outcome.reason_code == "tool_not_allowed"
    assert run_input(fw(allowed_tools=[]), req("search")).reason_code == "tool_not_allowed"


def test_blocked_wins_over_allowed() -> None:
    policy = fw(allowed_tools=["*"], blocked_tools=["rm"])
    assert run_input(policy, req("rm")).reason_code == "tool_blocked"


def test_request_tool_calls_and_response_tool_calls() -> None:
    policy = fw(blocked_tools=["transfer_funds"])
    ex = req()
    ex.messages.append({"role": "assistant", "content": None, "tool_calls": [call("transfer_funds")]})
    assert run_input(policy, ex).reason_code == "tool_blocked"
    outcome = respond(policy, req("search"), "transfer_funds")
    assert outcome.blocked and outcome.reason_code == "tool_blocked"
    assert respond(policy, req("search"), "search").verdict is Verdict.ALLOW


def test_anthropic_style_name_is_read() -> None:
    ex = user("hi", tools=[{"name": "shell_exec", "input_schema": {}}])
    assert run_input(fw(blocked_tools=["shell_exec"]), ex).blocked


def test_session_action_limit() -> None:
    state = PolicyState()
    policy = fw(state, max_actions_per_session=3)
    assert respond(policy, req("search"), "search", "search").verdict is Verdict.ALLOW
    outcome = respond(policy, req("search"), "search", "search")  # 2 + 2 > 3
    assert outcome.blocked and outcome.reason_code == "session_action_limit"
    assert respond(policy, req("search"), "search").verdict is Verdict.ALLOW  # exactly 3
    assert run_input(policy, req("search")).reason_code == "session_action_limit"  # at the limit
    assert run_input(policy, req()).verdict is Verdict.ALLOW  # no tools offered: no action possible
    assert run_input(policy, req("search", session="s2")).verdict is Verdict.ALLOW  # other session
    assert respond(policy, req("search", session=None), "search", "search", "search", "search").verdict is Verdict.ALLOW


def test_limit_survives_reload_through_shared_state() -> None:
    state = PolicyState()
    respond(fw(state, max_actions_per_session=1), req("search"), "search")
    assert run_input(fw(state, max_actions_per_session=1), req("search")).reason_code == "session_action_limit"


def test_idle_sessions_are_forgotten() -> None:
    state = PolicyState()
    state.reserve([Claim("agent-firewall:session:old", "session", 5)], now=1000.0)
    state.reserve([Claim("agent-firewall:session:new", "session", 1)], now=1000.0 + 90000)
    value = state.counters.value
    assert value("", "agent-firewall:session:old", "session", 1000.0 + 90000) == 0
    assert value("", "agent-firewall:session:new", "session", 1000.0 + 90000) == 1


def test_escalate_action() -> None:
    outcome = run_input(fw(blocked_tools=["x"], action="escalate"), req("x"))
    assert outcome.verdict is Verdict.ESCALATE and outcome.reason_code == "tool_blocked"
