"""Signed commits: only a commit whose own signature verifies against a trusted-signers file is applied.

The file (`--git-verify-signers FILE`) is either an SSH `allowed_signers` file (git >= 2.34,
`gpg.format ssh`) or an armored OpenPGP public-key file; its content decides which. Git does
the verification itself (`%G?` of `git log`, the same check as `git verify-commit`), with
`gpg.ssh.allowedSignersFile` pointing at the file, and `GNUPGHOME` pointing at a private
directory (0700) into which only the file's OpenPGP keys are imported ("imported means trusted",
as in Argo CD): never the host's keyring, never a gpg-agent.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import tempfile
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

SSH = "ssh"
OPENPGP = "openpgp"
CODE = "E120"
_PGP_PUBLIC = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_PGP_PRIVATE = "-----BEGIN PGP PRIVATE KEY BLOCK-----"
_SSH_KEY = re.compile(
    r"(?:^|\s)((?:sk-)?(?:ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp\d+)(?:-cert-v01)?(?:@openssh\.com)?)"
    r"\s+([A-Za-z0-9+/]+={0,2})(?:\s|$)"
)
_FORMAT = "%G?%x00%GF%x00%GK%x00%GS"  # git's verdict letter, key fingerprint, key id, signer identity
_REASONS = {  # by git's verdict letter; {key} is " <fingerprint>" and {of_key} " (key <fingerprint>)" when known
    "N": "is not signed",
    "U": "is signed by an untrusted key{key}",
    "E": "is signed by an untrusted key{key}",  # a key we do not have (or cannot use)
    "B": "has a bad signature{of_key}: it was altered after signing",
    "X": "has an expired signature{of_key}",
    "Y": "is signed by an expired key{key}",
    "R": "is signed by a revoked key{key}",
}
_GPG_TIMEOUT = 30.0


class SignersError(Exception):
    """The trusted-signers file cannot be used (the message says what to change)."""


class GitRunner(Protocol):
    """What verification needs of the agent's clone (sync.repo.Mirror)."""

    def signature(self, sha: str, fmt: str, config: list[str], env: dict[str, str], timeout: float) -> str: ...

    def commit_object(self, sha: str, timeout: float) -> str: ...


@dataclass(frozen=True)
class Signer:
    """Who signed a commit: the key's fingerprint and the identity git matched it to (may be empty)."""

    format: str
    fingerprint: str
    identity: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """Whether commit `sha` may be applied; `reason` says why not (for the E120 finding)."""

    sha: str
    ok: bool
    signer: Signer | None = None
    reason: str | None = None

    def finding(self, signers_file: str) -> dict[str, Any]:
        """The lint-style finding of a refused commit (stable code E120)."""
        untrusted = "untrusted" in (self.reason or "")
        fix = (f"if this key is trusted, add it to {signers_file}; otherwise re-sign the commit with a listed key"
               if untrusted else f"sign the commit (git commit -S) with a key listed in {signers_file}")
        return {"file": None, "code": CODE, "path": "", "message": f"commit {self.sha} {self.reason}",
                "suggestion": fix, "line": None, "commit": self.sha}


class TrustedSigners:
    """The keys of one signers file, ready for git. `close()` removes the private GNUPGHOME."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise SignersError(f"cannot read the trusted-signers file {self.path}: {exc.strerror}") from None
        self.digest = hashlib.sha256(data).hexdigest()
        text = data.decode("utf-8", "replace")
        self.home = Path(tempfile.mkdtemp(prefix="kt-gnupg-"))  # 0700: gpg's private home
        self._remove_home = weakref.finalize(self, shutil.rmtree, str(self.home), True)  # also at exit
        try:
            (self.home / "gpg.conf").write_text("no-autostart\ntrust-model always\n")
            (self.home / "no-ssh-signers").write_text("")
            if _PGP_PRIVATE in text:
                raise SignersError(f"{self.path} holds an OpenPGP PRIVATE key: give the public keys only "
                                   "(gpg --armor --export KEYID)")
            if _PGP_PUBLIC in text:
                self.format = OPENPGP
                self.keys = self._import_openpgp()
            else:
                self.format = SSH
                self.keys = _ssh_keys(self.path, text)
                if shutil.which("ssh-keygen") is None:
                    raise SignersError(f"{self.path} lists SSH keys but ssh-keygen is not installed "
                                       "(apt install openssh-client)")
        except BaseException:
            self.close()
            raise

    def _import_openpgp(self) -> list[str]:
        gpg = shutil.which("gpg")
        if gpg is None:
            raise SignersError(f"{self.path} holds OpenPGP keys but gpg is not installed (apt install gpg)")
        base = [gpg, "--homedir", str(self.home), "--batch", "--no-autostart", "--no-tty"]
        try:
            subprocess.run([*base, "--import", str(self.path)], capture_output=True, timeout=_GPG_TIMEOUT)
            listed = subprocess.run([*base, "--with-colons", "--list-keys"], capture_output=True, text=True,
                                    timeout=_GPG_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SignersError(f"cannot import the OpenPGP keys of {self.path}: {exc}") from None
        fingerprints, after_pub = [], False
        for line in listed.stdout.splitlines():
            fields = line.split(":")
            if fields[0] == "pub":
                after_pub = True
            elif fields[0] == "fpr" and after_pub:
                fingerprints.append(fields[9])
                after_pub = False
        if not fingerprints:
            raise SignersError(f"{self.path}: no OpenPGP public key could be read from the armored block "
                               "(export one with gpg --armor --export KEYID)")
        return fingerprints

    @staticmethod
    def digest_of(path: Path) -> str:
        """sha256 of the file as it is now (to notice a rotation)."""
        try:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as exc:
            raise SignersError(f"cannot read the trusted-signers file {path}: {exc.strerror}") from None

    def git_config(self) -> list[str]:
        """`-c` options that make git verify against these keys and nothing else."""
        ssh_file = self.path if self.format == SSH else self.home / "no-ssh-signers"
        return ["-c", f"gpg.ssh.allowedSignersFile={ssh_file}", "-c", "gpg.openpgp.program=gpg",
                "-c", "gpg.ssh.program=ssh-keygen", "-c", "gpg.minTrustLevel=undefined"]

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}

    def describe(self) -> dict[str, Any]:
        """What status shows: verification on, the format, the file and how many keys it trusts."""
        return {"enabled": True, "format": self.format, "file": str(self.path), "keys": len(self.keys)}

    def verify(self, git: GitRunner, sha: str, timeout: float) -> Verdict:
        """Git's verdict on the signature of commit `sha` against these keys."""
        out = git.signature(sha, _FORMAT, self.git_config(), self.env(), timeout)
        letter, fingerprint, key_id, identity = ([*out.split("\0"), "", "", "", ""])[:4]
        letter = letter.strip() or "N"
        key = fingerprint.strip() or key_id.strip()
        if letter != "N" and key_id and not fingerprint.strip():  # an OpenPGP key we do not have
            key = _issuer_fingerprint(git, sha, timeout) or key
        signer = Signer(self.format, key, identity.strip() or None) if key else None
        if letter == "G":
            return Verdict(sha, True, signer)
        template = _REASONS.get(letter, "has a signature git cannot check{of_key}")
        reason = template.format(key=f" {key}" if key else "", of_key=f" (key {key})" if key else "")
        return Verdict(sha, False, signer, reason)

    def close(self) -> None:
        self._remove_home()


def _ssh_keys(path: Path, text: str) -> list[str]:
    """The SHA256 fingerprints of an allowed_signers file; SignersError for a line that is not an entry."""
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SSH_KEY.search(line)
        blob = _b64(match[2]) if match else None
        if match is None or blob is None or not _blob_has_type(blob, match[1]):
            hint = ("it is neither an SSH allowed_signers file nor an armored OpenPGP public-key file"
                    if not keys else "expected 'principals [options] key-type base64-key [comment]'")
            raise SignersError(f"{path}: line {n} is not an allowed_signers entry ({hint})")
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        keys.append(f"SHA256:{digest}")
    if not keys:
        raise SignersError(f"{path} lists no keys (an SSH allowed_signers file or an armored OpenPGP public key)")
    return keys


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


def _blob_has_type(blob: bytes, key_type: str) -> bool:
    """An SSH public-key blob starts with its length-prefixed key type."""
    n = int.from_bytes(blob[:4], "big")
    return blob[4:4 + n] == key_type.encode()


def _issuer_fingerprint(git: GitRunner, sha: str, timeout: float) -> str | None:
    """The issuer fingerprint (subpacket 33) of the OpenPGP signature on commit `sha`, if it carries one.

    Git reports only the 64-bit key id for a key it does not have; operators compare fingerprints."""
    lines = git.commit_object(sha, timeout).split("\n")
    armored, inside = [], False
    for line in lines:
        if line.startswith("gpgsig ") or line.startswith("gpgsig-sha256 "):
            inside = True
            armored.append(line.split(" ", 1)[1])
        elif inside and line.startswith(" "):
            armored.append(line[1:])
        elif inside:
            break
    body = [ln for ln in armored if ln and not ln.startswith("-----") and ":" not in ln and not ln.startswith("=")]
    packet = _b64("".join(body))
    return _sig_issuer(packet) if packet else None


def _sig_issuer(data: bytes) -> str | None:
    """Issuer fingerprint of the first (v4) signature packet in `data`; None if absent or unparsable."""
    try:
        first = data[0]
        if first & 0x40:  # new packet format
            tag, size = first & 0x3F, data[1]
            start = 2 if size < 192 else 3
        else:
            tag, start = (first >> 2) & 0x0F, 1 + (1, 2, 4, 0)[first & 3]
        body = data[start:]
        if tag != 2 or body[0] != 4:
            return None
        hashed = int.from_bytes(body[4:6], "big")
        unhashed_at = 6 + hashed
        unhashed = int.from_bytes(body[unhashed_at:unhashed_at + 2], "big")
        areas = (body[6:unhashed_at], body[unhashed_at + 2:unhashed_at + 2 + unhashed])
        for area in areas:
            i = 0
            while i < len(area):
                n = area[i]
                if n < 192:
                    length, i = n, i + 1
                elif n < 255:
                    length, i = ((n - 192) << 8) + area[i + 1] + 192, i + 2
                else:
                    length, i = int.from_bytes(area[i + 1:i + 5], "big"), i + 5
                if area[i] & 0x7F == 33 and length > 2:
                    return area[i + 2:i + length].hex().upper()
                i += length
    except IndexError:
        return None
    return None
