"""deploy/: the Dockerfile, docker-compose.yml and Kubernetes manifests parse and agree with each other.

No container engine or cluster here, so this is static validation: ports, paths, probes, selectors,
env and secret references, and the kt command lines they run (flags checked against `kt --help`
of real subprocesses in tests/test_ops_deploy_cli.py).
"""

from __future__ import annotations

import json
import re

import yaml

from tests import ROOT
from tests.deploy_manifests import (
    DEPLOY,
    K8S,
    compose,
    compose_command,
    dockerfile,
    env_example,
    final_stage,
    flag_value,
    gateway_container,
    healthcheck_command,
    image_command,
    k8s_command,
    k8s_docs,
    listen_port,
)

PROBE_PATHS = {"/healthz", "/readyz"}


# --- Dockerfile


def test_dockerfile_runs_non_root_with_kt_doctor_healthcheck() -> None:
    stage = final_stage()
    users = [args for word, args in stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the final stage must switch to a non-root user"
    assert healthcheck_command()[:2] == ["kt", "doctor"]
    assert "--gateway" in healthcheck_command()
    assert "--timeout" in dict(stage)["HEALTHCHECK"]
    port = listen_port(image_command())
    assert f"http://127.0.0.1:{port}" in healthcheck_command()
    assert dict(stage)["EXPOSE"].split() == [str(port)]
    volume = json.loads(dict(stage)["VOLUME"])
    assert volume == [flag_value(image_command(), "--state-dir")]


def test_dockerfile_copies_only_what_exists() -> None:
    for word, args in dockerfile():
        if word == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository (build context is the root)"
    default_config = dict(final_stage())["CMD"]
    assert "/etc/kt/policy-config.yaml" in default_config


# --- docker compose


def test_compose_gateway_with_embedded_agent_and_state_volume() -> None:
    spec = compose()
    service = spec["services"]["kt-gateway"]
    argv = compose_command()
    assert argv[1:3] == ["gateway", "run"] and "--git-repo" in argv
    port = listen_port(argv)
    assert any(str(p).endswith(f":{port}") for p in service["ports"])
    state = flag_value(argv, "--state-dir")
    mounts = dict(v.split(":", 1) for v in service["volumes"])
    assert state in mounts.values()
    for name in mounts:
        if not name.startswith((".", "/")):
            assert name in spec["volumes"], f"named volume {name} is not declared"
    assert service["healthcheck"]["test"][1:3] == ["kt", "doctor"]
    assert f"http://127.0.0.1:{port}" in service["healthcheck"]["test"]
    build = service["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()


def test_compose_variables_are_in_env_example() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    env = env_example()
    for var in re.findall(r"\$\{(\w+)", text):
        assert var in env, f"docker-compose.yml uses ${{{var}}}, which deploy/.env.example does not define"
    assert compose()["services"]["kt-gateway"]["env_file"] == ".env"
    for name in ("KEEPTRUSTS_ADMIN_TOKEN", "KEEPTRUSTS_WEBHOOK_SECRET", "KEEPTRUSTS_GIT_TOKEN", "OPENAI_API_KEY"):
        assert name in env


# --- Kubernetes


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_deployment_shape() -> None:
    docs = k8s_docs()
    deployment = docs["Deployment/kt-gateway"]
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    argv = k8s_command()
    assert argv[1:3] == ["gateway", "run"] and "--git-repo" in argv, "the embedded agent pulls from Git"
    container = gateway_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": listen_port(argv)}
    annotations = spec["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == listen_port(argv)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in PROBE_PATHS
        assert get["port"] in ports or get["port"] in ports.values()


def test_security_context_matches_the_image_user() -> None:
    pod = k8s_docs()["Deployment/kt-gateway"]["spec"]["template"]["spec"]
    uid = [args for word, args in final_stage() if word == "USER"][-1].split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid
    container = gateway_container()["securityContext"]
    assert container["allowPrivilegeEscalation"] is False and container["readOnlyRootFilesystem"] is True


def test_volumes_and_state_dir() -> None:
    pod = k8s_docs()["Deployment/kt-gateway"]["spec"]["template"]["spec"]
    volumes = {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in gateway_container()["volumeMounts"]}
    assert set(mounts.values()) <= volumes
    assert flag_value(k8s_command(), "--state-dir") in mounts


def test_env_references_resolve() -> None:
    docs = k8s_docs()
    container = gateway_container()
    config_keys: set[str] = set()
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert f"ConfigMap/{name}" in docs, f"envFrom names a missing ConfigMap {name}"
        config_keys |= set(docs[f"ConfigMap/{name}"]["data"])
    env_names = {e["name"] for e in container["env"]}
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = docs.get(f"Secret/{ref['name']}")
            assert secret, f"{entry['name']} refers to a missing Secret {ref['name']}"
            assert ref["key"] in secret["stringData"], f"Secret {ref['name']} has no key {ref['key']}"
    for var in re.findall(r"\$\((\w+)\)", " ".join(container["args"])):
        assert var in config_keys or var in env_names, f"args use $({var}), defined nowhere"
    secret_keys = set(docs["Secret/kt-gateway-secrets"]["stringData"])
    assert {"OPENAI_API_KEY", "KEEPTRUSTS_WEBHOOK_SECRET", "KEEPTRUSTS_ADMIN_TOKEN"} <= secret_keys


def test_service_hpa_pdb_select_the_deployment() -> None:
    docs = k8s_docs()
    labels = docs["Deployment/kt-gateway"]["spec"]["template"]["metadata"]["labels"]
    service = docs["Service/kt-gateway"]["spec"]
    assert service["selector"].items() <= labels.items()
    port_names = {p["name"] for p in gateway_container()["ports"]}
    for port in service["ports"]:
        assert port["targetPort"] in port_names
    pdb = docs["PodDisruptionBudget/kt-gateway"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < pdb["spec"]["minAvailable"] < docs["Deployment/kt-gateway"]["spec"]["replicas"]
    hpa = docs["HorizontalPodAutoscaler/kt-gateway"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "kt-gateway")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] == 70
    assert hpa["spec"]["minReplicas"] <= 3 <= hpa["spec"]["maxReplicas"]
    resources = gateway_container()["resources"]
    assert "cpu" in resources["requests"], "an HPA on CPU utilisation needs a CPU request"
