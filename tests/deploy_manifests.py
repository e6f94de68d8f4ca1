"""Readers of deploy/: the Dockerfile's steps and the image's command lines, docker-compose.yml and its
.env.example, the Kubernetes manifests and the gateway container's command line (shared by the deploy tests)."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import yaml

from tests import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def image_command() -> list[str]:
    """The image's default command line: ENTRYPOINT + CMD, without the init wrapper."""
    stage = dict(final_stage())
    entry = exec_form(stage["ENTRYPOINT"])
    return entry[entry.index("kt"):] + exec_form(stage["CMD"])


def healthcheck_command() -> list[str]:
    args = dict(final_stage())["HEALTHCHECK"]
    return exec_form(args.split(" CMD ", 1)[1].strip())


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def compose_command() -> list[str]:
    """The compose command line with ${VAR:-default} substituted by its default (or the .env.example value)."""
    env = env_example()
    service = compose()["services"]["kt-gateway"]

    def subst(word: str) -> str:
        return re.sub(r"\$\{(\w+)(?::[-?]([^}]*))?\}", lambda m: env.get(m[1]) or m[2] or "", word)

    return ["kt", *(subst(str(w)) for w in service["command"])]


def env_example() -> dict[str, str]:
    pairs = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (DEPLOY / ".env.example").read_text(), re.M)
    return dict(pairs)


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Kind/name -> manifest for every document in deploy/kubernetes."""
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[f"{doc['kind']}/{doc.get('metadata', {}).get('name', path.name)}"] = doc
    return docs


def gateway_container() -> dict[str, Any]:
    return k8s_docs()["Deployment/kt-gateway"]["spec"]["template"]["spec"]["containers"][0]


def k8s_command() -> list[str]:
    """The container's command line with $(VAR) expanded from the ConfigMap."""
    data = k8s_docs()["ConfigMap/kt-gateway-config"]["data"]
    return ["kt", *(re.sub(r"\$\((\w+)\)", lambda m: str(data[m[1]]), w) for w in gateway_container()["args"])]


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def listen_port(argv: list[str]) -> int:
    return int(flag_value(argv, "--listen").rsplit(":", 1)[1])
