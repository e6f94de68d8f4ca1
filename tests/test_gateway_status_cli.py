"""`kt gateway status`: the fleet at a glance, over real gateway processes and an unreachable URL."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import ROOT
from tests.gateway_process import GatewayProcess
from tests.kt_process import run_kt
from tests.waiting import wait_for

ADMIN = "fleet-admin-token"


def config_text(version: str) -> str:
    return (f"pack: {{name: fleet-pack, version: {version}, enabled: true}}\n"
            "providers:\n  targets:\n    - {id: demo, provider: mock, model: demo-model}\n"
            "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {retention_days: 30}\n")


def kt_status(*urls: str, as_json: bool = True, token: str | None = ADMIN) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPTRUSTS_")}
    if token:
        env["KEEPTRUSTS_ADMIN_TOKEN"] = token
    args = [a for url in urls for a in ("--gateway", url)] + (["--json"] if as_json else [])
    proc = run_kt("gateway", "status", *args, env=env, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


@pytest.fixture
def fleet(tmp_path: Path, gateway_process: Callable[..., GatewayProcess]
          ) -> tuple[GatewayProcess, GatewayProcess, Path, Path]:
    configs = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    for path in configs:
        path.write_text(config_text("1.0.0"))
    a, b = (gateway_process(path, state=tmp_path / f"state-{i}", env={"KEEPTRUSTS_ADMIN_TOKEN": ADMIN})
            for i, path in enumerate(configs))
    return a, b, configs[0], configs[1]


def test_fleet_agrees_then_disagrees_drifts_and_loses_a_member(fleet, closed_port: int) -> None:
    a, b, config_a, config_b = fleet
    code, out = kt_status(a.url, b.url)
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["problems"] == [], report
    assert len(report["revisions"]) == 1 and [g["reachable"] for g in report["gateways"]] == [True, True]
    status = report["gateways"][0]["status"]
    assert status["config"]["pack"] == {"name": "fleet-pack", "version": "1.0.0"} and "drift" in status

    code, out = kt_status(a.url, b.url, as_json=False)
    assert code == 0 and "fleet-pack@1.0.0" in out and "agree on revision" in out, out

    # b runs another config: the fleet disagrees on the revision
    config_b.write_text(config_text("2.0.0"))
    wait_for(lambda: b.get("/keeptrusts/status")[1]["config"]["pack"]["version"] == "2.0.0", timeout=20)
    down = f"http://127.0.0.1:{closed_port}"
    code, out = kt_status(a.url, b.url, down)
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and len(report["revisions"]) == 2
    assert any("disagree on the revision" in p for p in report["problems"])
    assert any(p.startswith(down) and "unreachable" in p for p in report["problems"])
    assert report["gateways"][2] == {"url": down, "reachable": False, "error": report["gateways"][2]["error"],
                                     "status": None}

    code, out = kt_status(a.url, b.url, down, as_json=False)
    assert code == 1 and "fleet-pack@2.0.0" in out and "unreachable" in out and "disagree" in out, out

    # same revision again, but a drifts (a refused edit): still not in agreement
    config_b.write_text(config_text("1.0.0"))
    wait_for(lambda: b.get("/keeptrusts/status")[1]["config"]["pack"]["version"] == "1.0.0", timeout=20)
    assert kt_status(a.url, b.url)[0] == 0
    config_a.write_text("pack: {name: fleet-pack, version: 3.0.0, enabled: true}\npolicies: {chain: [nope]}\n")
    wait_for(lambda: a.get("/keeptrusts/status")[1]["drift"]["drifted"], timeout=20)
    code, out = kt_status(a.url, b.url)
    report = json.loads(out)
    assert code == 1 and report["problems"] == [f"{a.url}: drifted (reload_failed)"], report


def test_the_admin_token_is_needed_and_sent(fleet) -> None:
    a, _, _, _ = fleet
    code, out = kt_status(a.url, token=None)
    report = json.loads(out)
    assert code == 1 and "KEEPTRUSTS_ADMIN_TOKEN" in report["gateways"][0]["error"]
    assert kt_status(a.url)[0] == 0
