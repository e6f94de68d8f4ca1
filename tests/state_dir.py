"""What the sync agent writes into a state directory, for tests of the gateway's side of it."""

from __future__ import annotations

import os
from pathlib import Path

from sync import manifest


def publish(state: Path, sha: str, text: str, name: str = "policy-config.yaml") -> None:
    """Publish `text` as revision `sha` the way the agent does: write `revisions/<sha>/<name>`,
    record its digest, then rename a new symlink over `current`."""
    rev = state / "revisions" / sha
    rev.mkdir(parents=True)
    (rev / name).write_text(text)
    manifest.record(rev)  # the digest the agent records before it flips `current`
    tmp = state / f".tmp-current-{sha}"
    os.symlink(f"revisions/{sha}", tmp)
    os.replace(tmp, state / "current")
