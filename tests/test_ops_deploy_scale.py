"""deploy/ and systemd/ for scale-out: --workers auto with matching CPU, Redis for the shared counters."""

from __future__ import annotations

import configparser
import math
from pathlib import Path

from gateway.supervisor import cgroup_cpus, worker_count
from tests.test_ops_deploy import ROOT, gateway_container, k8s_command, k8s_docs


def cpus(value: str) -> float:
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def test_gateway_pods_run_one_worker_per_cpu_of_their_limit() -> None:
    argv = k8s_command()
    assert argv[argv.index("--workers") + 1] == "auto"
    resources = gateway_container()["resources"]
    limit, request = cpus(resources["limits"]["cpu"]), cpus(resources["requests"]["cpu"])
    assert limit == request and limit == int(limit) >= 2  # whole CPUs, Guaranteed QoS: auto = the limit
    assert worker_count("auto", quota=limit) == min(int(limit), worker_count("auto", quota=64))


def test_gateway_pods_share_counters_through_the_example_redis() -> None:
    docs = k8s_docs()
    url = docs["ConfigMap/kt-gateway-config"]["data"]["KEEPTRUSTS_STATE_URL"]
    service = docs["Service/kt-redis"]
    assert url == f"redis://kt-redis:{service['spec']['ports'][0]['port']}/0"
    redis = docs["Deployment/kt-redis"]
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag, value in (("--appendonly", "yes"), ("--appendfsync", "everysec"), ("--maxmemory-policy", "noeviction")):
        assert args[args.index(flag) + 1] == value
    assert redis["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_systemd_unit_runs_workers_auto() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((ROOT / "systemd" / "kt-gateway.service").read_text())
    exec_start = unit["Service"]["ExecStart"]
    assert "--workers auto" in exec_start and unit["Service"]["NotifyAccess"] == "main"


def test_auto_follows_the_cgroup_cpu_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpus(tmp_path / "cpu.max") == 1.5
    assert worker_count("auto", quota=1.5) == min(2, worker_count("auto", quota=64))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path / "cpu.max") is None
    assert worker_count("auto", quota=math.inf) >= 1
