"""The kt command lines in deploy/ and systemd/ exist (flags checked against `kt ... --help` of real
subprocesses), and the image's own command, probes and healthcheck work against a real gateway."""

from __future__ import annotations

import os
import re
import shlex
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import ROOT
from tests.deploy_manifests import (
    compose_command,
    gateway_container,
    healthcheck_command,
    image_command,
    k8s_command,
    k8s_docs,
)
from tests.gateway_process import GatewayProcess
from tests.kt_process import run_kt

GUARD = 60


def kt_help(*command: str) -> str:
    proc = run_kt(*command, "--help", timeout=GUARD)
    assert proc.returncode == 0, f"kt {' '.join(command)}: {proc.stderr}"
    return proc.stdout


def systemd_command(unit: str, var: str) -> list[str]:
    """The unit's ExecStart with $VAR taken from systemd/kt.env.example."""
    env = dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / "systemd" / "kt.env.example").read_text(), re.M))
    exec_start = re.search(r"^ExecStart=(.*)$", (ROOT / "systemd" / unit).read_text(), re.M)[1]
    argv = shlex.split(exec_start.replace(f"${var}", env[var]).replace("%S", "/var/lib"))
    return ["kt", *argv[1:]]


def commented_alternatives(var: str) -> list[list[str]]:
    text = (ROOT / "systemd" / "kt.env.example").read_text()
    return [["kt", "gateway", "run", *shlex.split(m)] for m in re.findall(rf"^#{var}=(.*)$", text, re.M)]


COMMAND_LINES = {
    "Dockerfile CMD": image_command,
    "Dockerfile HEALTHCHECK": healthcheck_command,
    "docker-compose command": compose_command,
    "Kubernetes args": k8s_command,
    "kt-gateway.service": lambda: systemd_command("kt-gateway.service", "KT_GATEWAY_ARGS"),
    "kt-sync.service": lambda: systemd_command("kt-sync.service", "KT_SYNC_ARGS"),
}


@pytest.mark.parametrize("where", list(COMMAND_LINES))
def test_flags_exist(where: str) -> None:
    argv = COMMAND_LINES[where]()
    lines = [argv] + (commented_alternatives("KT_GATEWAY_ARGS") if where == "kt-gateway.service" else [])
    for line in lines:
        words = [w for w in line[1:3] if not w.startswith("-")]
        command = words if words[0] in {"gateway", "sync"} else words[:1]
        usage = kt_help(*command)
        for flag in (w.split("=", 1)[0] for w in line if w.startswith("--")):
            found = re.search(rf"(^|[\s,]){re.escape(flag)}\b", usage)
            assert found, f"{where}: `kt {' '.join(command)}` has no {flag}"


@pytest.fixture
def image_gateway(tmp_path: Path, gateway_process: Callable[..., GatewayProcess]) -> str:
    """The image's default command (paths and port moved to the test's), as a real process."""
    argv = image_command()
    argv[argv.index("--listen") + 1] = "127.0.0.1:0"  # the gateway reports the port it got
    argv[argv.index("--state-dir") + 1] = str(tmp_path / "state")
    argv[argv.index("--policy-config") + 1] = str(ROOT / "policies" / "examples" / "default" / "policy-config.yaml")
    return gateway_process(None, state=tmp_path / "state", argv=argv[1:], clean=True).url


def test_probes_scrape_path_and_healthcheck_against_the_image_command(image_gateway: str) -> None:
    container = gateway_container()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert urllib.request.urlopen(image_gateway + path, timeout=5).status == 200, probe
    scrape = k8s_docs()["Deployment/kt-gateway"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    body = urllib.request.urlopen(image_gateway + scrape, timeout=5).read().decode()
    assert "keeptrusts_gateway_requests_total" in body
    check = healthcheck_command()
    check[check.index("--gateway") + 1] = image_gateway
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPTRUSTS_")}
    proc = run_kt(*check[1:], env=env, timeout=GUARD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
