"""A spend-limit budget that a few requests use up: `BUDGET_CONFIG` (each request through the mock provider
reserves and spends exactly $0.01: max_tokens 1 at $10,000 per million output tokens; $0.05 a day) and `ask`,
the request that spends it (shared by the counter and worker tests)."""

from __future__ import annotations

import json

from tests.gateway_process import GatewayProcess

BUDGET_CONFIG = """\
pack: {name: budget, version: 1.0.0, enabled: true}
providers:
  targets:
    - {id: demo, provider: mock, model: demo-model}
policies:
  chain: [spend-limit]
policy:
  spend-limit:
    max_daily_usd: 0.05
    prices: {demo-model: {input_per_mtok: 0, output_per_mtok: 10000}}
"""


def ask(gw: GatewayProcess) -> tuple[int, dict]:
    status, _, body = gw.request("POST", "/v1/chat/completions", {
        "model": "demo-model", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    return status, json.loads(body)
