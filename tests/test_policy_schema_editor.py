"""The schema in a real editor language server: yaml-language-server completes and flags a policy config.

The config names its schema the way `kt init` writes it (the modeline and the schema file beside
it); the server is the one VS Code's YAML extension runs (`npm install -g yaml-language-server`,
which .ci/install-tools does). Skipped where it is not installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kt.commands.init import MODELINE, SCHEMA_FILE
from policies.json_schema import packaged_schema_text
from tests import EXAMPLE_CONFIG
from tests.lsp_client import LspClient

SERVER = shutil.which("yaml-language-server")
pytestmark = pytest.mark.skipif(SERVER is None, reason="yaml-language-server is not installed (.ci/install-tools)")


@pytest.fixture
def editor(tmp_path: Path):
    (tmp_path / SCHEMA_FILE).write_text(packaged_schema_text())
    assert SERVER is not None
    with LspClient([SERVER, "--stdio"], tmp_path) as lsp:
        yield lsp


def messages(diagnostics: list[dict]) -> list[tuple[int, str]]:
    return sorted((d["range"]["start"]["line"], d["message"]) for d in diagnostics)


def test_a_valid_config_has_no_diagnostics(editor: LspClient, tmp_path: Path) -> None:
    text = MODELINE + (EXAMPLE_CONFIG).read_text()
    assert editor.open(tmp_path / "policy-config.yaml", text) == []


def test_errors_are_flagged_where_they_are(editor: LspClient, tmp_path: Path) -> None:
    text = MODELINE + (
        "pack: {name: shop, version: 1.2.3, enabled: true}\n"  # line 1
        "policies:\n"
        "  chain: [dlp-filter, audit-loger]\n"  # line 3: unknown kind
        "policy:\n"
        "  dlp-filter: {action: mask, colour: red}\n"  # line 5: enum and unknown key
        "  pii-detector: {redaction: {marker_format: label}}\n"
    )
    found = messages(editor.open(tmp_path / "policy-config.yaml", text))
    lines = {line for line, _ in found}
    assert lines == {3, 5}, found
    assert any("audit-logger" in m and "dlp-filter" in m for line, m in found if line == 3)  # the valid kinds
    assert any("redact" in m and "block" in m for line, m in found if line == 5)
    assert any("colour" in m for line, m in found if line == 5)


def test_completion_offers_kinds_and_options_and_hover_describes_them(editor: LspClient, tmp_path: Path) -> None:
    text = MODELINE + (
        "pack: {name: shop, version: 1.2.3, enabled: true}\n"
        "policies:\n"
        "  chain: [pii-detector]\n"
        "policy:\n"
        "  pii-detector:\n"  # line 5
        "    action: redact\n"  # line 6
        "    \n"  # line 7: the cursor, inside pii-detector's block
        "  \n"  # line 8: the cursor, inside `policy`
    )
    path = tmp_path / "policy-config.yaml"
    editor.open(path, text)
    assert {"dlp-filter", "rbac", "audit-logger"} <= set(editor.complete(path, 8, 2))
    options = set(editor.complete(path, 7, 4))
    assert {"pci_mode", "healthcare_mode", "redaction", "detect_patterns"} <= options
    assert "Redact personal data or block the request." in editor.hover(path, 6, 6)
