"""Golden tests: run recorded requests through a config's chain offline and compare verdicts.

Cases come from `tests/*.json` beside the config (one case object, or a list of them) and
from the config's inline `testing.suites`. A case is
`{name, input{messages, headers?, tools?, model?, upstream_response?}, expected{verdict, reason_code?, targets?}}`;
`expected.targets` lists the ids of the targets the request may go to after the input chain
(data routing), in order.
The input chain runs on the request; when `upstream_response` is given (a string, or a
mapping with `content`, `tool_calls`, `usage`, or an OpenAI `choices` body) and the request
was not blocked, the output chain runs on it. Each case gets a fresh policy state, so cases
do not influence each other (spend, session counters).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.chain import summarize
from policies.config import Config, compile_document
from policies.lint import finding_from_error
from policies.model import Exchange, PolicyResult
from policies.schema import CASE, validate, validator_for
from policies.state import PolicyState
from policies.texts import CHOICE_FIELDS, COMPLETION_FIELDS, answer_fields
from policies.yaml_loader import MAX_BYTES


@dataclass(frozen=True)
class GoldenCase:
    name: str
    input: Mapping[str, Any]
    expected: Mapping[str, Any]
    source: str  # the file, or "testing.suites[i]"


@dataclass(frozen=True)
class CaseResult:
    """What one case produced; `error` is set when the case itself could not run."""

    name: str
    source: str
    expected: Mapping[str, Any]
    verdict: str
    reason_code: str
    passed: bool
    policy_results: tuple[PolicyResult, ...] = ()
    error: str = ""
    targets: tuple[str, ...] = ()  # where the request could be routed after the input chain

    def as_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "verdict": self.verdict,
            "reason_code": self.reason_code,
            "passed": self.passed,
            "expected": dict(self.expected),
            "source": self.source,
            "details": {"policy_results": [r.as_dict() for r in self.policy_results], "targets": list(self.targets)},
        }
        if self.error:
            d["error"] = self.error
        return d


def _broken(name: str, source: str, error: str) -> CaseResult:
    return CaseResult(name, source, {}, "error", "", False, error=error)


def _check_case(raw: Any, name: str, source: str) -> GoldenCase | CaseResult:
    if not isinstance(raw, dict):
        return _broken(name, source, "a golden case must be a JSON object {name, input, expected}")
    errs = validate(validator_for(("case",), lambda: CASE), raw)
    if errs:
        return _broken(str(raw.get("name") or name), source, "; ".join(str(finding_from_error(e, CASE)) for e in errs))
    return GoldenCase(raw["name"], raw["input"], raw["expected"], source)


def load_case_files(cases_dir: Path) -> list[GoldenCase | CaseResult]:
    """The cases of every `*.json` below `cases_dir` (sorted); unreadable ones as broken results."""
    out: list[GoldenCase | CaseResult] = []
    for path in sorted(cases_dir.glob("*.json")):
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise ValueError("file is larger than 1 MiB")
            raw = json.loads(data.decode("utf-8"))
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            out.append(_broken(path.stem, str(path), f"cannot read golden case file: {exc}"))
            continue
        items = raw if isinstance(raw, list) else [raw]
        for i, item in enumerate(items):
            name = path.stem if len(items) == 1 else f"{path.stem}[{i}]"
            out.append(_check_case(item, name, str(path)))
    return out


def inline_cases(config: Config) -> list[GoldenCase]:
    """The cases of `testing.suites` (already validated with the config), named `suite/case`."""
    return [
        GoldenCase(f"{suite['name']}/{case['name']}", case["input"], case["expected"], f"testing.suites[{i}]")
        for i, suite in enumerate(config.suites)
        for case in suite.get("cases") or []
    ]


def _apply_response(ex: Exchange, response: Any) -> None:
    if isinstance(response, str):
        ex.response_text = response
        return
    body = response
    choices = response.get("choices")
    extras: dict[str, Any] = {}  # the answer's top-level and the choice's own fields, as the gateway checks them
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        body = choices[0].get("message")
        extras = {**answer_fields(response, COMPLETION_FIELDS), **answer_fields(choices[0], CHOICE_FIELDS)}
    body = body if isinstance(body, dict) else {}
    content = body.get("content")
    ex.response_text = content if isinstance(content, str) else ""
    refusal = body.get("refusal")
    ex.response_refusal = refusal if isinstance(refusal, str) else ""
    ex.response_tool_calls = list(body.get("tool_calls") or [])
    if isinstance(body.get("function_call"), dict):  # legacy: checked like a tool call, as the gateway does
        ex.response_tool_calls.append({"type": "function", "function": body["function_call"]})
    # Written as the message itself, the fields that describe the answer as a whole (`id`, `model`,
    # `usage`, ...) are not checked; `reasoning_content`, `annotations`, `citations`, ... are.
    ex.response_fields = {**extras, **{k: v for k, v in answer_fields(body).items() if k not in COMPLETION_FIELDS}}
    usage = response.get("usage") or {}
    ex.input_tokens = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
    ex.output_tokens = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)


def run_case(config: Config, case: GoldenCase) -> CaseResult:
    """Run one case against a fresh copy of `config`'s chain."""
    fresh = compile_document(dict(config.document), config.sha256, config.source, PolicyState())
    inp = case.input
    model = inp.get("model") or (config.targets[0].model if config.targets else "golden-test")
    ex = Exchange(
        model=model,
        messages=copy.deepcopy(list(inp.get("messages") or [])),
        tools=copy.deepcopy(list(inp.get("tools") or [])),
        headers={str(k).lower(): str(v) for k, v in (inp.get("headers") or {}).items()},
        targets=fresh.targets_for(model) or list(fresh.targets),
    )
    outcome = fresh.chain.run_input(ex)
    results = outcome.results
    targets = () if outcome.blocked else tuple(t.id for t in ex.targets)
    if not outcome.blocked and inp.get("upstream_response") is not None:
        _apply_response(ex, inp["upstream_response"])
        results = results + fresh.chain.run_output(ex).results
        outcome = summarize(results)
    expected = case.expected
    passed = (
        outcome.verdict.value == expected["verdict"]
        and (not expected.get("reason_code") or expected["reason_code"] == outcome.reason_code)
        and ("targets" not in expected or list(expected["targets"]) == list(targets))
    )
    return CaseResult(
        case.name, case.source, expected, outcome.verdict.value, outcome.reason_code, passed, results, "", targets
    )


def run_golden(config: Config, cases_dir: Path | None) -> list[CaseResult]:
    """Run the case files of `cases_dir` (when it exists) and the inline suites of `config`."""
    loaded: list[GoldenCase | CaseResult] = []
    if cases_dir is not None and cases_dir.is_dir():
        loaded += load_case_files(cases_dir)
    loaded += inline_cases(config)
    results = []
    for case in loaded:
        if isinstance(case, GoldenCase):
            try:
                case = run_case(config, case)
            except (TypeError, ValueError, AttributeError) as exc:  # a malformed case, not a policy verdict
                case = _broken(case.name, case.source, f"case could not run: {exc}")
        results.append(case)
    return results
