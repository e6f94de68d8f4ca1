"""AWS credentials and SigV4 signatures for bedrock targets without a `secret_key_ref`.

botocore (the optional extra `kt-gateway[bedrock]`) resolves the standard credential chain:
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, the shared credentials and
config files (profiles, `credential_process`, SSO, assume-role), web identity
(`AWS_WEB_IDENTITY_TOKEN_FILE`), the container endpoint (`AWS_CONTAINER_CREDENTIALS_*`) and the
instance role. A `CredentialChain` (one per `UpstreamClient`) keeps what it found and keeps it
fresh, never blocking the event loop on it:

- temporary credentials are botocore's `RefreshableCredentials`: while botocore says they need
  no refresh (until 15 minutes before they expire) a request reads them from memory; when they
  do, one worker thread refreshes them and the requests that need them wait for that one;
- when the provider refuses a signature (401/403, `renew`), the chain is resolved again in a
  thread (static keys rotated in the shared credentials file, revoked session credentials) and
  the caller retries once if the credentials changed; at most once every `RENEW_S` seconds
  (a client that makes Bedrock answer 403 again and again, e.g. for a model the role may not
  use, must not turn each request into a credential lookup, maybe a metadata-endpoint call),
  and the refusals that come while one renewal runs wait for that one;
- no credentials: the chain is tried again (in a thread) at most every `RETRY_S` seconds, so a
  gateway started before its credentials exist serves bedrock once they appear.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

RETRY_S = 5.0
RENEW_S = 15.0  # a refused signature resolves the chain again at most this often
SERVICE = "bedrock"


class CredentialsUnavailable(Exception):
    """No AWS credentials now (the message says why and what to do; never a secret)."""


@lru_cache(maxsize=1)
def has_botocore() -> bool:
    try:
        import botocore.session  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_chain() -> Any:
    """botocore's standard credential chain, resolved now: its credentials, or None when it finds none."""
    from botocore.session import get_session

    return get_session().get_credentials()


def _needs_refresh(credentials: Any) -> bool:
    needed = getattr(credentials, "refresh_needed", None)  # RefreshableCredentials; static ones have none
    return needed is not None and needed()


class CredentialChain:
    """The process's AWS credentials: `await frozen()` on each call (from memory unless due), `await renew()`."""

    def __init__(self, resolve: Callable[[], Any] = resolve_chain) -> None:
        self._resolve = resolve
        self._credentials: Any = None  # botocore Credentials / RefreshableCredentials
        self._frozen: Any = None  # their ReadOnlyCredentials as last read (what calls are signed with)
        self._stale = False  # resolve the chain again at the next work
        self._next_try = 0.0  # no credentials: monotonic time of the next attempt
        self._error: str | None = None
        self._pending: asyncio.Future[None] | None = None
        self._renewal: asyncio.Future[bool] | None = None  # the renewal running now
        self._renewed_at = -RENEW_S  # monotonic time the last renewal started

    async def frozen(self) -> Any:
        """The credentials to sign with now (`CredentialsUnavailable` when there are none)."""
        if self._credentials is None and time.monotonic() < self._next_try:
            raise CredentialsUnavailable(self._error or "no AWS credentials found")
        if self._credentials is None or _needs_refresh(self._credentials):
            await self._run()
        if self._frozen is None:
            raise CredentialsUnavailable(self._error or "no AWS credentials found")
        return self._frozen

    async def renew(self) -> bool:
        """Resolve the chain again (the provider refused a signature): True when the credentials changed.

        At most once every `RENEW_S` seconds (False meanwhile); callers while one runs share it."""
        renewal = self._renewal
        if renewal is None or renewal.done() or renewal.get_loop() is not asyncio.get_running_loop():
            now = time.monotonic()
            if now - self._renewed_at < RENEW_S:
                return False
            self._renewed_at = now
            renewal = self._renewal = asyncio.ensure_future(self._renew())
        return await asyncio.shield(renewal)

    async def _renew(self) -> bool:
        before = self._frozen
        self._stale = True
        while self._stale:
            await self._run()
        return self._frozen is not None and self._frozen != before

    async def _run(self) -> None:
        """The pending work in one worker thread; callers that need it meanwhile wait for the same one."""
        pending = self._pending
        if pending is None or pending.done() or pending.get_loop() is not asyncio.get_running_loop():
            pending = self._pending = asyncio.ensure_future(asyncio.to_thread(self._work))
        await asyncio.shield(pending)

    def _work(self) -> None:
        """(worker thread) Resolve the chain when it is due, then read (and so refresh) the credentials."""
        try:
            if self._credentials is None or self._stale:
                self._stale = False
                self._credentials = self._resolve()
            if self._credentials is not None:
                self._frozen = self._credentials.get_frozen_credentials()
                self._error = None
                return
            self._error = ("no AWS credentials found (environment, shared credentials/config file, web identity, "
                           "container or instance role)")
        except Exception as exc:  # botocore: a malformed profile, an unreachable credential endpoint, ...
            self._credentials = None
            self._error = f"AWS credentials could not be obtained ({type(exc).__name__})"
        self._frozen = None
        self._next_try = time.monotonic() + RETRY_S


def frozen_now() -> Any:
    """The chain's credentials resolved now, blocking (kt doctor, a CLI); `CredentialsUnavailable` when none."""
    credentials = resolve_chain()
    if credentials is None:
        raise CredentialsUnavailable("no AWS credentials found (environment, shared credentials/config file, "
                                     "web identity, container or instance role)")
    return credentials.get_frozen_credentials()


def sign(credentials: Any, region: str, method: str, address: str, body: bytes) -> dict[str, str]:
    """The SigV4 headers (`Authorization`, `X-Amz-Date`, `X-Amz-Security-Token`) of one call."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=address, data=body,
                         headers={"Content-Type": "application/json"} if body else {})
    SigV4Auth(credentials, SERVICE, region).add_auth(request)
    return {k: v for k, v in request.headers.items() if k.lower() != "content-type"}
