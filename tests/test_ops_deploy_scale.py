"""deploy/ and systemd/ for scale-out: --workers auto with matching CPU, Redis for the shared counters."""

from __future__ import annotations

import configparser
import math
from pathlib import Path

import pytest

from gateway.supervisor import cgroup_cpus, worker_count
from tests import ROOT
from tests.deploy_manifests import gateway_container, k8s_command, k8s_docs


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


def cgroup_tree(root: Path, proc: str, files: dict[str, str]) -> Path:
    """A fake file system root: `/proc/self/cgroup` and files under `/sys/fs/cgroup`."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc)
    for name, text in files.items():
        path = root / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


V1 = "12:memory:/kubepods/pod1/c1\n4:cpu,cpuacct:/kubepods/pod1/c1\n1:name=systemd:/kubepods/pod1/c1\n"
V1_SPLIT = "5:cpu:/svc\n3:cpuacct:/svc\n0::/\n"  # cpu and cpuacct mounted apart, a v2 tree beside (hybrid)


@pytest.mark.parametrize(("proc", "files", "cpus"), [
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),  # v2, a container's own namespace
    ("0::/system.slice/kt.service\n", {"system.slice/kt.service/cpu.max": "200000 100000\n",
                                       "system.slice/cpu.max": "max 100000\n"}, 2.0),  # v2, a systemd unit
    ("0::/a/b\n", {"a/b/cpu.max": "max 100000\n", "a/cpu.max": "300000 100000\n"}, 3.0),  # a parent's limit
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # v2 unlimited
    (V1, {"cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_quota_us": "250000\n",
          "cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_period_us": "100000\n"}, 2.5),  # v1
    (V1, {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "50000\n"},
     2.0),  # v1 in a container without its own cgroup namespace: the mount is the container's cgroup
    (V1_SPLIT, {"cpu/svc/cpu.cfs_quota_us": "50000\n", "cpu/svc/cpu.cfs_period_us": "100000\n",
                "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    (V1, {"cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_quota_us": "-1\n",
          "cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_period_us": "100000\n"}, None),  # v1 unlimited
    (V1, {}, None),  # no cgroup files at all
    ("", {}, None),  # no /proc/self/cgroup content
])
def test_auto_follows_the_cgroup_cpu_quota(tmp_path: Path, proc: str, files: dict[str, str],
                                           cpus: float | None) -> None:
    assert cgroup_cpus(cgroup_tree(tmp_path, proc, files)) == cpus


def test_auto_workers_are_the_quota_rounded_up() -> None:
    assert worker_count("auto", quota=1.5) == min(2, worker_count("auto", quota=64))
    assert worker_count("auto", quota=math.inf) >= 1
    assert cgroup_cpus(Path("/nonexistent-root")) is None
