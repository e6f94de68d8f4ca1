"""Synthetic decision events shaped as the gateway writes them (`synthetic`) and the counts a summary of them
must give (`expected`), shared by the rollup and console tests."""

from __future__ import annotations

import random

from sync.clock import rfc3339

POLICIES = ("prompt-injection", "pii-detector", "dlp-filter")


def synthetic(n: int, start: float, span: float, seed: int = 7) -> list[dict]:
    """`n` decision events shaped as the gateway writes them, spread over [start, start + span)."""
    rnd = random.Random(seed)
    events = []
    for i in range(n):
        verdict = rnd.choices(("allow", "block", "redact", "error"), (70, 15, 10, 5))[0]
        results = []
        if verdict != "error":
            for name in POLICIES:
                v = "allow"
                if verdict == "block" and name == "dlp-filter":
                    v = "block"
                if verdict == "redact" and name == "pii-detector":
                    v = "redact"
                results.append({"policy": name, "phase": "input", "verdict": v, "reason_code": "x", "latency_ms": 0.01,
                                **({"redactions": 2} if v == "redact" else {})})
                if verdict != "block":  # an output phase too: a policy counts once per request
                    results.append({"policy": name, "phase": "output", "verdict": "allow", "reason_code": "x",
                                    "latency_ms": 0.01})
        events.append({"id": f"evt_{seed:04d}{i:08d}", "timestamp": rfc3339(start + span * i / n), "verdict": verdict,
                       "model": rnd.choice(("gpt-4o-mini", "claude-3-haiku")),
                       "provider": "openai" if rnd.random() < 0.6 else "anthropic",
                       "latency_ms": round(rnd.lognormvariate(3, 1.2), 3),
                       "redactions": 2 if verdict == "redact" else 0, "policies": results, "user_id": f"u{i % 7}"})
    return events


def expected(events: list[dict]) -> dict:
    verdicts: dict[str, int] = {}
    policies: dict[str, list[int]] = {}
    for e in events:
        verdicts[e["verdict"]] = verdicts.get(e["verdict"], 0) + 1
        names = {r["policy"] for r in e["policies"]}
        for name in names:
            row = policies.setdefault(name, [0, 0, 0])
            row[0] += 1
            row[1] += any(r["policy"] == name and r["verdict"] == "block" for r in e["policies"])
            row[2] += sum(r.get("redactions", 0) for r in e["policies"] if r["policy"] == name)
    return {"verdicts": verdicts, "policies": {p: tuple(v) for p, v in policies.items()}}
