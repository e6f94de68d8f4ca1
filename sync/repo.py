"""The agent's private clone: fetch one ref (branch, tag or commit) shallowly, export one commit's tree, repair itself.

The clone is a bare repository at `<state>/repo`; nothing is ever checked out inside it, so the
only state is objects and two refs (`refs/kt/head`, the fetched head; `refs/kt/applied`, the
published commit). Git runs isolated from the host's git setup (sync.gitenv), under a timeout
that kills it and its children, with credentials only in its environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sync.credentials import CredentialError, Credentials, mask_url, redact
from sync.errors import GitError, UnsafeTree
from sync.export import export_config
from sync.gitenv import git_command, git_environment, git_home

__all__ = ["GitError", "Mirror", "Remote", "UnsafeTree", "check_ref_name", "ref_kind"]

log = logging.getLogger("kt.sync")
HEAD_REF = "refs/kt/head"
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
SCAN_REFS = "refs/kt/scan/"  # all branches and tags, fetched only to look up a SHA the server will not serve by SHA
_MISSING_REF = re.compile(r"couldn't find remote ref|could not find remote ref", re.IGNORECASE)
_REFUSED_SHA = re.compile(r"not our ref|unadvertised object|allow request for unadvertised", re.IGNORECASE)
DEEPEN_REF = "refs/kt/deepen"  # scratch ref of a deepening fetch (the ref may have moved since the fetch)
APPLIED_REF = "refs/kt/applied"  # keeps the applied commit's objects (restores after tampering) through gc
_AUTH = re.compile(
    r"authentication failed|could not read (username|password)|terminal prompts disabled|permission denied"
    r"|host key verification failed|returned error: 40[13]|http 40[13]|access denied|invalid credentials",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Remote:
    """What to fetch: the URL (may carry credentials; always printed masked), the ref and the depth.

    `ref` is a branch, a tag (lightweight or annotated), a full ref name (`refs/heads/x`,
    `refs/tags/x`) or a full commit SHA; a short name is looked up as a branch, then as a tag."""

    url: str
    ref: str = "main"
    depth: int = 1  # 0 = full history
    credentials: Credentials = field(default_factory=Credentials)

    def __post_init__(self) -> None:
        head = self.url.split("/", 1)[0]
        if "://" not in self.url and ":" not in head:  # a local path: absolute, since git runs inside the clone
            object.__setattr__(self, "url", str(Path(self.url).expanduser().absolute()))

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def pinned(self) -> bool:
        """True when `ref` is a commit SHA (nothing to follow)."""
        return bool(_SHA.match(self.ref))

    def sources(self) -> list[str]:
        """The remote refs `ref` may name, in the order they are tried."""
        if self.ref.startswith("refs/"):
            return [self.ref]
        return [f"refs/heads/{self.ref}", f"refs/tags/{self.ref}"]


def ref_kind(source: str) -> str:
    """`branch`, `tag`, `commit` or `ref` for a resolved source (a full ref name or a SHA)."""
    if _SHA.match(source):
        return "commit"
    if source.startswith("refs/heads/"):
        return "branch"
    return "tag" if source.startswith("refs/tags/") else "ref"


def check_ref_name(ref: str) -> None:
    """Raise ValueError for a ref git would refuse (or that could pass for an option)."""
    if (not ref or ref.startswith(("-", "/")) or ref.endswith(("/", ".", ".lock")) or ".." in ref or "//" in ref
            or not re.fullmatch(r"[A-Za-z0-9._/-]+", ref)):
        raise ValueError(f"invalid ref {ref!r}: give a branch, a tag or a full 40-hex commit SHA")


class Mirror:
    """The bare clone at `path`; `askpass` is where the credential helper script is written."""

    def __init__(self, path: Path, askpass: Path) -> None:
        self.path = Path(path)
        self.askpass = Path(askpass)
        self.source: str | None = None  # what the last fetch resolved the ref to (`refs/tags/v1`, a SHA)
        self.home = self.path.parent  # git's private HOME lives in the state dir (sync.gitenv.git_home)

    def _git(self, args: list[str], timeout: float, env: dict[str, str] | None = None,
             secrets: list[str] | None = None, input: bytes | None = None) -> str:
        """Run one isolated git command (see sync.gitenv) in the clone; its stdout, stripped of the last newline."""
        cmd = git_command(args)
        full_env = git_environment(git_home(self.home), env)
        try:
            proc = subprocess.Popen(cmd, cwd=self.path, env=full_env,
                                    stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise GitError("repo", f"cannot run git: {exc.strerror}") from None
        try:
            out, err = proc.communicate(input, timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise GitError("timeout", f"git {args[0]} did not finish within {timeout:g} s (killed)") from None
        if proc.returncode:
            stderr = redact(err.decode("utf-8", "replace").strip(), secrets or [])
            raise GitError("repo", f"git {args[0]} failed: {_last_lines(stderr)}")
        return out.decode("utf-8", "surrogateescape").removesuffix("\n")

    def healthy(self) -> bool:
        """Quick check: a bare repo we can open, with no lock file left by a killed git."""
        if not (self.path / "HEAD").is_file() or not (self.path / "objects").is_dir():
            return False
        locks = [*self.path.glob("*.lock"), *(self.path / "refs").rglob("*.lock")]
        if locks:
            return False
        try:
            return self._git(["rev-parse", "--is-bare-repository"], 30) == "true"
        except GitError:
            return False

    def intact(self, timeout: float = 60) -> bool:
        """Deep check after a failure: every object reachable from our ref is present."""
        try:
            self._git(["fsck", "--connectivity-only", "--no-progress", "--no-dangling"], timeout)
            return True
        except GitError:
            return False

    def reset(self) -> None:
        """Throw the clone away and start an empty one (the next fetch re-clones)."""
        if self.path.exists() or self.path.is_symlink():
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path)
            else:
                self.path.unlink()
        self.path.mkdir(parents=True)
        self._git(["init", "--bare", "--quiet"], 30)
        self._git(["config", "gc.auto", "0"], 30)

    def ensure(self) -> bool:
        """Make the clone usable; True if it had to be rebuilt."""
        if self.healthy():
            return False
        self.reset()
        return True

    def fetch(self, remote: Remote, timeout: float) -> str:
        """Fetch `remote.ref` into our ref (following force-pushes and moved tags); return the commit sha."""
        try:
            url, env, secrets = remote.credentials.git_env(remote.url, self.askpass)
        except CredentialError as exc:
            raise GitError("auth", str(exc)) from None
        deadline = time.monotonic() + timeout
        if remote.pinned:
            self.source = remote.ref
            self._fetch_commit(remote, url, env, secrets, remote.ref, HEAD_REF, deadline)
        else:
            sources = remote.sources()
            if self.source in sources:  # the kind found last time first: one round trip per poll
                sources.remove(self.source)
                sources.insert(0, self.source)
            for i, source in enumerate(sources):
                try:
                    self._fetch_refspecs(remote, url, env, secrets, [f"+{source}:{HEAD_REF}"], deadline)
                    self.source = source
                    break
                except GitError as exc:
                    if not _MISSING_REF.search(str(exc)) or i == len(sources) - 1:
                        raise _classify(exc, remote) from None
        sha = self._git(["rev-parse", "--verify", f"{HEAD_REF}^{{commit}}"], 30)
        if not _SHA.match(sha):
            raise GitError("repo", f"unexpected revision {sha!r} after fetch")
        return sha

    def _fetch_refspecs(self, remote: Remote, url: str, env: dict[str, str], secrets: list[str],
                        refspecs: list[str], deadline: float, depth: int | None = None, deepen: int = 0) -> None:
        depth = remote.depth if depth is None else depth
        args = ["fetch", "--no-tags", "--no-auto-gc", "--no-write-fetch-head", "--quiet"]
        if deepen > 0:
            args.append(f"--deepen={deepen}")
        elif depth > 0:
            args.append(f"--depth={depth}")
        elif (self.path / "shallow").exists():
            args.append("--unshallow")
        self._git([*args, "--", url, *refspecs], deadline - time.monotonic(), env, secrets)

    def _fetch_commit(self, remote: Remote, url: str, env: dict[str, str], secrets: list[str], sha: str,
                      ref: str, deadline: float) -> None:
        """Commit `sha` into `ref`: nothing to do when `ref` already holds it; else fetch it by SHA, and if
        the server refuses unadvertised objects, fetch every branch and tag and look it up there."""
        with contextlib.suppress(GitError):
            if self._git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], 30) == sha:
                return
        try:
            self._fetch_refspecs(remote, url, env, secrets, [f"+{sha}:{ref}"], deadline)
            return
        except GitError as exc:
            if exc.kind == "timeout" or not _REFUSED_SHA.search(str(exc)):
                raise _classify(exc, remote) from None
            log.info("%s does not serve commits by SHA; looking %s up in its branches and tags",
                     remote.masked_url, sha[:12])
        try:
            self._fetch_refspecs(remote, url, env, secrets, [f"+refs/heads/*:{SCAN_REFS}heads/*",
                                                             f"+refs/tags/*:{SCAN_REFS}tags/*"], deadline, depth=0)
            try:
                self._git(["cat-file", "-e", f"{sha}^{{commit}}"], 30)
            except GitError:
                raise GitError("branch_missing",
                               f"commit {sha} is not on any branch or tag of {remote.masked_url}") from None
            self._git(["update-ref", "--no-deref", ref, sha], 30)
        except GitError as exc:
            raise exc if exc.kind == "branch_missing" else _classify(exc, remote) from None
        finally:
            for scanned in self._git(["for-each-ref", "--format=%(refname)", SCAN_REFS], 30).split():
                self._git(["update-ref", "-d", scanned], 30)  # only `ref` keeps the objects alive

    def deepen(self, remote: Remote, by: int, timeout: float) -> str:
        """Fetch `by` more commits of history below the shallow boundary of the ref fetched last; the commit
        the ref points at now (it may have moved since). `refs/kt/head` is left as it is."""
        try:
            url, env, secrets = remote.credentials.git_env(remote.url, self.askpass)
        except CredentialError as exc:
            raise GitError("auth", str(exc)) from None
        source = self.source or remote.sources()[0]
        try:
            self._fetch_refspecs(remote, url, env, secrets, [f"+{source}:{DEEPEN_REF}"], time.monotonic() + timeout,
                                 deepen=by)
            return self._git(["rev-parse", "--verify", f"{DEEPEN_REF}^{{commit}}"], 30)
        except GitError as exc:
            raise _classify(exc, remote) from None
        finally:
            with contextlib.suppress(GitError):
                self._git(["update-ref", "-d", DEEPEN_REF], 30)

    def is_ancestor(self, ancestor: str, sha: str, timeout: float = 30) -> bool:
        """True when commit `ancestor` is in the history of `sha` as far as the clone has it (False when
        `ancestor` is not in the clone at all)."""
        try:
            self._git(["merge-base", "--is-ancestor", ancestor, sha], timeout)
            return True
        except GitError as exc:
            if exc.kind == "timeout":
                raise
            return False

    def shallow_boundary(self, sha: str, timeout: float = 30) -> set[str]:
        """The commits of `sha`'s history whose parents the clone does not have (a shallow fetch's cut);
        empty when that history is complete down to its root commits."""
        try:
            shallow = set((self.path / "shallow").read_text().split())
        except FileNotFoundError:
            return set()
        if not shallow:
            return set()
        return shallow.intersection(self._git(["rev-list", sha, "--"], timeout).split())

    def pin(self, sha: str) -> None:
        """Point `refs/kt/applied` at the commit just published."""
        self._git(["update-ref", APPLIED_REF, sha], 30)

    def ensure_commit(self, remote: Remote, sha: str, timeout: float) -> None:
        """Make sure commit `sha` is in the clone, fetching it by id if it was lost (re-clone, old state)."""
        if self._has_commit(sha):
            return
        try:
            url, env, secrets = remote.credentials.git_env(remote.url, self.askpass)
        except CredentialError as exc:
            raise GitError("auth", str(exc)) from None
        with contextlib.suppress(GitError):
            self._fetch_commit(remote, url, env, secrets, sha, APPLIED_REF, time.monotonic() + timeout)
        if not self._has_commit(sha):
            raise GitError("repo", f"the applied commit {sha[:12]} is no longer in the clone and the remote "
                                   "does not serve it (by id, or on a branch or tag); it cannot be restored")

    def _has_commit(self, sha: str) -> bool:
        try:
            self._git(["cat-file", "-e", f"{sha}^{{commit}}"], 30)
            return True
        except GitError:
            return False

    def export(self, sha: str, path: str, dest: Path, timeout: float) -> dict[str, str]:
        """Write the config at `path` of commit `sha` into the new directory `dest` (see sync.export);
        {repo-relative path: sha256} of the files written."""
        return export_config(self, sha, path, dest, timeout)

    def popen(self, args: list[str]) -> subprocess.Popen[bytes]:
        """A long-running isolated git command in the clone with stdin/stdout pipes (the caller reaps it)."""
        return subprocess.Popen(git_command(args), cwd=self.path, env=git_environment(git_home(self.home)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def committed_at(self, sha: str, timeout: float = 30) -> float | None:
        """The committer time of commit `sha` (seconds since the epoch), None when unknown."""
        try:
            return float(self._git(["show", "-s", "--format=%ct", sha], max(timeout, 1)))
        except (GitError, ValueError):
            return None

    def signature(self, sha: str, fmt: str, config: list[str], env: dict[str, str], timeout: float) -> str:
        """`git log -1 --format=<fmt>` of commit `sha` with extra `-c` options and environment: git's own
        signature check (%G? and friends; the same as `git verify-commit`), see sync.signature."""
        return self._git([*config, "log", "-1", "--no-show-signature", f"--format={fmt}", sha, "--"], timeout, env)

    def commit_object(self, sha: str, timeout: float) -> str:
        """The raw commit object (headers, signature, message)."""
        return self._git(["cat-file", "commit", sha], timeout)

    def gc(self, timeout: float = 120) -> None:
        """Drop objects no longer reachable from our ref (old shallow commits); failures are harmless."""
        with contextlib.suppress(GitError):
            self._git(["gc", "--quiet", "--prune=now"], timeout)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a git command and everything it started (its own session), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _classify(exc: GitError, remote: Remote) -> GitError:
    msg = str(exc)
    where = remote.masked_url
    if exc.kind == "timeout":
        return GitError("timeout", f"fetch from {where} timed out: {msg}")
    if _MISSING_REF.search(msg):
        what = f"'{remote.ref}'" if remote.ref.startswith("refs/") else f"branch '{remote.ref}'"
        nor = "" if remote.ref.startswith("refs/") else " (nor a tag of that name)"
        return GitError("branch_missing", f"{what} does not exist on {where}{nor}")
    if _REFUSED_SHA.search(msg):
        return GitError("branch_missing", f"commit {remote.ref} is not available from {where}: {msg}")
    if _AUTH.search(msg):
        return GitError("auth", f"authentication to {where} failed (check the token or SSH key): {msg}")
    return GitError("unreachable", f"cannot fetch {where}: {msg}")


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("cmdline:")]
    lines = [ln.removeprefix("stderr: ").strip("'") for ln in lines]
    return " | ".join(lines[-n:]) or "no output"
