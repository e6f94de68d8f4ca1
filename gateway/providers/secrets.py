"""The values behind `secret_key_ref`s, read again when they rotate.

`{env: VAR}` is the value of VAR. When VAR is not set and `VAR_FILE` names a file (the Docker and
Kubernetes secrets convention), the secret is that file's content, stripped: a mounted Kubernetes
Secret, or an Entra ID token that a sidecar rewrites before it expires. A process's environment
cannot change from outside, a file can, so only the file is watched:

- at most every `RECHECK_S` seconds a request `stat`s the file, and reads it only when its
  mtime, size or inode changed (a rename or a Kubernetes symlink swap changes the inode): the hot
  path costs a clock read and a dict lookup;
- at once when the provider refused the credential (401/403, `renew`), so the request that met
  a rotated-out token is retried with the new one;
- a missing, unreadable or empty file is no secret now and is looked at again `RECHECK_S` later,
  never cached for good.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from policies.model import SecretRef

RECHECK_S = 2.0
FILE_SUFFIX = "_FILE"
MAX_SECRET_BYTES = 65536


@dataclass
class _FileSecret:
    path: str
    value: str | None
    stamp: tuple[int, int, int] | None  # (mtime_ns, size, inode) of what `value` was read from
    checked: float  # time.monotonic() of the last stat


_files: dict[str, _FileSecret] = {}  # VAR -> what VAR_FILE held when last looked at


def value(ref: SecretRef | None) -> str | None:
    """The secret `ref` names now (VAR, else the content of VAR_FILE), or None when there is none."""
    if ref is None or not ref.env:
        return None
    direct = os.environ.get(ref.env)
    if direct:
        return direct
    path = os.environ.get(ref.env + FILE_SUFFIX)
    if not path:
        return None
    entry = _files.get(ref.env)
    now = time.monotonic()
    if entry is None or entry.path != path or now - entry.checked >= RECHECK_S:
        entry = _look(ref.env, path, entry, now)
    return entry.value


def renew(ref: SecretRef | None) -> bool:
    """Read the secret's file again now (the provider refused the secret): True when the value changed."""
    if ref is None or not ref.env or os.environ.get(ref.env):
        return False
    path = os.environ.get(ref.env + FILE_SUFFIX)
    if not path:
        return False
    old = _files.get(ref.env)
    return _look(ref.env, path, None, time.monotonic()).value != (old.value if old else None)


def missing_reason(ref: SecretRef) -> str | None:
    """Why `{env: VAR}` has no value (naming the variables and the file, never a value), or None."""
    if value(ref) is not None:
        return None
    path = os.environ.get(f"{ref.env}{FILE_SUFFIX}")
    if path:
        return f"secret file {path} ({ref.env}{FILE_SUFFIX}) is missing, unreadable or empty"
    return f"secret env var {ref.env} is not set"


def _look(var: str, path: str, old: _FileSecret | None, now: float) -> _FileSecret:
    """`old` when the file did not change since it was read, else the file read again."""
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if old is not None and old.path == path and old.stamp == stamp:
            old.checked = now
            return old
        with open(path, "rb") as f:
            text = f.read(MAX_SECRET_BYTES).decode("utf-8").strip()
        entry = _FileSecret(path, text or None, stamp, now)
    except (OSError, UnicodeDecodeError):
        entry = _FileSecret(path, None, None, now)
    _files[var] = entry
    return entry
