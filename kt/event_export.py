"""Decision events written as CSV, JSON or JSONL, one page at a time (`kt events export`).

Nothing here holds more than one page of events: rows are written as pages arrive. CSV has one
row per event: the event's fields, then per policy `policy.<name>.verdict`, `.reason_code`
and `.latency_ms` (a policy that ran in several phases or choices shows its most severe
result and its summed latency). The policy columns are known before the first row
(`policies`); results of any other policy go to `policies.other`, fields the event has beyond
`EVENT_COLUMNS` to `extra` (as JSON), so no data is dropped. Text cells that a spreadsheet
would read as a formula are prefixed with `'`: event fields carry client-chosen text.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from typing import Any, TextIO

FORMATS = ("csv", "json", "jsonl")
EVENT_COLUMNS = (
    "id", "timestamp", "verdict", "reason_code", "policy", "route", "model", "provider", "target", "status",
    "error_code", "latency_ms", "upstream_latency_ms", "attempts", "input_tokens", "output_tokens", "cost_usd",
    "redactions", "user_id", "agent_id", "session_id", "user_role", "key_label", "stream", "fail_mode",
    "policy_error", "policies_enabled", "config_revision", "pack_name", "pack_version", "request_id",
    "prompt_sha256", "outcomes_unlisted", "event_type",
)  # fmt: skip
POLICY_FIELDS = ("verdict", "reason_code", "latency_ms")
OTHER_POLICIES = "policies.other"
EXTRA = "extra"
_KNOWN = frozenset((*EVENT_COLUMNS, "policies"))
_SEVERITY = {"block": 4, "escalate": 3, "redact": 2, "error": 1}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    """A CSV cell: JSON-ish text for values, and text a spreadsheet would run as a formula defused."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_header(policies: Iterable[str]) -> list[str]:
    """The header row for events whose per-policy columns are `policies`."""
    columns = [f"policy.{name}.{field}" for name in policies for field in POLICY_FIELDS]
    return [*EVENT_COLUMNS, *columns, OTHER_POLICIES, EXTRA]


def _per_policy(results: Any) -> dict[str, tuple[Any, Any, float]]:
    """{policy: (verdict, reason_code, latency_ms)}: its most severe result, latency summed."""
    out: dict[str, tuple[Any, Any, float]] = {}
    for result in results if isinstance(results, list) else ():
        if not isinstance(result, dict) or not isinstance(result.get("policy"), str):
            continue
        name = result["policy"]
        latency = result.get("latency_ms")
        latency = float(latency) if isinstance(latency, int | float) else 0.0
        seen = out.get(name)
        if seen is None:
            out[name] = (result.get("verdict"), result.get("reason_code"), latency)
            continue
        stronger = _SEVERITY.get(result.get("verdict"), 0) > _SEVERITY.get(seen[0], 0)
        verdict, reason = (result.get("verdict"), result.get("reason_code")) if stronger else seen[:2]
        out[name] = (verdict, reason, seen[2] + latency)
    return out


def csv_row(event: dict[str, Any], policies: list[str]) -> list[str]:
    """One event as a row under `csv_header(policies)`."""
    row = [safe_cell(event.get(name)) for name in EVENT_COLUMNS]
    results = _per_policy(event.get("policies"))
    for name in policies:
        verdict, reason, latency = results.pop(name, (None, None, None))
        row += [safe_cell(verdict), safe_cell(reason), safe_cell(round(latency, 3) if latency is not None else None)]
    row.append(safe_cell("; ".join(f"{name}={v}:{r}" for name, (v, r, _) in results.items())))
    extra = {k: v for k, v in event.items() if k not in _KNOWN}
    row.append(safe_cell(extra) if extra else "")
    return row


def _json(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def write_events(pages: Iterable[list[dict[str, Any]]], fmt: str, out: TextIO, policies: list[str],
                 progress: Callable[[int], None] = lambda n: None) -> int:
    """Write every event of `pages` to `out` as `fmt`; call `progress(n)` after each page. Returns the count."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out)  # the excel dialect: quoted where needed, CRLF line ends
        writer.writerow(csv_header(policies))
        for page in pages:
            writer.writerows(csv_row(event, policies) for event in page)
            count += len(page)
            progress(len(page))
        return count
    if fmt == "json":
        out.write("[")
    for page in pages:
        if fmt == "json":
            out.write("".join(("\n" if count + i == 0 else ",\n") + _json(e) for i, e in enumerate(page)))
        else:
            out.write("".join(_json(e) + "\n" for e in page))
        count += len(page)
        progress(len(page))
    if fmt == "json":
        out.write("\n]\n" if count else "]\n")
    return count
