"""Git credentials that never reach argv, `.git/config`, logs or status.

An HTTPS token comes from a file (re-read before every fetch, so a rotated token is picked up
without a restart) or from `$KEEPTRUSTS_GIT_TOKEN`; git gets it through `GIT_ASKPASS`, a small
script that echoes variables from its own environment. Credentials written into the URL
(`https://user:token@host/...`) are moved out of it the same way. SSH uses a key file with
strict known_hosts checking through `GIT_SSH_COMMAND`.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

TOKEN_ENV = "KEEPTRUSTS_GIT_TOKEN"
DEFAULT_USERNAME = "x-access-token"
_ASKPASS = """#!/bin/sh
# kt sync: answer git's credential prompts from the environment (never from argv or files).
case "$1" in
  Username*) printf '%s\\n' "$KT_GIT_USERNAME" ;;
  *) printf '%s\\n' "$KT_GIT_PASSWORD" ;;
esac
"""
# The userinfo runs to the LAST `@` of the authority (a raw `@` in a password must not leak its tail).
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@")


class CredentialError(Exception):
    """A credential source that cannot be read (the message names the file, never its content)."""


def mask_url(url: str) -> str:
    """`url` (or any text holding URLs) with the whole userinfo of each URL replaced by `***`.

    The one URL-masking helper of kt: sync status, the gateway's forwarder and `kt doctor` use it."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", url)


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """(url without credentials, username, password) for http(s) URLs; other URLs unchanged.

    User and password are percent-decoded, as git decodes them (`p%40ss` is the password `p@ss`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user) or None, unquote(password) or None


@dataclass(frozen=True)
class Credentials:
    """Where the secrets come from; `git_env` reads them at the moment of a fetch."""

    token_file: str | None = None
    ssh_key: str | None = None
    known_hosts: str | None = None
    username: str | None = None

    def token(self) -> str | None:
        """The current HTTPS token: the file (re-read now) or the env var."""
        if self.token_file:
            try:
                return Path(self.token_file).read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise CredentialError(f"cannot read token file {self.token_file}: {exc.strerror}") from exc
        return os.environ.get(TOKEN_ENV) or None

    def git_env(self, url: str, askpass: Path) -> tuple[str, dict[str, str], list[str]]:
        """(clean URL, env for git, secrets to redact from its output) for one fetch of `url`."""
        clean, url_user, url_password = split_url(url)
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}
        secrets: list[str] = []
        password = self.token() or url_password
        if password and clean.startswith(("http://", "https://")):
            _write_askpass(askpass)
            env.update(GIT_ASKPASS=str(askpass), KT_GIT_USERNAME=self.username or url_user or DEFAULT_USERNAME,
                       KT_GIT_PASSWORD=password)
            secrets.append(password)
        if self.ssh_key or self.known_hosts:
            ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
            if self.ssh_key:
                ssh += ["-i", self.ssh_key, "-o", "IdentitiesOnly=yes"]
            if self.known_hosts:
                ssh += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        return clean, env, secrets


def _write_askpass(path: Path) -> None:
    if path.exists() and path.read_text() == _ASKPASS:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_ASKPASS)
    tmp.chmod(0o700)
    os.replace(tmp, path)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with URLs masked and every secret replaced by `***`."""
    text = mask_url(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
