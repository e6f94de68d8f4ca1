"""The signed-commit story, end to end: two `kt gateway run` processes with embedded sync against one
remote (the real git http-backend behind basic auth, a password with an `@` given percent-encoded),
both trusting one SSH allowed_signers file.

Sign with SSH and push: both apply it. Push an unsigned commit that turns every policy off: both
refuse it and say so (drift rejected, E120 naming the commit), and keep blocking what the policy
blocks. Revert it with a signed commit: both apply the revert."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.gitserve import GitHttpServer, Upstream, config_yaml, free_port
from tests.signing import SshKey, disabled, unsigned
from tests.waiting import wait_for

CFG = "policy-config.yaml"
SECRET_WORD = "project-bluebird"
pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen (openssh-client) is not installed")


def dlp_config(version: str) -> str:
    """A config whose dlp-filter blocks SECRET_WORD."""
    return (f"pack: {{name: signed-story, version: {version}, enabled: true}}\n"
            "providers:\n  targets:\n    - {id: demo, provider: mock, model: demo-model}\n"
            "policies:\n  chain: [dlp-filter, audit-logger]\n"
            f"policy:\n  dlp-filter: {{blocked_terms: [{SECRET_WORD}], action: block}}\n"
            "  audit-logger: {retention_days: 30}\n")


class Gateway:
    """`kt gateway run --git-repo URL --git-verify-signers FILE` on a free loopback port."""

    def __init__(self, url: str, state: Path, signers: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(state.parent / f"gateway-{self.port}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kt", "gateway", "run", "--git-repo", url, "--git-path", CFG,
             "--state-dir", str(state), "--listen", f"127.0.0.1:{self.port}", "--sync-interval", "0.2",
             "--git-verify-signers", str(signers), "--log-format", "text"],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "KEEPTRUSTS_ADMIN_TOKEN": ""},
        )
        wait_for(lambda: self.proc.poll() is not None or self.raw_status()[0] == 200, timeout=30)
        assert self.proc.poll() is None, f"gateway exited: {self.logs()}"

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def raw_status(self) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + "/keeptrusts/status", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def status(self) -> dict:
        return json.loads(self.raw_status()[1] or b"{}")

    def revision(self) -> str | None:
        return (self.status().get("config") or {}).get("revision")

    def chat(self, text: str) -> int:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)
        try:
            client.chat.completions.create(model="demo-model", messages=[{"role": "user", "content": text}])
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


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
            assert gw.chat(f"status of {SECRET_WORD}?") == 200
            sync = gw.status()["sync"]
            assert sync["verify_signers"]["enabled"] is True and sync["verify_signers"]["format"] == "ssh"
            assert sync["applied_signer"] == {"format": "ssh", "fingerprint": alice.fingerprint,
                                              "identity": alice.principal}
            assert sync["repo"] == f"http://***@127.0.0.1:{server.server_address[1]}/policies.git"
            body = gw.raw_status()[1].decode()
            assert "p%40ss" not in body and "p@ss" not in body

        # 1. Sign with SSH, push: both apply it and enforce it.
        signed = up.commit({CFG: dlp_config("2.0.0")}, "signed: block the secret project")
        for gw in gateways:
            wait_for(lambda gw=gw: gw.revision() == signed, timeout=30, message="signed commit not applied")
            assert gw.chat(f"status of {SECRET_WORD}?") == 409 and gw.chat("hello") == 200

        # 2. An unsigned push that switches every policy off: refused and reported, the policy still blocks.
        unsigned(up)
        bad = up.commit({CFG: disabled(dlp_config("2.0.1"))}, "unsigned: enabled false")
        for gw in gateways:
            wait_for(lambda gw=gw: gw.status()["sync"].get("attempted_revision") == bad, timeout=30,
                     message="the unsigned commit was never attempted")
            status = gw.status()
            assert status["drift"] == {"drifted": True, "reason": "rejected"}
            assert status["config"]["revision"] == signed and status["sync"]["applied_revision"] == signed
            finding = status["sync"]["findings"][0]
            assert finding["code"] == "E120" and finding["message"] == f"commit {bad} is not signed"
            assert gw.chat(f"status of {SECRET_WORD}?") == 409  # the last good config keeps serving
        cli = subprocess.run([sys.executable, "-m", "kt", "sync", "status", "--gateway", gateways[0].url],
                             capture_output=True, text=True, timeout=60)
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
            assert gw.chat(f"status of {SECRET_WORD}?") == 409
    finally:
        for gw in gateways:
            gw.stop()
        server.stop()
