"""The safe YAML loader: bad input becomes a clear finding, never an exception."""

from __future__ import annotations

import pytest

from policies.yaml_loader import MAX_BYTES, load_yaml
from tests.policy_samples import BOMB


def only(data: bytes):
    parsed = load_yaml(data)
    assert parsed.document is None
    assert len(parsed.findings) == 1
    return parsed.findings[0]


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"", "E018", "empty"),
        (b"   \n\n", "E018", "empty"),
        (b"# only a comment\n", "E018", "no YAML document"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "E016", "binary"),
        (b"pack: caf\xe9\n", "E016", "not UTF-8"),
        (b"- a\n- b\n", "E011", "mapping"),
        (b"just a string", "E011", "mapping"),
        (b"&a [*a]", "E017", "recursive"),
        (BOMB.encode(), "E017", "alias bomb"),
        (b"a: !!python/object/apply:os.system [ls]\n", "E010", "unsupported YAML"),
        (b"a:\n  - [" * 1 + b"[" * 200 + b"]" * 200 + b"]\n", "E017", "deeper"),
    ],
)
def test_bad_input_is_one_clear_finding(data: bytes, code: str, words: str) -> None:
    finding = only(data)
    assert finding.code == code
    assert words in finding.message


def test_syntax_error_carries_line_and_column() -> None:
    finding = only(b"pack:\n  name: x\n  version: [1.0.0\npolicies: {}\n")
    assert finding.code == "E010"
    assert finding.line == 4 and finding.column is not None
    assert "line 4" in finding.message


def test_large_file_refused_before_parsing() -> None:
    finding = only(b"a: " + b"x" * (10 * 1000 * 1000) + b"\n")
    assert finding.code == "E015"
    assert "10.0 MB" in finding.message and "1 MiB" in finding.message


def test_limit_is_configurable() -> None:
    assert load_yaml(b"a: 1\n", max_bytes=2).findings[0].code == "E015"


def test_duplicate_key_reported_with_both_lines() -> None:
    parsed = load_yaml(b"pack:\n  name: a\n  name: b\n")
    assert parsed.document == {"pack": {"name": "b"}}
    (finding,) = parsed.findings
    assert (finding.code, finding.path, finding.line) == ("E014", "pack.name", 3)
    assert "line 2" in finding.message


def test_lines_of_paths_and_plain_values() -> None:
    parsed = load_yaml(b"# c\npack:\n  name: a\nlist:\n  - x\n  - {d: 2024-01-01}\n")
    assert parsed.findings == ()
    assert parsed.document["list"][1]["d"] == "2024-01-01"  # no implicit timestamps
    assert parsed.lines["pack.name"] == 3
    assert parsed.lines["list[1]"] == 6
    assert parsed.lines["list[1].d"] == 6


def test_a_few_aliases_and_merge_keys_are_fine() -> None:
    parsed = load_yaml(b"base: &b {x: 1}\none: *b\ntwo: {<<: *b, y: 2}\n")
    assert parsed.findings == ()
    assert parsed.document["two"] == {"x": 1, "y": 2}


def test_utf8_bom_accepted() -> None:
    assert load_yaml(b"\xef\xbb\xbfa: 1\n").document == {"a": 1}


def test_max_bytes_is_one_mib() -> None:
    assert MAX_BYTES == 1 << 20
