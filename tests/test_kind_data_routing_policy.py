"""data-routing-policy: narrows targets to compliant ones; blocks when none is left."""

from __future__ import annotations

from policies.kinds.data_routing_policy import DataRoutingPolicy
from policies.model import DataPolicy, Target, Verdict
from policies.state import PolicyState
from tests.kindutil import run_input, user

ZDR = Target("zdr", "openai", "gpt-4o-mini", data_policy=DataPolicy(True, True, 0))
THIRTY = Target("thirty", "anthropic", "claude-sonnet-4", data_policy=DataPolicy(False, True, 30))
TRAINS = Target("trains", "openai-compatible", "llama", data_policy=DataPolicy(False, False, 7))
UNSTATED = Target("unstated", "openai", "gpt-4o", data_policy=DataPolicy())
ALL = [ZDR, THIRTY, TRAINS, UNSTATED]


def route(**options: object):
    ex = user("hi", targets=list(ALL))
    outcome = run_input(DataRoutingPolicy(dict(options), PolicyState()), ex)
    return outcome, [t.id for t in ex.targets]


def test_require_zero_data_retention() -> None:
    outcome, kept = route(require_zero_data_retention=True)
    assert outcome.verdict is Verdict.ALLOW and kept == ["zdr"]


def test_require_no_training() -> None:
    assert route(require_no_training=True)[1] == ["zdr", "thirty"]


def test_max_retention_days() -> None:
    assert route(max_retention_days=30)[1] == ["zdr", "thirty", "trains"]  # unstated retention fails
    assert route(max_retention_days=7)[1] == ["zdr", "trains"]
    assert route(max_retention_days=0)[1] == ["zdr"]


def test_no_requirements_keep_everything() -> None:
    outcome, kept = route()
    assert outcome.verdict is Verdict.ALLOW and kept == [t.id for t in ALL]


def test_blocks_when_none_is_left() -> None:
    ex = user("hi", targets=[THIRTY, TRAINS])
    outcome = run_input(DataRoutingPolicy({"require_zero_data_retention": True}, PolicyState()), ex)
    assert outcome.blocked and outcome.reason_code == "no_compliant_provider"
    assert "thirty (no zero data retention)" in outcome.message
    assert [t.id for t in ex.targets] == ["thirty", "trains"]  # a block changes nothing


def test_no_targets_known_is_left_to_routing() -> None:
    assert run_input(DataRoutingPolicy({"require_no_training": True}, PolicyState()), user("hi")).verdict is (
        Verdict.ALLOW
    )


def test_log_provider_selection() -> None:
    outcome, _ = route(require_no_training=True, log_provider_selection=True)
    result = outcome.results[0]
    assert result.reason_code == "provider_selected" and result.verdict is Verdict.ALLOW
    assert result.message == "using zdr, thirty; dropped trains (may train on data), unstated (may train on data)"
