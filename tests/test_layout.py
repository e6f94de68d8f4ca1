"""The import rules of the repository's parts and of the gateway's rooms (DESIGN.md, "Inside gateway/").

Read from the source with `ast` (every `import`, also inside functions and `TYPE_CHECKING`), so a
rule holds whether or not a code path runs. A rule names import prefixes a part must not use; an
exception to a rule is allowed only with its reason in `EXCEPTIONS`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from tests import ROOT

OURS = ("policies", "sync", "gateway", "kt")
ROOMS = ("http", "proxy", "providers", "events", "control")


@dataclass(frozen=True)
class Rule:
    part: str  # a package (dotted) whose modules the rule covers
    forbidden: tuple[str, ...]  # import prefixes it must not use
    says: str  # the rule in words (DESIGN.md)


RULES = (
    Rule("policies", ("sync", "gateway", "kt"), "policies imports nothing of ours"),
    Rule("sync", ("gateway", "kt"), "sync imports only policies"),
    Rule("gateway", ("kt",), "gateway never imports kt"),
    Rule("gateway.http", ("policies", "sync", "gateway.proxy", "gateway.providers", "gateway.events",
                          "gateway.control", "gateway.server"),
         "the wire knows nothing of policies, providers, config"),
    Rule("gateway.proxy", ("socket", "ssl", "sqlite3", "gateway.http.http1", "gateway.http.connection",
                           "gateway.http.exchange", "gateway.http.request_head", "gateway.http.client",
                           "gateway.http.upstream_connection", "gateway.http.https_proxy", "gateway.events.store",
                           "gateway.events.writer", "gateway.events.disk",
                           "gateway.control.counters_sqlite",
                           "gateway.control.counters_redis", "gateway.server"),
         "the proxy touches no sockets and no SQL"),
    Rule("gateway.providers", ("gateway.http.http1", "gateway.http.connection", "gateway.http.exchange",
                               "gateway.http.request_head", "gateway.http.handler", "tornado.web", "tornado.httpserver",
                               "gateway.events", "gateway.control", "gateway.server", "policies"),
         "providers know nothing of the HTTP server nor of policies"),
    Rule("gateway.events", ("gateway.http", "gateway.proxy", "gateway.providers", "gateway.server"),
         "events know nothing of HTTP and providers"),
    Rule("gateway.control", ("gateway.proxy.base", "gateway.proxy.pipeline", "gateway.proxy.chat",
                             "gateway.proxy.relay", "gateway.proxy.messages", "gateway.proxy.embeddings",
                             "gateway.proxy.models", "gateway.proxy.responses", "gateway.proxy.validate",
                             "gateway.proxy.app",
                             "gateway.providers.translate", "gateway.providers.anthropic_request",
                             "gateway.providers.anthropic_response", "gateway.providers.anthropic_stream",
                             "gateway.providers.anthropic_content", "gateway.providers.openai_stream",
                             "gateway.providers.adapters", "gateway.providers.responses_native",
                             "gateway.providers.probes", "gateway.server"),
         "control knows no proxy internals"),
)

# (importing module, imported module) -> why the rule does not apply there.
EXCEPTIONS = {
    ("gateway.http.handler", "sync.clock"):
        "the Date header uses the repo's one once-a-second clock cache (sync.clock.per_second)",
    ("gateway.http.request_head", "gateway.proxy.errors"):
        "the wire answers a malformed or oversized request in the one error envelope",
    ("gateway.providers.adapters", "policies.model"):
        "`Target` and the canonical request are policies' value types, not policy logic",
    ("gateway.providers.responses_native", "policies.model"):
        "`Target` (model, deployment, base URL) is a value type of the config model",
    ("gateway.providers.probes", "policies.model"):
        "`Target` (credentials, base URL) is a value type of the config model",
    ("gateway.providers.azure", "policies.model"):
        "`Target` (deployment, api-version, base URL) is a value type of the config model",
    ("gateway.providers.bedrock", "policies.model"):
        "`Target` (model, region, base URL) is a value type of the config model",
    ("gateway.providers.google", "policies.model"):
        "`Target` (model, base URL) is a value type of the config model",
    ("gateway.providers.secrets", "policies.model"):
        "`SecretRef` ({env: VAR}) is a value type of the config model",
    ("gateway.providers.upstream", "policies.model"):
        "`Target` (credentials, base URL) is a value type of the config model",
}


# The repo's one helper per idea (issue 14 §2): name -> the one module that defines it.
ONE_OF_EACH = {
    "rfc3339": "sync.clock",  # RFC 3339 time stamps
    "per_second": "sync.clock",  # the once-a-second clock cache
    "backoff": "sync.backoff",  # exponential backoff with jitter
    "mask_url": "sync.credentials",  # credentials out of URLs
    "default_state_dir": "sync.publish",  # $KEEPTRUSTS_STATE_DIR or ~/.local/state/kt
    "envelope": "gateway.proxy.errors",  # the error envelope
}
# (module, name) -> why a second definition of that name is not a second helper.
SECOND_DEFINITIONS = {
    ("kt.doctor", "mask_url"): "delegates to sync.credentials.mask_url, imported on first use (kt policy lint "
                               "must not import sync)",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """Every module `path` imports (`from gateway import x` counts as `gateway.x`), relative ones resolved."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            if (ROOT / base.replace(".", "/")).is_dir():  # `from <package> import <module>`
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def sources() -> list[Path]:
    return sorted(p for top in OURS for p in (ROOT / top).rglob("*.py"))


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(modules: dict[str, Path] | None = None) -> list[str]:
    found = []
    for module, path in (modules or {module_name(p): p for p in sources()}).items():
        for rule in RULES:
            if not under(module, rule.part):
                continue
            for imported in sorted(imports_of(path, module)):
                if (module, imported) in EXCEPTIONS:
                    continue
                for prefix in rule.forbidden:
                    if under(imported, prefix):
                        found.append(f"{module} imports {imported} ({rule.says})")
    return found


def test_every_part_keeps_its_import_rules() -> None:
    assert violations() == []


def test_every_exception_is_still_needed() -> None:
    """An allow-list entry whose import is gone is deleted, so the list stays the truth."""
    modules = {module_name(p): imports_of(p) for p in sources()}
    stale = [pair for pair in EXCEPTIONS if pair[1] not in modules.get(pair[0], set())]
    assert stale == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rules bite: `from gateway import x`, a function-local import and a relative import all count."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from gateway import control\n    from ..providers import mock\n"
                     "    import policies.model\n")
    assert {"gateway.control", "gateway.providers.mock", "policies.model"} <= imports_of(probe, "gateway.http.probe")
    assert violations({"gateway.http.probe": probe}) == [
        "gateway.http.probe imports gateway.control (the wire knows nothing of policies, providers, config)",
        "gateway.http.probe imports gateway.providers (the wire knows nothing of policies, providers, config)",
        "gateway.http.probe imports gateway.providers.mock (the wire knows nothing of policies, providers, config)",
        "gateway.http.probe imports policies.model (the wire knows nothing of policies, providers, config)",
    ]


def test_one_helper_per_idea() -> None:
    """Each shared helper is defined in one module; a second `def rfc3339` (or class) is a second helper."""
    found = []
    for path in sources():
        module = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = getattr(node, "name", None) if isinstance(node, ast.FunctionDef | ast.ClassDef) else None
            if name in ONE_OF_EACH and ONE_OF_EACH[name] != module and (module, name) not in SECOND_DEFINITIONS:
                found.append(f"{module} defines {name} (the one is in {ONE_OF_EACH[name]})")
    assert found == []


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_owns_and_must_not_import(room: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "gateway" / room / "__init__.py").read_text())) or ""
    lines = doc.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Owns") and lines[1].startswith("Imports"), doc


def test_the_gateway_reports_the_installed_version() -> None:
    """gateway/ reads its version from the package metadata (not from `kt`); kt's agrees."""
    import kt
    from gateway.server import VERSION

    assert VERSION == kt.__version__ == version("kt-gateway")


def test_no_test_module_imports_another() -> None:
    """Shared test helpers live in helper modules (tests/<name>.py without `test_`): importing a test module
    would run its module-level code and tie one module's run to another's."""
    found = [f"{module_name(path)} imports {imported}"
             for path in sorted((ROOT / "tests").rglob("*.py"))
             for imported in sorted(imports_of(path))
             if imported.rpartition(".")[2].startswith("test_") and under(imported, "tests")]
    assert found == []
