"""The publication manifest: what `revisions/<sha>/` held when the agent published it.

    <state>/revisions/<sha>.digest   {"revision": sha, "files": {repo-relative path: sha256}}

Written (temp + fsync + rename) before the revision is installed and `current` flips to it. The
gateway checks a revision against it before loading (`verify`); the agent checks the applied one
at every run and restores it from Git when it no longer matches. A revision without a manifest,
with a file added, removed, edited or replaced by a link, is not what was published.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

SUFFIX = ".digest"


class Tampered(Exception):
    """The revision directory does not match its manifest; the message names the file."""


def manifest_path(revision: Path) -> Path:
    """`revisions/<sha>.digest` for `revisions/<sha>`."""
    return revision.with_name(revision.name + SUFFIX)


def write_manifest(revision: Path, sha: str, files: dict[str, str]) -> None:
    """Record `files` ({path: sha256}) as the content of `revision` (the final path, may not exist yet)."""
    target = manifest_path(revision)
    tmp = target.with_name(f".tmp-digest-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"revision": sha, "files": dict(sorted(files.items()))}, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(revision: Path) -> dict[str, str]:
    """{path: sha256} recorded for `revision`; Tampered when there is none or it is unreadable."""
    try:
        data = json.loads(manifest_path(revision).read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("revision") != revision.name or not isinstance(files, dict):
            raise ValueError("manifest names another revision")
    except FileNotFoundError:
        raise Tampered(f"revision {revision.name[:12]} has no digest recorded (not published by the agent)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Tampered(f"the digest of revision {revision.name[:12]} cannot be read: {exc}") from None
    return {str(k): str(v) for k, v in files.items()}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks; never follows a final symlink."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def verify(revision: Path) -> dict[str, str]:
    """Check every file of `revision` against its manifest; return the manifest. Raises Tampered."""
    recorded = read_manifest(revision)
    if not revision.is_dir() or revision.is_symlink():
        raise Tampered(f"revision {revision.name[:12]} is not a directory")
    seen: set[str] = set()
    for parent, dirs, names in os.walk(revision, followlinks=False):
        for name in (*dirs, *names):
            p = Path(parent, name)
            rel = p.relative_to(revision).as_posix()
            if p.is_symlink():
                raise Tampered(f"{rel} in revision {revision.name[:12]} is a symlink; the agent publishes plain files")
            if p.is_dir():
                continue
            if rel not in recorded:
                raise Tampered(f"{rel} in revision {revision.name[:12]} was not published by the agent")
            try:
                actual = file_sha256(p)
            except OSError as exc:
                raise Tampered(f"{rel} in revision {revision.name[:12]} cannot be read: {exc.strerror}") from None
            if actual != recorded[rel]:
                raise Tampered(f"{rel} in revision {revision.name[:12]} was modified after publishing "
                               f"(sha256 {actual[:12]}, recorded {recorded[rel][:12]})")
            seen.add(rel)
    missing = sorted(set(recorded) - seen)
    if missing:
        raise Tampered(f"{missing[0]} is missing from revision {revision.name[:12]}")
    return recorded


def record(revision: Path) -> dict[str, str]:
    """Hash the files now in `revision` and write its manifest (for a revision assembled outside the agent)."""
    files = {p.relative_to(revision).as_posix(): file_sha256(p)
             for p in sorted(revision.rglob("*")) if p.is_file() and not p.is_symlink()}
    write_manifest(revision, revision.name, files)
    return files
