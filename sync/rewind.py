"""Rewinds: a head that does not descend from the applied commit (a force-push, a tag moved back).

A rewind is how someone who can push, but holds no signing key, rolls a signed fleet back to an
older signed commit (a config from before a DLP rule was added): its signature is genuine, so only
its place in history gives it away. `--on-rewind refuse` (the default with `--verify-signers`)
refuses such a head with finding E121; `follow` takes whatever the ref points at. The clone is
shallow, so the head's history is deepened step by step (doubling) until the applied commit shows
up in it, or the history is complete (a rewind).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from sync.errors import GitError

FOLLOW = "follow"
REFUSE = "refuse"
POLICIES = (FOLLOW, REFUSE)
CODE = "E121"
FIRST_STEP = 4  # commits of the first deepening; a one-commit merge needs none (its parent is in the commit)


class History(Protocol):
    """What the check needs of the agent's clone (sync.repo.Mirror)."""

    def commit_object(self, sha: str, timeout: float) -> str: ...

    def is_ancestor(self, ancestor: str, sha: str, timeout: float = 30) -> bool: ...

    def shallow_boundary(self, sha: str, timeout: float = 30) -> set[str]: ...

    def deepen(self, remote: Any, by: int, timeout: float) -> str: ...


def policy(on_rewind: str | None, verify_signers: str | None) -> str:
    """The rewind policy in force: as given, else `refuse` for a signed fleet and `follow` otherwise."""
    if on_rewind is None:
        return REFUSE if verify_signers else FOLLOW
    if on_rewind not in POLICIES:
        raise ValueError(f"--on-rewind must be one of {', '.join(POLICIES)}, not {on_rewind!r}")
    return on_rewind


def descends(repo: History, remote: Any, ancestor: str, head: str, deadline: float) -> bool:
    """True when `ancestor` is in the history of `head`, fetching more of that history as needed."""
    if any(line == f"parent {ancestor}" for line in _headers(repo.commit_object(head, _left(deadline)))):
        return True  # the usual poll: one new commit (or a merge) on top of the applied one, no round trip
    step = FIRST_STEP
    boundary = repo.shallow_boundary(head, _left(deadline))
    while not repo.is_ancestor(ancestor, head, _left(deadline)):
        if not boundary:
            return False  # the whole history of `head` is here and `ancestor` is not in it
        if time.monotonic() >= deadline:
            raise GitError("timeout", f"the history of {head[:12]} could not be fetched deep enough to find "
                                      f"{ancestor[:12]} within the sync's --timeout")
        now_at = repo.deepen(remote, step, _left(deadline))
        deeper = repo.shallow_boundary(head, _left(deadline))
        if deeper == boundary:  # nothing fetched below the cut of `head`
            if now_at != head:
                raise GitError("repo", f"the ref moved to {now_at[:12]} while the history of {head[:12]} was "
                                       "fetched; the next run checks again")
            return False
        boundary, step = deeper, step * 2
    return True


def finding(head: str, applied: str) -> dict[str, Any]:
    """The lint-style finding of a refused rewind (stable code E121)."""
    return {"file": None, "code": CODE, "path": "", "commit": head, "line": None,
            "message": f"head {head} does not descend from the applied revision {applied} (a force-push or "
                       "rewind); roll back with git revert, or run once with --on-rewind follow",
            "suggestion": f"to roll back, push a new commit on top of {applied[:12]} (git revert); if the "
                          "history was rewritten on purpose, sync once with --on-rewind follow "
                          "(kt gateway run: --git-on-rewind follow, or KEEPTRUSTS_GIT_ON_REWIND=follow)"}


def _headers(commit: str) -> list[str]:
    return commit.split("\n\n", 1)[0].splitlines()


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1.0)
