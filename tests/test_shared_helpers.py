"""The repo's one-of-each helpers (issue 14 §2): time stamps, the clock cache, backoff, the error envelope.

tests/test_layout.py checks that each is defined once; these check what each answers.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from gateway.proxy.errors import GatewayError, envelope
from sync.backoff import backoff
from sync.clock import parse_time, per_second, rfc3339


def test_rfc3339_is_isoformat_with_milliseconds() -> None:
    rng = random.Random(7)
    for ts in [0.0, 1.0, 1764979200.9995, 1764979200.0004999, *(rng.uniform(0, 4e9) for _ in range(2000))]:
        expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert rfc3339(ts) == expected, ts
        assert parse_time(rfc3339(ts)) == pytest.approx(ts, abs=0.001)


def test_per_second_formats_once_a_second() -> None:
    calls: list[int] = []
    cache = per_second(lambda second: calls.append(second) or f"s{second}")
    assert [cache(s) for s in (5, 5, 5, 6, 6, 5)] == ["s5", "s5", "s5", "s6", "s6", "s5"]
    assert calls == [5, 6, 5]


def test_backoff_grows_is_capped_and_jittered_within_its_range() -> None:
    assert [backoff(n, 0.05, 2.0, rng=lambda: 1.0) for n in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert backoff(3, 1.0, 100.0, rng=lambda: 0.0) == 0.0  # full jitter reaches zero
    assert backoff(3, 1.0, 100.0, low=0.5, rng=lambda: 0.0) == 4.0  # low=0.5 keeps half the step
    assert backoff(0, 1.0, 100.0, least=0.5, rng=lambda: 0.0) == 0.5
    assert backoff(10_000, 1.0, 30.0, rng=lambda: 1.0) == 30.0  # no overflow for a long outage


def test_the_error_envelope_has_one_shape() -> None:
    assert envelope("validation_error", "missing_model", "`model` is required") == {
        "error": {"type": "validation_error", "code": "missing_model", "message": "`model` is required",
                  "policy": None}}
    assert GatewayError(409, "policy_violation", "blocked", "no", "dlp-filter").payload() == envelope(
        "policy_violation", "blocked", "no", "dlp-filter")
    assert list(envelope("t", "c", "m", None, retry_after_s=3)["error"]) == ["type", "code", "message", "policy",
                                                                            "retry_after_s"]
