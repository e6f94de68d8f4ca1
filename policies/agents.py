"""Per-agent limits from the top-level `agents:` section.

```yaml
agents:
  support-bot: {max_cost_usd_per_day: 25.0, max_requests_per_hour: 500}
```

An agent is named by the request's `X-Agent-ID` header (`Exchange.agent_id`); requests
without it, or naming an agent that is not listed, are not limited. Counters live in
the `PolicyState` (keys `agent:<id>`), so they survive config reloads. The gateway calls
`check_agent_limits` before the input chain and `record_agent_usage` once usage is known.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from policies.kinds.base import Decision
from policies.model import Exchange, Verdict
from policies.pricing import cost_usd
from policies.state import PolicyState

# Cerberus schema of one agent's block (`agents.<agent-id>`).
AGENT_SCHEMA: dict[str, Any] = {
    "max_cost_usd_per_day": {"type": "number", "min": 0,
                             "meta": {"description": "Spend in USD per UTC day after which the agent is blocked."}},
    "max_requests_per_hour": {"type": "integer", "min": 1,
                              "meta": {"description": "Requests per rolling hour; past it 429 with Retry-After."}},
    "description": {"type": "string", "maxlength": 2000, "meta": {"description": "What the agent is."}},
}
# Cerberus rule of the whole `agents` section.
AGENTS_RULE: dict[str, Any] = {
    "type": "dict",
    "keysrules": {"type": "string", "regex": r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}"},
    "valuesrules": {"type": "dict", "schema": AGENT_SCHEMA},
    "meta": {"description": "Per-agent limits, keyed by the agent id the client sends in X-Agent-ID."},
}


def _key(agent_id: str) -> str:
    return f"agent:{agent_id}"


def check_agent_limits(
    agents: Mapping[str, Mapping[str, Any]], ex: Exchange, state: PolicyState, now: float | None = None
) -> Decision | None:
    """Decide whether `ex.agent_id` may send this request; count it when it may.

    Returns None (allowed; the request is recorded in the agent's hourly window) or a BLOCK
    `Decision`: `agent_budget_exceeded` when the agent's spend today (UTC) has reached
    `max_cost_usd_per_day`, `agent_rate_limited` when it sent `max_requests_per_hour`
    requests in the last hour; the latter carries `retry_after_s` (answer 429 + Retry-After).
    Call once per request, before the input chain.
    """
    agent_id = ex.agent_id
    limits = agents.get(agent_id) if agent_id else None
    if not limits:
        return None
    now = now or time.time()
    key = _key(agent_id)
    budget = limits.get("max_cost_usd_per_day")
    if budget is not None:
        spent = state.spent_today(key, now)
        if spent >= budget:
            message = f"agent '{agent_id}' reached max_cost_usd_per_day ${budget:g} (spent ${spent:.4f} today)"
            return Decision(Verdict.BLOCK, "agent_budget_exceeded", message)
    rate = limits.get("max_requests_per_hour")
    if rate is not None and state.requests_in_last_hour(key, now) >= rate:
        oldest = state.request_times[key][0]
        retry_after = max(1, math.ceil(oldest + 3600 - now))
        message = f"agent '{agent_id}' reached max_requests_per_hour ({rate})"
        return Decision(Verdict.BLOCK, "agent_rate_limited", message, retry_after_s=retry_after)
    state.requests_in_last_hour(key, now, record=True)
    return None


def record_agent_usage(
    agents: Mapping[str, Mapping[str, Any]],
    ex: Exchange,
    state: PolicyState,
    prices: Mapping[str, Mapping[str, Any]] | None = None,
    now: float | None = None,
) -> float:
    """Add the cost of `ex` (its model, `ex.input_tokens`, `ex.output_tokens`) to its agent's day.

    Call once per answered request, after usage is known. `prices` are the config's price
    overrides (`policy.spend-limit.prices`), if any. Returns the cost counted (0.0 when the
    agent is not listed or the model has no price).
    """
    agent_id = ex.agent_id
    if not agent_id or agent_id not in agents:
        return 0.0
    cost = cost_usd(ex.model, ex.input_tokens, ex.output_tokens, prices)
    if cost:
        state.add_spend(_key(agent_id), cost, now)
    return cost
