"""Per-agent limits from the top-level `agents:` section.

```yaml
agents:
  support-bot: {max_cost_usd_per_day: 25.0, max_requests_per_hour: 500}
```

An agent is named by the request's `X-Agent-ID` header (`Exchange.agent_id`); requests
without it, or naming an agent that is not listed, are not limited. Counters live in
the counter backend (keys `agents:spend:<id>` per UTC day, `agents:rate:<id>` per UTC hour),
so they survive config reloads and restarts. The gateway reserves `agent_claims` with the
chain's own before the input chain and adds `agent_usage` once usage is known.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from policies.counters import Claim, window_end
from policies.kinds.base import Decision
from policies.model import Exchange, Verdict
from policies.pricing import PriceTable, cost_usd
from policies.rules import meta, option
from policies.state import PolicyState

# Cerberus schema of one agent's block (`agents.<agent-id>`).
AGENT_SCHEMA: dict[str, Any] = {
    "max_cost_usd_per_day": option("number", "Spend in USD per UTC day after which the agent is blocked.", min=0),
    "max_requests_per_hour": option("integer", "Requests per rolling hour; past it 429 with Retry-After.", min=1),
    "description": option("string", "What the agent is.", maxlength=2000),
}
# Cerberus rule of the whole `agents` section.
AGENTS_RULE: dict[str, Any] = {
    "type": "dict",
    "keysrules": {"type": "string", "regex": r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}"},
    "valuesrules": {"type": "dict", "schema": AGENT_SCHEMA},
    "meta": meta("Per-agent limits, keyed by the agent id the client sends in X-Agent-ID."),
}


def agent_claims(agents: Mapping[str, Mapping[str, Any]], ex: Exchange) -> list[Claim]:
    """The counters `ex.agent_id`'s limits need before the input chain (none for an unlisted agent)."""
    agent_id = ex.agent_id
    limits = agents.get(agent_id) if agent_id else None
    if not limits:
        return []
    claims = []
    budget = limits.get("max_cost_usd_per_day")
    if budget is not None:
        claims.append(Claim(f"agents:spend:{agent_id}", "day", 0, budget, need=0))
    rate = limits.get("max_requests_per_hour")
    if rate is not None:
        claims.append(Claim(f"agents:rate:{agent_id}", "hour", 1, rate))
    return claims


def check_agent_limits(
    agents: Mapping[str, Mapping[str, Any]], ex: Exchange, state: PolicyState, now: float | None = None,
    namespace: str = "",
) -> Decision | None:
    """Decide whether `ex.agent_id` may send this request; count it when it may.

    Returns None (allowed; the request counts in the agent's hourly window) or a BLOCK
    `Decision`: `agent_budget_exceeded` when the agent's spend today (UTC) has reached
    `max_cost_usd_per_day`, `agent_rate_limited` when it sent `max_requests_per_hour`
    requests in this UTC hour; the latter carries `retry_after_s` (to the hour's end: answer
    429 + Retry-After). Call once per request, before the input chain. Reads the results the
    gateway reserved (`ex.tally`), else reserves `agent_claims` through `state` itself.
    """
    claims = agent_claims(agents, ex)
    if not claims:
        return None
    now = time.time() if now is None else now
    tally = ex.tally
    if any(c.key not in tally.results for c in claims):
        tally.record(claims, state.reserve(claims, namespace, now))
    agent_id = ex.agent_id
    limits = agents[agent_id]
    for claim in claims:
        result = tally.results[claim.key]
        if result.ok:
            continue
        if claim.window == "day":
            message = (f"agent '{agent_id}' reached max_cost_usd_per_day ${claim.limit:g} "
                       f"(spent ${result.value:.4f} today)")
            return Decision(Verdict.BLOCK, "agent_budget_exceeded", message)
        retry_after = max(1, math.ceil(window_end("hour", now) - now))
        message = f"agent '{agent_id}' reached max_requests_per_hour ({limits['max_requests_per_hour']})"
        return Decision(Verdict.BLOCK, "agent_rate_limited", message, retry_after_s=retry_after)
    return None


def agent_usage(
    agents: Mapping[str, Mapping[str, Any]], ex: Exchange,
    prices: Mapping[str, Mapping[str, Any]] | PriceTable | None = None,
) -> tuple[float, list[Claim]]:
    """(cost of `ex`, the claims that add it to its agent's day); (0.0, []) for an unlisted agent."""
    agent_id = ex.agent_id
    if not agent_id or agent_id not in agents:
        return 0.0, []
    cost = cost_usd(ex.model, ex.input_tokens, ex.output_tokens, prices)
    return cost, ([Claim(f"agents:spend:{agent_id}", "day", cost)] if cost else [])


def record_agent_usage(
    agents: Mapping[str, Mapping[str, Any]],
    ex: Exchange,
    state: PolicyState,
    prices: Mapping[str, Mapping[str, Any]] | PriceTable | None = None,
    now: float | None = None,
    namespace: str = "",
) -> float:
    """Add the cost of `ex` (its model, `ex.input_tokens`, `ex.output_tokens`) to its agent's day.

    Call once per answered request, after usage is known. `prices` are the config's price
    overrides (`policy.spend-limit.prices`), if any. Returns the cost counted (0.0 when the
    agent is not listed or the model has no price).
    """
    cost, claims = agent_usage(agents, ex, prices)
    if claims:
        state.reserve(claims, namespace, now)
    return cost
