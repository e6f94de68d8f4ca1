"""Per-agent limits (`agents:`): daily cost budget, hourly request rate, usage recording."""

from __future__ import annotations

import pytest
from cerberus import Validator

from policies.agents import AGENT_SCHEMA, AGENTS_RULE, check_agent_limits, record_agent_usage
from policies.model import Verdict
from policies.state import PolicyState
from tests.kindutil import user

AGENTS = {"bot": {"max_cost_usd_per_day": 1.0, "max_requests_per_hour": 3}}
T0 = 1_800_000_000.0


def agent_ex(agent: str | None = "bot", model: str = "gpt-4o"):
    return user("hi", model=model, headers={"x-agent-id": agent} if agent else {})


def test_rate_limit_with_retry_after() -> None:
    state = PolicyState()
    for i in range(3):
        assert check_agent_limits(AGENTS, agent_ex(), state, now=T0 + i) is None
    decision = check_agent_limits(AGENTS, agent_ex(), state, now=T0 + 10)
    assert decision is not None and decision.verdict is Verdict.BLOCK
    assert decision.reason_code == "agent_rate_limited" and decision.retry_after_s == 3590
    assert check_agent_limits(AGENTS, agent_ex(), state, now=T0 + 3601) is None  # the first one aged out


def test_budget() -> None:
    state = PolicyState()
    ex = agent_ex()
    ex.input_tokens, ex.output_tokens = 200_000, 50_000  # 0.5 + 0.5
    assert record_agent_usage(AGENTS, ex, state, now=T0) == pytest.approx(1.0)
    decision = check_agent_limits(AGENTS, agent_ex(), state, now=T0 + 1)
    assert decision is not None and decision.reason_code == "agent_budget_exceeded"
    assert check_agent_limits(AGENTS, agent_ex(), state, now=T0 + 86400) is None  # next day


def test_unlisted_or_anonymous_agents_are_not_limited() -> None:
    state = PolicyState()
    for _ in range(5):
        assert check_agent_limits(AGENTS, agent_ex("other"), state) is None
        assert check_agent_limits(AGENTS, agent_ex(None), state) is None
    ex = agent_ex("other")
    ex.input_tokens = 10**6
    assert record_agent_usage(AGENTS, ex, state) == 0.0


def test_usage_with_price_overrides() -> None:
    state = PolicyState()
    ex = agent_ex(model="llama")
    ex.output_tokens = 1_000_000
    prices = {"llama": {"input_per_mtok": 0, "output_per_mtok": 2}}
    assert record_agent_usage(AGENTS, ex, state, prices, now=T0) == pytest.approx(2.0)
    assert check_agent_limits(AGENTS, agent_ex(), state, now=T0).reason_code == "agent_budget_exceeded"


def test_schema() -> None:
    assert Validator(AGENT_SCHEMA).validate({"max_cost_usd_per_day": 25.0, "max_requests_per_hour": 500})
    assert not Validator(AGENT_SCHEMA).validate({"max_requests_per_hour": 0})
    assert not Validator(AGENT_SCHEMA).validate({"max_responses_per_hour": 5})
    section = Validator({"agents": AGENTS_RULE})
    assert section.validate({"agents": AGENTS})
    assert not section.validate({"agents": {"bad id!": {}}})
