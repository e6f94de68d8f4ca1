"""spend-limit and the price table: estimates, daily budget, per-request cap, recording."""

from __future__ import annotations

import pytest

from policies.chain import Chain
from policies.kinds.spend_limit import SpendLimit
from policies.model import Target, Verdict
from policies.pricing import cost_usd, price_for
from policies.state import PolicyState
from tests.kindutil import run_input, user


def test_price_table_lookup() -> None:
    assert price_for("gpt-4o-mini-2024-07-18") == price_for("gpt-4o-mini")
    assert price_for("gpt-4o-mini").input_per_mtok == 0.15  # longest prefix, not gpt-4o
    assert price_for("claude-sonnet-4-20250514").output_per_mtok == 15.0
    assert price_for("openai/GPT-4o").input_per_mtok == 2.5
    assert price_for("my-local-llama") is None
    assert cost_usd("my-local-llama", 10**6, 10**6) == 0.0
    assert cost_usd("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(12.5)


def test_price_overrides() -> None:
    overrides = {"my-local-llama": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
    assert cost_usd("my-local-llama", 1_000_000, 500_000, overrides) == pytest.approx(2.0)
    assert cost_usd("gpt-4o-mini", 1_000_000, 0, {"gpt-4o": {"input_per_mtok": 9, "output_per_mtok": 9}}) == (
        pytest.approx(0.15)
    )


def answered(policy: SpendLimit, model: str, input_tokens: int, output_tokens: int, **kw: object):
    ex = user("hi", model=model, **kw)
    ex.input_tokens, ex.output_tokens = input_tokens, output_tokens
    return Chain((policy,)).run_output(ex)


def answered_after_input(policy: SpendLimit, ex, input_tokens: int, output_tokens: int):
    """One exchange through both phases: the input's reserved estimate is settled by the output."""
    assert run_input(policy, ex).verdict is Verdict.ALLOW
    ex.input_tokens, ex.output_tokens = input_tokens, output_tokens
    return Chain((policy,)).run_output(ex)


def test_output_records_spend_and_daily_budget_blocks() -> None:
    state = PolicyState()
    policy = SpendLimit({"max_daily_usd": 1.0}, state)
    answered_after_input(policy, user("hi", model="gpt-4o"), 100_000, 50_000)  # 0.25 + 0.5
    assert state.spent_today("spend-limit:global") == pytest.approx(0.75)
    answered_after_input(policy, user("hi", model="gpt-4o"), 100_000, 0)
    outcome = run_input(policy, user("hi", model="gpt-4o"))
    assert outcome.blocked and outcome.reason_code == "budget_exceeded"


def test_estimate_counts_max_tokens() -> None:
    state = PolicyState()
    state.add_spend("spend-limit:global", 0.9)
    policy = SpendLimit({"max_daily_usd": 1.0}, state)
    assert run_input(policy, user("hi", model="gpt-4o", max_tokens=1000)).verdict is Verdict.ALLOW  # +0.01
    assert run_input(policy, user("hi", model="gpt-4o", max_tokens=20_000)).blocked  # +0.20


def test_max_request_usd() -> None:
    policy = SpendLimit({"max_request_usd": 0.05}, PolicyState())
    assert run_input(policy, user("x" * 4000, model="gpt-4o", max_tokens=1000)).verdict is Verdict.ALLOW
    outcome = run_input(policy, user("x" * 4000, model="gpt-4o", max_tokens=10_000))
    assert outcome.blocked and outcome.reason_code == "budget_exceeded" and "max_request_usd" in outcome.message


def test_estimate_uses_dearest_target() -> None:
    policy = SpendLimit({"max_request_usd": 0.05}, PolicyState())
    targets = [Target("cheap", "openai", "gpt-4o-mini"), Target("dear", "anthropic", "claude-opus-4")]
    assert run_input(policy, user("hi", model="support", targets=targets, max_tokens=1000)).blocked  # 0.075


def test_budget_per_user() -> None:
    state = PolicyState()
    policy = SpendLimit({"max_daily_usd": 0.5, "per": "user"}, state)
    answered(policy, "gpt-4o", 0, 100_000, headers={"x-user-id": "ann"})  # 1.0
    assert run_input(policy, user("hi", model="gpt-4o", headers={"x-user-id": "ann"})).blocked
    assert run_input(policy, user("hi", model="gpt-4o", headers={"x-user-id": "bob"})).verdict is Verdict.ALLOW


def test_config_prices_and_unknown_model() -> None:
    state = PolicyState()
    priced = SpendLimit({"prices": {"llama": {"input_per_mtok": 10, "output_per_mtok": 10}}}, state)
    answered(priced, "llama", 100_000, 0)
    assert state.spent_today("spend-limit:global") == pytest.approx(1.0)
    outcome = answered(SpendLimit({}, state), "llama", 100_000, 0)
    assert outcome.verdict is Verdict.ALLOW and outcome.results[0].reason_code == "price_unknown"
    assert state.spent_today("spend-limit:global") == pytest.approx(1.0)


def test_no_usage_no_record() -> None:
    state = PolicyState()
    answered(SpendLimit({}, state), "gpt-4o", 0, 0)
    assert state.spent_today("spend-limit:global") == 0.0


def test_streamed_response_recorded_at_finish() -> None:
    state = PolicyState()
    ex = user("hi", model="gpt-4o")
    guard = Chain((SpendLimit({"max_daily_usd": 5}, state),)).stream_guard(ex)
    assert guard.feed("hello") == ("hello", None)
    ex.input_tokens, ex.output_tokens = 1000, 1000
    assert guard.finish().verdict is Verdict.ALLOW
    assert state.spent_today("spend-limit:global") == pytest.approx(0.0125)


def test_usage_counted_once_per_exchange() -> None:
    state = PolicyState()
    chain = Chain((SpendLimit({}, state),))
    ex = user("hi", model="gpt-4o")
    ex.input_tokens, ex.output_tokens = 1000, 1000
    for _ in range(3):  # e.g. once per choice
        chain.run_output(ex)
    assert state.spent_today("spend-limit:global") == pytest.approx(0.0125)


def test_estimate_is_reserved_so_two_racing_requests_cannot_both_take_the_last_dollar() -> None:
    state = PolicyState()
    state.add_spend("spend-limit:global", 0.985)
    policy = SpendLimit({"max_daily_usd": 1.0}, state)
    first, second = user("hi", model="gpt-4o", max_tokens=1000), user("hi", model="gpt-4o", max_tokens=1000)
    assert run_input(policy, first).verdict is Verdict.ALLOW  # reserves ~$0.01: 0.995 held
    assert run_input(policy, second).blocked  # before the first one answered
    assert state.spent_today("spend-limit:global") == pytest.approx(0.995, abs=1e-4)


def test_reservation_is_settled_by_the_actual_cost_and_given_back_on_a_block() -> None:
    from policies.kinds.dlp_filter import DlpFilter

    state = PolicyState()
    policy = SpendLimit({"max_daily_usd": 1.0}, state)
    answered_after_input(policy, user("hi", model="gpt-4o", max_tokens=10_000), 1000, 0)  # est. 0.1, cost 0.0025
    assert state.spent_today("spend-limit:global") == pytest.approx(0.0025)
    chain = Chain((policy, DlpFilter({"blocked_terms": ["bluebird"], "action": "block"}, state)))
    assert chain.run_input(user("bluebird", model="gpt-4o", max_tokens=10_000)).blocked
    assert state.spent_today("spend-limit:global") == pytest.approx(0.0025)  # the block gave the estimate back


def test_prices_are_resolved_when_the_config_compiles() -> None:
    """A config's price table (built-ins + `spend-limit.prices`) is built once at load, and costs from it
    equal costs from the raw overrides (issue 14: no digging in the document per request)."""
    from policies import load_config_bytes
    from policies.pricing import PriceTable

    overrides = {"demo-model": {"input_per_mtok": 2, "output_per_mtok": 4}}
    config = load_config_bytes(
        b"pack: {name: p, version: 1.0.0, enabled: true}\n"
        b"providers:\n  targets:\n    - {id: demo, provider: mock, model: demo-model}\n"
        b"policies:\n  chain: [spend-limit]\n"
        b"policy:\n  spend-limit: {max_daily_usd: 5, prices: {demo-model: {input_per_mtok: 2, output_per_mtok: 4}}}\n")
    assert isinstance(config.prices, PriceTable)
    for model in ("demo-model", "gpt-4o-mini-2024-07-18", "nothing-known"):
        assert cost_usd(model, 1_000_000, 500_000, config.prices) == cost_usd(model, 1_000_000, 500_000, overrides)
    assert cost_usd("demo-model", 1_000_000, 500_000, config.prices) == pytest.approx(4.0)
