"""A `kt gateway run --git-repo` subprocess with a webhook secret (`SECRET`), for the embedded-agent tests."""

from __future__ import annotations

from pathlib import Path

from tests.gateway_process import GatewayProcess
from tests.gitserve import CFG, Upstream

SECRET = "gateway-hook-secret"


class Gateway(GatewayProcess):
    """A `kt gateway run --git-repo` subprocess with a webhook secret."""

    def __init__(self, up: Upstream, state: Path, *extra: str) -> None:
        secret = state.parent / "hook-secret"
        secret.write_text(SECRET + "\n")
        super().__init__(None, state, "--git-repo", up.url, "--git-path", CFG, "--webhook-secret-file", str(secret),
                         "--log-format", "text", *extra, env={"KEEPTRUSTS_ADMIN_TOKEN": ""}, ready="/healthz",
                         timeout=30)
