"""spend-limit: a daily budget and a per-request cap in USD.

On input, estimates the request's cost (characters / 4 input tokens plus `max_tokens`
output tokens, at the price of the dearest model among the requested model and its
targets) and blocks with `budget_exceeded` when it exceeds `max_request_usd` or would
take today's spend (UTC day) over `max_daily_usd`. The estimate is *reserved* (checked and
added in one atomic step, so two requests racing for the last dollar cannot both pass); on
output, once the gateway has set `ex.input_tokens`/`ex.output_tokens`, the actual cost
replaces it, once per exchange. A request that ends without usage gives its reservation
back. Counters live in the counter backend (`policies.counters`), so a reload does not reset
them. `per` scopes the daily budget to the whole gateway, each `X-User-ID` or each `X-Agent-ID`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.counters import Claim
from policies.kinds import register
from policies.kinds.base import Decision, Policy
from policies.model import Exchange, Phase, Verdict
from policies.pricing import Price, lookup, price_table
from policies.rules import choice, meta
from policies.state import PolicyState

REASON = "budget_exceeded"
_USD = {"type": "number", "min": 0}


@register
class SpendLimit(Policy):
    kind = "spend-limit"
    phases = frozenset({Phase.INPUT, Phase.OUTPUT})
    schema = {
        "max_daily_usd": {**_USD, "meta": meta("Budget in USD per UTC day (no limit when absent).")},
        "max_request_usd": {**_USD, "meta": meta("Largest estimated cost of one request in USD.")},
        "per": choice(["global", "user", "agent"],
                      "Scope of the daily budget: the gateway, each X-User-ID or each X-Agent-ID.", "global"),
        "prices": {
            "type": "dict",
            "keysrules": {"type": "string", "empty": False},
            "valuesrules": {
                "type": "dict",
                "schema": {
                    "input_per_mtok": {**_USD, "required": True, "meta": meta("USD per million input tokens.")},
                    "output_per_mtok": {**_USD, "required": True, "meta": meta("USD per million output tokens.")},
                },
            },
            "meta": meta("Prices per model name, beside the built-in table."),
        },
    }

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        self.max_daily = options.get("max_daily_usd")
        self.max_request = options.get("max_request_usd")
        self.per = options.get("per", "global")
        self.table = price_table(options.get("prices"))

    def budget_key(self, ex: Exchange) -> str:
        """The counter key (window: day) this request counts against."""
        if self.per == "user":
            return f"spend-limit:user:{ex.user_id or '-'}"
        if self.per == "agent":
            return f"spend-limit:agent:{ex.agent_id or '-'}"
        return "spend-limit:global"

    def _models(self, ex: Exchange) -> list[str]:
        return list(dict.fromkeys([ex.model, *(t.model for t in ex.targets)]))

    def estimate_usd(self, ex: Exchange) -> float:
        """The most a request can be expected to cost, before it is sent."""
        prices = [p for p in (lookup(m, self.table) for m in self._models(ex)) if p is not None]
        if not prices:
            return 0.0
        input_tokens = sum(len(t) for t in ex.iter_texts()) // 4 + 1
        output_tokens = ex.max_tokens or 0
        return max((input_tokens * p.input_per_mtok + output_tokens * p.output_per_mtok) / 1e6 for p in prices)

    def claims(self, ex: Exchange, phase: Phase) -> Sequence[Claim]:
        if phase is Phase.INPUT:
            if self.max_daily is None:
                return ()
            estimate = self._estimate(ex)
            if self.max_request is not None and estimate > self.max_request:
                return ()  # refused by the per-request cap: nothing to reserve
            return (Claim(self.budget_key(ex), "day", estimate, self.max_daily, hold=True),)
        # Usage is per request: the output phase may run once per choice, count it once.
        if not (ex.input_tokens or ex.output_tokens) or self.kind in ex.notes:
            return ()
        price: Price | None = None
        for model in self._models(ex):
            price = lookup(model, self.table)
            if price is not None:
                break
        ex.notes[self.kind] = price is not None
        cost = 0.0 if price is None else \
            (ex.input_tokens * price.input_per_mtok + ex.output_tokens * price.output_per_mtok) / 1e6
        key = self.budget_key(ex)
        held = ex.tally.holds.pop(key, None)  # settle: the actual cost replaces the reserved estimate
        add = cost - (held.add if held is not None else 0.0)
        return (Claim(key, "day", add),) if add else ()

    def _estimate(self, ex: Exchange) -> float:
        estimate = ex.notes.get("spend-limit:estimate")
        if estimate is None:
            estimate = ex.notes["spend-limit:estimate"] = self.estimate_usd(ex)
        return estimate

    def check_input(self, ex: Exchange) -> Decision | None:
        if self.max_daily is None and self.max_request is None:
            return None
        estimate = self._estimate(ex)
        if self.max_request is not None and estimate > self.max_request:
            return Decision(
                Verdict.BLOCK, REASON, f"estimated cost ${estimate:.4f} exceeds max_request_usd ${self.max_request:g}"
            )
        if self.max_daily is not None:
            result = ex.tally.results.get(self.budget_key(ex))
            if result is not None and not result.ok:
                return Decision(
                    Verdict.BLOCK, REASON,
                    f"daily budget ${self.max_daily:g} reached (spent ${result.value:.4f} today)",
                )
        return None

    def check_output(self, ex: Exchange) -> Decision | None:
        if ex.notes.get(self.kind) is False:
            return Decision(Verdict.ALLOW, "price_unknown", f"no price for model '{ex.model}': counted as $0")
        return None
