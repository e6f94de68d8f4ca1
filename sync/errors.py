"""The errors of the sync agent's Git side (shared by the clone, the export and the agent)."""

from __future__ import annotations


class GitError(Exception):
    """A git step that failed. `kind`: unreachable, auth, branch_missing, timeout, repo."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class UnsafeTree(Exception):
    """The commit cannot be exported safely (a link leaving it, a path escaping the export): refuse it."""
