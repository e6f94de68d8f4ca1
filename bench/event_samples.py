"""Decision events shaped like the bench's (bench/policy-config.yaml: five policies, an OpenAI target),
with the fields that vary per request drawn at random: ids, hashes, latencies, tokens, identities,
verdicts. Used to train the event store's zstd dictionary (bench/train_events_dict.py), by the
event soak (bench/events_soak.py) and by the golden-JSON test; deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

INPUT = ("prompt-injection", "pii-detector", "dlp-filter", "agent-firewall", "audit-logger")
OUTPUT = ("pii-detector", "dlp-filter", "agent-firewall")


def _result(rng: random.Random, policy: str, phase: str, verdict: str = "allow") -> dict[str, Any]:
    result: dict[str, Any] = {"policy": policy, "phase": phase, "verdict": verdict,
                              "reason_code": "passed" if verdict == "allow" else
                              {"pii-detector": "pii_detected", "dlp-filter": "blocked_term",
                               "prompt-injection": "prompt_injection"}.get(policy, "blocked"),
                              "latency_ms": round(rng.uniform(0, 0.09), 3)}
    if verdict == "redact":
        result["message"] = "PII detected: " + rng.choice(("EMAIL", "PHONE", "EMAIL, PHONE", "CREDIT_CARD"))
        result["redactions"] = rng.randint(1, 3)
    elif verdict == "block":
        result["message"] = "blocked term: project-bluebird" if policy == "dlp-filter" else "prompt injection"
    return result


def sample_events(count: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """`count` events; one config revision and one id prefix per 50,000 (a restart or a deploy)."""
    rng = random.Random(seed)
    for n in range(count):
        if n % 50_000 == 0:
            revision = rng.getrandbits(256).to_bytes(32, "big").hex()
            prefix_evt, prefix_req = rng.getrandbits(64), rng.getrandbits(64)
        kind = rng.random()
        verdict = "redact" if kind < 0.3 else "block" if kind < 0.35 else "allow"
        results = [_result(rng, p, "input", "redact" if verdict == "redact" and p == "pii-detector" else
                           "block" if verdict == "block" and p == "dlp-filter" else "allow") for p in INPUT]
        if verdict == "block":
            results = results[:3]
        else:
            results += [_result(rng, p, "output") for p in OUTPUT]
        decisive = next((r for r in results if r["verdict"] != "allow"), None)
        blocked = verdict == "block"
        tokens_in, tokens_out = rng.randint(8, 900), 0 if blocked else rng.randint(1, 600)
        upstream = 0.0 if blocked else round(rng.uniform(0.3, 900.0), 3)
        user = rng.choice((None, None, f"user-{rng.randint(1, 500)}"))
        yield {
            "id": f"evt_{prefix_evt:016x}{n:016x}",
            "event_type": "decision",
            "timestamp": f"2026-12-06T{(n // 3_600_000) % 24:02d}:{(n // 60_000) % 60:02d}:"
                         f"{(n // 1000) % 60:02d}.{n % 1000:03d}Z",
            "request_id": f"req_{prefix_req:016x}{n:016x}",
            "route": rng.choice(("/v1/chat/completions",) * 8 + ("/v1/messages", "/v1/embeddings")),
            "config_revision": revision,
            "pack_name": "bench-five-policies",
            "pack_version": "1.0.0",
            "policies_enabled": True,
            "verdict": verdict,
            "reason_code": decisive["reason_code"] if decisive else "all_policies_passed",
            "policy": decisive["policy"] if decisive else None,
            "policies": results,
            "policy_error": False,
            "fail_mode": "block",
            "provider": None if blocked else "openai",
            "target": None if blocked else "fake-openai",
            "model": "gpt-4o-mini",
            "stream": rng.random() < 0.3,
            "status": 409 if blocked else rng.choice((200,) * 30 + (502, 429)),
            "error_code": "policy_block" if blocked else None,
            "latency_ms": round(upstream + rng.uniform(0.2, 3.0), 3),
            "upstream_latency_ms": upstream,
            "attempts": 0 if blocked else 1,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": None if blocked else round((tokens_in * 0.15 + tokens_out * 0.6) / 1e6, 9),
            "user_id": user,
            "agent_id": rng.choice((None, "support-bot", "triage-agent")),
            "session_id": rng.choice((None, f"sess-{rng.getrandbits(48):012x}")),
            "user_role": rng.choice((None, "agent", "admin")),
            "key_label": rng.choice((None, "team-a", "team-b")),
            "redactions": sum(r.get("redactions", 0) for r in results),
            "prompt_sha256": rng.getrandbits(256).to_bytes(32, "big").hex(),
            "outcomes_unlisted": 0,
        }
