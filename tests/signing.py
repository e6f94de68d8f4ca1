"""Throwaway signing keys for the signed-commit tests: SSH (ssh-keygen) and OpenPGP (gpg in a temp home).

`use(upstream)` makes the upstream's work clone sign every commit with the key; `unsigned(upstream)`
turns signing off again. A GPG key lives in its own GNUPGHOME (short path under /tmp: gpg-agent's
socket path is limited); `close()` stops the agent that signing started and removes the home.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.gitserve import Upstream, git


def _run(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


class SshKey:
    """An ed25519 key pair without passphrase; `principal` is its allowed_signers identity."""

    def __init__(self, root: Path, name: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.key = root / f"{name}_ed25519"
        self.principal = f"{name}@example.com"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.principal, "-f", str(self.key))
        self.public = self.key.with_suffix(".pub").read_text().strip()
        self.fingerprint = _run("ssh-keygen", "-l", "-f", str(self.key.with_suffix(".pub"))).split()[1]

    def allowed_signers_line(self) -> str:
        return f'{self.principal} namespaces="git" {self.public}\n'

    def use(self, up: Upstream) -> None:
        for key, value in (("gpg.format", "ssh"), ("user.signingkey", str(self.key)), ("commit.gpgsign", "true")):
            git("config", key, value, cwd=up.work)


class GpgKey:
    """An ed25519 OpenPGP signing key in a private GNUPGHOME; `armored` is its public key."""

    def __init__(self, name: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="ktgpg"))
        self.uid = f"{name.title()} <{name}@example.com>"
        self._gpg("--passphrase", "", "--quick-gen-key", self.uid, "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys", self.uid)
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        self.armored = self._gpg("--armor", "--export", self.fingerprint)
        self.program = self.home / "gpg-for-git"
        self.program.write_text(f'#!/bin/sh\nexec gpg --homedir "{self.home}" "$@"\n')
        self.program.chmod(0o755)

    def _gpg(self, *args: str) -> str:
        return _run("gpg", "--homedir", str(self.home), "--batch", *args)

    def use(self, up: Upstream) -> None:
        for key, value in (("gpg.format", "openpgp"), ("gpg.openpgp.program", str(self.program)),
                           ("user.signingkey", self.fingerprint), ("commit.gpgsign", "true")):
            git("config", key, value, cwd=up.work)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True, timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)


def unsigned(up: Upstream) -> None:
    """Commit without a signature from now on."""
    git("config", "commit.gpgsign", "false", cwd=up.work)


def disabled(config: str) -> str:
    """The same config with `pack.enabled: false` (every policy off): what an attacker pushes."""
    return config.replace("enabled: true", "enabled: false")
