"""Scrubbing credentials out of texts that come from an upstream before kt passes them on.

Providers echo keys back ("Incorrect API key provided: sk-..."), so every upstream text kt
forwards to a client, logs or stores in an event (error bodies, stream error events) goes
through `scrub` first: the exact secret values the gateway sent, and anything shaped like a
bearer token or API key, become `[REDACTED]`. Only error texts pass here (never on the hot
path of a successful answer); the pattern is compiled once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

# a hex/base64 token of 16+ characters with at least one digit (so `key: response_format.json_schema` stays)
_TOKEN = r"(?=[A-Za-z+/_.=*-]*[0-9])[A-Za-z0-9+/_.=*-]{16,}"
_PATTERNS = re.compile("|".join([
    r"\b(?:sk|rk|pk)-[A-Za-z0-9_*-]{6,}",  # OpenAI / Anthropic (sk-ant-...) style keys, masked ones too
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bAIza[0-9A-Za-z_-]{30,}",  # Google API keys
    r"\b(?:gh[pousr]|github_pat)_[A-Za-z0-9_]{20,}",  # GitHub tokens
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?",  # JWTs
    r"(?<=Bearer )(?=[^\s\"',;0-9]*[0-9])[^\s\"',;]{6,}",  # what follows "Bearer " (with a digit in it)
    r"(?<=Basic )[A-Za-z0-9+/=]{6,}",
    # a long hex/base64 token after "key", "token" or "secret" (`api_key: 3f9a...`, `key "AbC..."`)
    r"(?<=(?i:key))[^A-Za-z0-9\n]{1,4}" + _TOKEN,
    r"(?<=(?i:token))[^A-Za-z0-9\n]{1,4}" + _TOKEN,
    r"(?<=(?i:secret))[^A-Za-z0-9\n]{1,4}" + _TOKEN,
]))
_SEPARATOR = re.compile(r"^[^A-Za-z0-9\n]{1,4}")


def _replace(match: re.Match[str]) -> str:
    text = match.group(0)
    lead = _SEPARATOR.match(text)  # keep the ": " between "key" and the token
    return (lead.group(0) if lead else "") + REDACTED


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without the given secret values and without anything that looks like a credential."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return _PATTERNS.sub(_replace, text)
