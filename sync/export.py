"""Export what the config needs from one commit: the `--path` file, or the *.yaml/*.yml files below it.

Only blobs of that commit are written, as plain files: nothing else of the tree (a large file
beside the config is never read), no `.git`, no links. A symlink on the way is resolved by git
inside the commit (`cat-file --follow-symlinks`): one that ends at a file of the commit is written
as that file's bytes; one that leaves the commit, dangles, loops or names a directory refuses the
commit (`UnsafeTree`). Blobs are streamed from `git cat-file --batch` in chunks (raw: no filter,
smudge or textconv driver runs), hashed on the way for the publication manifest. After writing,
every path below the export is resolved strictly and must stay inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Protocol

from sync.errors import GitError, UnsafeTree
from sync.publish import CONFIG_SUFFIXES

MAX_FILES = 10_000
CHUNK = 1 << 16
_WHY = {
    "symlink": "is a symlink that leaves the repository",
    "dangling": "is a symlink that does not end at a file of the commit (links are resolved inside the commit only)",
    "loop": "is a symlink loop",
    "notdir": "is a path through something that is not a directory",
    "tree": "is a symlink to a directory (only links to files are followed)",
    "commit": "is a submodule",
}


class GitRunner(Protocol):
    """What the export needs from the clone (implemented by `sync.repo.Mirror`)."""

    def _git(self, args: list[str], timeout: float, env: dict[str, str] | None = None,
             secrets: list[str] | None = None, input: bytes | None = None) -> str: ...

    def popen(self, args: list[str]) -> subprocess.Popen[bytes]: ...


def export_config(git: GitRunner, sha: str, path: str, dest: Path, timeout: float) -> dict[str, str]:
    """Write the config files of commit `sha` at `path` below the new directory `dest`.

    Returns {repo-relative path: sha256} of what was written (empty when `path` is not in the commit)."""
    deadline = time.monotonic() + timeout
    dest.mkdir(parents=True)
    spec = f"{sha}^{{tree}}" if path == "." else f"{sha}:{path}"
    kind, oid = _resolve(git, [spec], deadline)[0]
    files: dict[str, str] = {}
    if kind == "blob":
        files[path] = oid
    elif kind == "tree":
        links: list[str] = []
        listing = git._git(["ls-tree", "-r", "-z", "--full-tree", oid], _left(deadline))
        for record in filter(None, listing.split("\0")):
            meta, _, rel = record.partition("\t")
            mode, typ, blob = meta.split(" ")
            full = rel if path == "." else f"{path}/{rel}"
            if typ != "blob" or PurePosixPath(rel).suffix not in CONFIG_SUFFIXES:
                continue  # submodules and files the config does not read are never exported
            _check_rel(full)
            if mode == "120000":
                links.append(full)
            else:
                files[full] = blob
        for full, (kind, blob) in zip(links, _resolve(git, [f"{sha}:{link}" for link in links], deadline),
                                      strict=True):
            if kind != "blob":
                raise UnsafeTree(f"{full} {_WHY.get(kind, 'cannot be resolved')}")
            files[full] = blob
    elif kind == "missing":
        # Not in the commit (validation says so), unless the clone lost objects: then git fails here or
        # still lists the path, and the agent re-clones.
        listed = git._git(["ls-tree", "-z", sha, "--", path], _left(deadline))
        if listed.split(" ")[1:2] == ["commit"]:
            raise UnsafeTree(f"{path} {_WHY['commit']}")
        if listed:
            raise GitError("repo", f"the clone lacks objects of {path} in commit {sha[:12]}")
    else:
        raise UnsafeTree(f"{path} {_WHY.get(kind, 'cannot be resolved')}")
    if len(files) > MAX_FILES:
        raise UnsafeTree(f"{path} holds {len(files)} config files (at most {MAX_FILES})")
    digests = _write_blobs(git, files, dest, deadline)
    check_contained(dest)
    return digests


def check_contained(root: Path) -> None:
    """Refuse any link below `root` and anything whose real path leaves it (strict resolution)."""
    top = os.path.realpath(root, strict=True)
    for parent, dirs, names in os.walk(root, followlinks=False):
        for name in (*dirs, *names):
            p = os.path.join(parent, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                raise UnsafeTree(f"{rel} is a symlink (a published revision holds plain files only)")
            try:
                real = os.path.realpath(p, strict=True)
            except OSError as exc:
                raise UnsafeTree(f"{rel} cannot be resolved: {exc.strerror}") from None
            if not real.startswith(top + os.sep):
                raise UnsafeTree(f"{rel} resolves to {real}, outside the revision")


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.1)


def _check_rel(rel: str) -> None:
    parts = rel.split("/")
    if "\n" in rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UnsafeTree(f"path {rel!r} cannot be written safely")


def _resolve(git: GitRunner, specs: list[str], deadline: float) -> list[tuple[str, str]]:
    """(kind, oid) per `<sha>:<path>`, symlinks followed inside the commit. kind: blob, tree, commit,
    missing, or git's refusal (symlink = leaves the repository, dangling, loop, notdir)."""
    if not specs:
        return []
    if any("\n" in s for s in specs):
        raise UnsafeTree("a path in the commit contains a newline")
    data = "".join(f"{s}\n" for s in specs).encode("utf-8", "surrogateescape")
    out = git._git(["cat-file", "--batch-check", "--follow-symlinks"], _left(deadline), input=data)
    lines = out.split("\n")
    answers: list[tuple[str, str]] = []
    i = 0
    try:
        for _ in specs:
            line = lines[i]
            i += 1
            words = line.split(" ")
            if line.endswith(" missing"):
                answers.append(("missing", ""))
            elif words[0] in ("symlink", "dangling", "loop", "notdir"):
                i += 1  # the next line holds the link or path git stopped at
                answers.append((words[0], ""))
            else:
                oid, typ, _size = words
                answers.append((typ, oid))
    except (IndexError, ValueError):
        raise UnsafeTree("git's answer on the commit's symlinks could not be read") from None
    return answers


def _write_blobs(git: GitRunner, files: dict[str, str], dest: Path, deadline: float) -> dict[str, str]:
    """Stream each blob from one `git cat-file --batch` into its file; {path: sha256}."""
    if not files:
        return {}
    proc = git.popen(["cat-file", "--batch"])
    timer = threading.Timer(_left(deadline), proc.kill)
    timer.start()
    digests: dict[str, str] = {}
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for rel, oid in sorted(files.items()):
            proc.stdin.write(f"{oid}\n".encode())
            proc.stdin.flush()
            header = proc.stdout.readline().decode("ascii", "replace").split()
            if not header:
                raise _stopped(deadline)
            if header[-1] == "missing":
                raise GitError("repo", f"the clone lacks object {oid} ({rel})")
            if len(header) != 3 or header[1] != "blob":
                raise UnsafeTree(f"{rel}: object {oid} is not a blob")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:
                left = int(header[2])
                while left:
                    chunk = proc.stdout.read(min(CHUNK, left))
                    if not chunk:
                        raise _stopped(deadline)
                    f.write(chunk)
                    h.update(chunk)
                    left -= len(chunk)
                f.flush()
                os.fsync(f.fileno())
            proc.stdout.read(1)  # the newline after each object
            digests[rel] = h.hexdigest()
        proc.stdin.close()
    except BrokenPipeError:
        raise _stopped(deadline) from None
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return digests


def _stopped(deadline: float) -> GitError:
    if time.monotonic() >= deadline - 0.05:
        return GitError("timeout", "git cat-file did not finish within the sync timeout (killed)")
    return GitError("repo", "git cat-file stopped while exporting the commit")
