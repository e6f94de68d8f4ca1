"""The signed-commit story, end to end: two `kt gateway run` processes with embedded sync against one
remote (the real git http-backend behind basic auth, a password with an `@` given percent-encoded),
both trusting one SSH allowed_signers file.

Sign with SSH and push: both apply it. Push an unsigned commit that turns every policy off: both
refuse it and say so (drift rejected, E120 naming the commit), and keep blocking what the policy
blocks. Revert it with a signed commit: both apply the revert."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess
from tests.gitserve import CFG, GitHttpServer, Upstream, config_yaml, dlp_config
from tests.kt_process import run_kt
from tests.signing import SshKey, disabled, unsigned
from tests.waiting import wait_for

SECRET_WORD = "project-bluebird"
pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen (openssh-client) is not installed")


class Gateway(GatewayProcess):
    """`kt gateway run --git-repo URL --git-verify-signers FILE` on a free loopback port."""

    def __init__(self, url: str, state: Path, signers: Path) -> None:
        super().__init__(None, state, "--git-repo", url, "--git-path", CFG, "--sync-interval", "0.2",
                         "--git-verify-signers", str(signers), "--log-format", "text",
                         env={"KEEPTRUSTS_ADMIN_TOKEN": ""}, ready="/keeptrusts/status", timeout=30)

    def raw_status(self) -> tuple[int, bytes]:
        status, _, body = self.request("GET", "/keeptrusts/status")
        return status, body



def test_sign_push_apply_unsigned_refused_signed_revert_applied_on_two_gateways(tmp_path):
    up = Upstream(tmp_path / "remote")
    alice = SshKey(tmp_path / "keys", "alice")
    signers = tmp_path / "allowed_signers"
    signers.write_text(alice.allowed_signers_line())
    alice.use(up)
    first = up.commit({CFG: config_yaml("1.0.0", name="signed-story")}, "signed: audit only")
    server = GitHttpServer(up.root, users={("ci", "p@ss")})
    url = server.url("policies.git", auth="ci:p%40ss")
    gateways: list[Gateway] = []
    try:
        gateways = [Gateway(url, tmp_path / f"state-{i}", signers) for i in (1, 2)]
        for gw in gateways:
            wait_for(lambda gw=gw: gw.revision() == first, timeout=30, message="first commit not applied")
            assert gw.chat_status(f"status of {SECRET_WORD}?") == 200
            sync = gw.status()["sync"]
            assert sync["verify_signers"]["enabled"] is True and sync["verify_signers"]["format"] == "ssh"
            assert sync["applied_signer"] == {"format": "ssh", "fingerprint": alice.fingerprint,
                                              "identity": alice.principal}
            assert sync["repo"] == f"http://***@127.0.0.1:{server.server_address[1]}/policies.git"
            body = gw.raw_status()[1].decode()
            assert "p%40ss" not in body and "p@ss" not in body

        # 1. Sign with SSH, push: both apply it and enforce it.
        signed = up.commit({CFG: dlp_config("2.0.0", name="signed-story")}, "signed: block the secret project")
        for gw in gateways:
            wait_for(lambda gw=gw: gw.revision() == signed, timeout=30, message="signed commit not applied")
            assert gw.chat_status(f"status of {SECRET_WORD}?") == 409 and gw.chat_status("hello") == 200

        # 2. An unsigned push that switches every policy off: refused and reported, the policy still blocks.
        unsigned(up)
        bad = up.commit({CFG: disabled(dlp_config("2.0.1", name="signed-story"))}, "unsigned: enabled false")
        for gw in gateways:
            wait_for(lambda gw=gw: gw.status()["sync"].get("attempted_revision") == bad, timeout=30,
                     message="the unsigned commit was never attempted")
            status = gw.status()
            assert status["drift"] == {"drifted": True, "reason": "rejected"}
            assert status["config"]["revision"] == signed and status["sync"]["applied_revision"] == signed
            finding = status["sync"]["findings"][0]
            assert finding["code"] == "E120" and finding["message"] == f"commit {bad} is not signed"
            assert gw.chat_status(f"status of {SECRET_WORD}?") == 409  # the last good config keeps serving
        cli = run_kt("sync", "status", "--gateway", gateways[0].url)
        assert cli.returncode == 0 and "E120" in cli.stdout and "is not signed" in cli.stdout
        assert "rejected" in cli.stdout and alice.fingerprint in cli.stdout

        # 3. Revert it with a signed commit: applied everywhere, drift clears.
        alice.use(up)
        reverted = up.revert()
        for gw in gateways:
            wait_for(lambda gw=gw: gw.revision() == reverted, timeout=30, message="signed revert not applied")
            status = gw.status()
            assert status["drift"] == {"drifted": False, "reason": None}
            assert status["sync"]["findings"] == [] and status["sync"]["applied_signer"]["identity"] == alice.principal
            assert gw.chat_status(f"status of {SECRET_WORD}?") == 409
    finally:
        for gw in gateways:
            gw.stop()
        server.stop()
