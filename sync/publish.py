"""The state-directory protocol (DESIGN Contract 2) on the writing side.

    <state>/revisions/<sha>/   the tree of one commit; never modified once published
    <state>/current            relative symlink -> revisions/<sha>, replaced only by rename(2)

A commit is exported into `revisions/.tmp-*`, validated there, renamed to its final name and
only then published by renaming a fresh symlink over `current`. A crash at any point leaves
`current` pointing at a complete revision (old or new); leftovers start with `.tmp-` and are
removed by the next run. When `revisions/<sha>` already exists (republishing after a hand edit,
or a rewind to a commit whose copy is still kept), the fresh export takes its place with one
atomic `renameat2(RENAME_EXCHANGE)`, so a reader through `current` never sees a missing tree.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from policies import Config, ConfigError, load_config
from sync.manifest import SUFFIX, manifest_path

REVISIONS = "revisions"
CURRENT = "current"
TMP = ".tmp-"
CONFIG_SUFFIXES = (".yaml", ".yml")
_AT_FDCWD = -100
STATE_DIR_ENV = "KEEPTRUSTS_STATE_DIR"
_RENAME_EXCHANGE = 2
Compile = Callable[[Path], Config]  # reads, validates and compiles one config file; ConfigError if invalid


def default_state_dir() -> Path:
    """`$KEEPTRUSTS_STATE_DIR`, else `~/.local/state/kt`: the one place that knows the default (read when asked)."""
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local" / "state" / "kt"

def check_config_path(path: str) -> str:
    """Normalise the repo-relative config path; ValueError if it escapes the tree."""
    p = PurePosixPath(path.strip() or ".")
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"--path must be relative to the repository root, got {path!r}")
    return str(p)


def current_dir(state: Path) -> Path | None:
    """The revision directory `current` points at, or None if it is missing or dangling."""
    link = state / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        return None
    resolved = (state / target) if not os.path.isabs(target) else Path(target)
    return resolved if resolved.is_dir() else None


def new_tmp_dir(state: Path, sha: str) -> Path:
    """A fresh, not yet existing path to export commit `sha` into."""
    (state / REVISIONS).mkdir(parents=True, exist_ok=True)
    return state / REVISIONS / f"{TMP}{sha[:12]}-{secrets.token_hex(4)}"


def install(state: Path, tmp: Path, sha: str) -> Path:
    """Move the validated export `tmp` to `revisions/<sha>` (replacing an old copy atomically)."""
    revisions = state / REVISIONS
    final = revisions / sha
    if final.exists():
        _exchange(tmp, final)  # `tmp` now holds the old copy
        _remove(tmp)
    else:
        os.rename(tmp, final)
    os.utime(final)  # retention orders revisions by publish time
    _fsync_dir(revisions)
    return final


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (Linux renameat2); fall back to two renames elsewhere."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    flags = (_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if renameat2 is not None and renameat2(*flags) == 0:
        return
    aside = a.with_name(a.name + "-old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def flip(state: Path, target: Path) -> None:
    """Point `current` at `target` atomically: new relative symlink, then rename over the old one."""
    tmp = state / f"{TMP}current-{secrets.token_hex(4)}"
    os.symlink(os.path.relpath(target, state), tmp)
    try:
        os.rename(tmp, state / CURRENT)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(state)


def cleanup(state: Path) -> None:
    """Remove leftovers of an interrupted run (only call while holding the agent lock)."""
    for parent in (state, state / REVISIONS):
        if not parent.is_dir():
            continue
        for leftover in parent.glob(f"{TMP}*"):
            _remove(leftover)


def prune(state: Path, keep: int) -> list[str]:
    """Keep the `keep` newest revisions (and always the current one); return the removed names."""
    revisions = state / REVISIONS
    if not revisions.is_dir():
        return []
    live = current_dir(state)
    dirs = [d for d in revisions.iterdir() if not d.name.startswith(".") and d.is_dir() and not d.is_symlink()]
    dirs.sort(key=lambda d: d.lstat().st_mtime, reverse=True)
    removed = []
    kept = 0
    for d in dirs:
        if live is not None and d.name == live.name:
            continue
        if kept < keep - (1 if live is not None else 0):
            kept += 1
            continue
        _remove(d)
        manifest_path(d).unlink(missing_ok=True)
        removed.append(d.name)
    for orphan in revisions.glob(f"*{SUFFIX}"):  # a manifest whose revision is gone
        if not (revisions / orphan.name.removesuffix(SUFFIX)).is_dir():
            orphan.unlink(missing_ok=True)
    return removed


def config_files(root: Path, path: str) -> list[Path]:
    """The config files at `path` under `root`: the file itself, or every *.yaml/*.yml below a directory."""
    target = root / path
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.suffix in CONFIG_SUFFIXES and p.is_file())
    return [target] if target.is_file() else []


def content_digest(root: Path, path: str) -> str | None:
    """sha256 over the config files at `path` (names and bytes); None if there are none."""
    files = config_files(root, path)
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            data = b"\0unreadable"
        h.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def validate(root: Path, path: str, load: Compile = load_config) -> tuple[list[dict], dict[str, Config]]:
    """(lint findings as dicts with `file`, {repo-relative path: compiled Config}) for the config at `path`;
    no findings means it may be published. Each file is compiled once, by `load` (the embedded
    gateway passes its own, so the reload can take this result instead of compiling again)."""
    files = config_files(root, path)
    if not files:
        what = "no *.yaml files in directory" if (root / path).is_dir() else "no such file in the commit"
        return [{"file": path, "code": "E100", "path": "", "message": f"{path}: {what}",
                 "suggestion": "check --path and the branch", "line": None}], {}
    findings: list[dict] = []
    configs: dict[str, Config] = {}
    for f in files:
        rel = str(f.relative_to(root))
        try:
            configs[rel] = load(f)
        except ConfigError as exc:
            findings += [{"file": rel, **finding.as_dict()} for finding in exc.findings]
        except Exception as exc:  # a loader bug must refuse the revision, not crash the agent
            findings.append({"file": rel, "code": "E999", "path": "", "message": f"cannot load: {exc!r}",
                             "suggestion": "", "line": None})
    return findings, configs


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
