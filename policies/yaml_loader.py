"""Safe YAML loading for policy configs.

Refuses what a config file never legitimately is (binary, not UTF-8, empty, huge, an alias
bomb, nested absurdly deep) with a clear finding instead of a traceback or an exhausted
process. A duplicate key is an error (PyYAML would silently keep the last one). Timestamps
stay strings. The line of every dotted path is kept so findings can point at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from policies.findings import Finding

MAX_BYTES = 1 << 20  # 1 MiB: a policy config is a few KB
MAX_ALIAS_EXPANSION = 10_000  # nodes that aliases may add beyond the nodes written out
MAX_DEPTH = 100

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """The safe loader without implicit timestamps (a date stays the string it was written as)."""

    yaml_implicit_resolvers = {
        ch: [r for r in resolvers if r[0] != _TIMESTAMP] for ch, resolvers in _Base.yaml_implicit_resolvers.items()
    }


@dataclass(frozen=True)
class ParsedYaml:
    """A parsed document (None when it could not be used), the line of each path, findings."""

    document: dict[str, Any] | None
    lines: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    findings: tuple[Finding, ...] = ()


def join_path(parent: str, key: Any) -> str:
    """The dotted path of `key` below `parent` (`a.b`, `a[0]`)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _fail(code: str, message: str, suggestion: str = "", line: int | None = None, column: int | None = None):
    return ParsedYaml(None, findings=(Finding(code, "", message, suggestion, line, column),))


def too_large(size: int, max_bytes: int = MAX_BYTES) -> Finding:
    """The finding for a file of `size` bytes over the limit."""
    shown = f"{size / 1_000_000:.1f} MB" if size >= 2_000_000 else f"{size} bytes"
    limit = f"{max_bytes >> 20} MiB" if max_bytes % (1 << 20) == 0 else f"{max_bytes} bytes"
    return Finding("E015", "", f"file is too large ({shown}; the limit is {limit})",
                   "a policy config is a few KB; check that this is the right file")


class _Refused(Exception):
    def __init__(self, finding: Finding) -> None:
        self.finding = finding


def _check_expansion(root: yaml.Node) -> None:
    """Refuse alias bombs (aliases that multiply the document), recursive aliases and deep nesting."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise _Refused(Finding("E017", "", "recursive YAML alias (a node that contains itself)",
                                   "remove the alias that refers to its own anchor", node.start_mark.line + 1))
        if depth > MAX_DEPTH:
            raise _Refused(Finding("E017", "", f"YAML nested deeper than {MAX_DEPTH} levels",
                                   "a policy config is only a few levels deep", node.start_mark.line + 1))
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        in_progress.discard(key)
        sizes[key] = total
        distinct = len(sizes)
        if total - distinct > MAX_ALIAS_EXPANSION:
            raise _Refused(Finding(
                "E017", "", f"YAML aliases expand to more than {MAX_ALIAS_EXPANSION} extra nodes (an alias bomb?)",
                "write the values out, or use far fewer aliases", node.start_mark.line + 1))
        return total

    size(root, 0)


def _walk(node: yaml.Node, path: str, lines: dict[str, int], findings: list[Finding], seen: set[int]) -> None:
    """Record the line of each path and report duplicate keys (each node once, aliases not re-walked)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            child_path = join_path(path, i)
            lines.setdefault(child_path, child.start_mark.line + 1)
            _walk(child, child_path, lines, findings, seen)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value in node.value:
            if key_node.tag == _MERGE:
                _walk(value, path, lines, findings, seen)
                continue
            line = key_node.start_mark.line + 1
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            child_path = join_path(path, name)
            ident = (key_node.tag, str(name))
            if ident in first:
                findings.append(Finding(
                    "E014", child_path, f"duplicate key '{name}' (first defined on line {first[ident]})",
                    "keep one of them: YAML would silently use only the last", line, key_node.start_mark.column + 1))
                continue
            first[ident] = line
            lines.setdefault(child_path, line)
            _walk(value, child_path, lines, findings, seen)


def load_yaml(data: bytes, source: str = "<memory>", max_bytes: int = MAX_BYTES) -> ParsedYaml:
    """Parse policy-config bytes safely; never raises for bad input (see `ParsedYaml.findings`)."""
    if len(data) > max_bytes:
        return ParsedYaml(None, findings=(too_large(len(data), max_bytes),))
    if b"\x00" in data:
        return _fail("E016", "binary file: this is not a YAML policy config", "point --file at policy-config.yaml")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return _fail("E016", f"file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                     "save the file as UTF-8", line)
    if not text.strip():
        return _fail("E018", "file is empty", "start from `kt init`, or write at least `pack` and `policies`")
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return _fail("E018", "file contains no YAML document (only comments?)",
                             "start from `kt init`, or write at least `pack` and `policies`")
            _check_expansion(node)
            lines: dict[str, int] = {"": node.start_mark.line + 1}
            findings: list[Finding] = []
            _walk(node, "", lines, findings, set())
            doc = loader.construct_document(node)
        finally:
            loader.dispose()
    except _Refused as exc:
        return ParsedYaml(None, findings=(exc.finding,))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        where = f" at line {line}, column {column}" if line else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError):
            return _fail("E010", f"unsupported YAML{where}: {problem}",
                         "use plain YAML values (no tags, no complex keys)", line, column)
        return _fail("E010", f"YAML syntax error{where}: {problem}", "fix the YAML at that position", line, column)
    except yaml.YAMLError as exc:
        return _fail("E010", f"YAML error: {exc}".splitlines()[0], "fix the YAML")
    except RecursionError:
        return _fail("E017", "YAML nested too deeply", "a policy config is only a few levels deep")
    if not isinstance(doc, dict):
        kind = "a list" if isinstance(doc, list) else f"a single value ({type(doc).__name__})"
        return ParsedYaml(None, MappingProxyType(lines), (
            *findings,
            Finding("E011", "", f"a policy config must be a mapping of keys, not {kind}",
                    "start with `pack:` and `policies:` at the top level", 1),
        ))
    return ParsedYaml(doc, MappingProxyType(lines), tuple(findings))


def parse_yaml(data: bytes, source: str) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Parse `data`; return (document or None, findings). See `load_yaml`."""
    parsed = load_yaml(data, source)
    return parsed.document, list(parsed.findings)
