"""The one place that decides how the sync agent runs git: isolated from the host's git setup.

Every git command of the agent gets a fresh environment built here (never the host's, so no
`GIT_DIR`, `GIT_CONFIG_PARAMETERS` or `GIT_SSH_COMMAND` leaks in) and the `-c` overrides in
`CONFIG_ARGS`: no system or global config (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`,
`HOME` a private empty directory), no hooks, no credential helpers, no attribute files of the host,
no fsmonitor, and only the transports kt supports (`GIT_ALLOW_PROTOCOL`). Filters, smudge and
textconv drivers never run because the agent reads raw blobs (`git cat-file`), never a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

PROTOCOLS = ("https", "http", "git", "ssh", "file")
# Host variables git may still need: where programs are, the outbound proxy, CA bundles, time zone,
# and an ssh-agent socket (SSH remotes without --ssh-key-file).
PASS_THROUGH = ("PATH", "TZ", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
                "all_proxy", "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH",
                "SSH_AUTH_SOCK")
CONFIG_ARGS = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.attributesFile=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.bigFileThreshold=1m",  # fetch streams large blobs to disk instead of inflating them in memory
    "-c", "credential.helper=",
    "-c", "core.askPass=",
    "-c", "protocol.allow=never",
    *(arg for proto in PROTOCOLS for arg in ("-c", f"protocol.{proto}.allow=always")),
)


def git_home(state: Path) -> Path:
    """The private, empty HOME git sees (created on demand)."""
    home = Path(state) / ".githome"
    home.mkdir(mode=0o700, exist_ok=True)
    return home


def git_environment(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A complete environment for one git command (the host's is never inherited)."""
    env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", GIT_ATTR_NOSYSTEM="1",
        GIT_ALLOW_PROTOCOL=":".join(PROTOCOLS), GIT_NO_REPLACE_OBJECTS="1",
        GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
        LC_ALL="C", LANGUAGE="C",
    )
    env.update(extra or {})
    return env


def git_command(args: list[str]) -> list[str]:
    """argv for `git <args>` with the isolating overrides."""
    return ["git", *CONFIG_ARGS, *args]
