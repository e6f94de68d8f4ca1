"""`--verify-signers FILE`: only a commit whose own signature verifies against FILE is applied.

Real keys (ssh-keygen, gpg in throwaway homes), real signed commits, git's own verification."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sync.agent import SyncAgent, SyncSettings
from sync.repo import Remote
from sync.signature import SignersError, TrustedSigners
from sync.status import read_status, report
from tests.gitserve import CFG, GitDaemon, Upstream, config_yaml, git
from tests.kt_process import run_kt
from tests.signing import GpgKey, SshKey, disabled, unsigned
from tests.syncing import served

needs_ssh = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen (openssh-client) is not installed")
needs_gpg = pytest.mark.skipif(not shutil.which("gpg"), reason="gpg is not installed")


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path / "remote")


@pytest.fixture
def alice(tmp_path: Path) -> SshKey:
    return SshKey(tmp_path / "keys", "alice")


@pytest.fixture
def gpg_keys():
    keys: dict[str, GpgKey] = {}

    def make(name: str) -> GpgKey:
        keys[name] = GpgKey(name)
        return keys[name]

    yield make
    for key in keys.values():
        key.close()


def agent_for(url: str, state: Path, signers: Path | None) -> SyncAgent:
    agent = SyncAgent(SyncSettings(Remote(url, "main", 1), state, CFG, timeout=30,
                                   verify_signers=str(signers) if signers else None))
    agent.acquire()
    return agent


def assert_refused(agent: SyncAgent, state: Path, good: str, bad: str, why: str) -> dict:
    """`bad` refused exactly like an invalid config: E120 naming the commit and why; `good` still serves."""
    result = agent.sync_once()
    assert result.result == "rejected", result
    finding = result.findings[0]
    assert finding["code"] == "E120" and finding["message"] == f"commit {bad} {why}", finding
    st = read_status(state)
    assert st["applied_revision"] == good and st["attempted_revision"] == bad == st["remote_head"]
    assert st["findings"][0]["code"] == "E120" and bad[:12] in st["last_error"] and why in st["last_error"]
    assert report(state, time.time())["drift"] == {"drifted": True, "reason": "rejected"}
    assert "enabled: true" in served(state)
    assert not any(p.name.startswith(bad) for p in (state / "revisions").iterdir())
    return st


@needs_ssh
def test_ssh_signed_applied_unsigned_and_untrusted_refused(upstream, alice, tmp_path):
    mallory = SshKey(tmp_path / "keys", "mallory")
    signers = tmp_path / "allowed_signers"
    signers.write_text("# who may deploy policy\n" + alice.allowed_signers_line())
    alice.use(upstream)
    good = upstream.commit({CFG: config_yaml("1.0.0")}, "signed by alice")
    state = tmp_path / "state"
    agent = agent_for(upstream.url, state, signers)
    assert agent.sync_once().result == "success"
    st = read_status(state)
    assert st["applied_revision"] == good
    assert st["verify_signers"] == {"enabled": True, "format": "ssh", "file": str(signers), "keys": 1}
    assert st["applied_signer"] == {"format": "ssh", "fingerprint": alice.fingerprint, "identity": alice.principal}

    unsigned(upstream)  # an attacker with push access turns every policy off
    bad = upstream.commit({CFG: disabled(config_yaml("1.0.1"))}, "unsigned")
    assert_refused(agent, state, good, bad, "is not signed")
    assert agent.sync_once().result == "rejected"  # polled again: still refused, still serving alice's commit

    mallory.use(upstream)
    forged = upstream.commit({CFG: disabled(config_yaml("1.0.2"))}, "signed by an unlisted key")
    assert_refused(agent, state, good, forged, f"is signed by an untrusted key {mallory.fingerprint}")

    alice.use(upstream)
    fixed = upstream.revert()
    assert agent.sync_once().result == "success"
    st = read_status(state)
    assert st["applied_revision"] == fixed and st["findings"] == [] and st["last_error"] is None
    assert "version: 1.0.1" in served(state) and "enabled: false" in served(state)  # revert of the forged one


@needs_ssh
def test_a_tampered_signed_commit_has_a_bad_signature(upstream, alice, tmp_path):
    signers = tmp_path / "allowed_signers"
    signers.write_text(alice.allowed_signers_line())
    alice.use(upstream)
    good = upstream.commit({CFG: config_yaml("1.0.0")}, "signed")
    state = tmp_path / "state"
    agent = agent_for(upstream.url, state, signers)
    assert agent.sync_once().result == "success"
    upstream.commit({CFG: disabled(config_yaml("1.0.0"))}, "signed, then its tree is swapped")
    raw = git("cat-file", "commit", "HEAD", cwd=upstream.work)
    tree = git("rev-parse", f"{good}^{{tree}}", cwd=upstream.work)
    forged_raw = raw.replace(raw.split("\n", 1)[0], f"tree {tree}", 1) + "\n"
    forged = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--stdin"], input=forged_raw, text=True,
                            cwd=upstream.work, capture_output=True, check=True).stdout.strip()
    git("push", "--quiet", "--force", "origin", f"{forged}:refs/heads/main", cwd=upstream.work)
    assert_refused(agent, state, good, forged, "has a bad signature: it was altered after signing")


@needs_gpg
def test_openpgp_signed_applied_unsigned_and_untrusted_refused_host_keyring_ignored(
        upstream, gpg_keys, tmp_path, monkeypatch):
    alice, mallory = gpg_keys("alice"), gpg_keys("mallory")
    signers = tmp_path / "trusted.asc"
    signers.write_text(alice.armored)
    # The host's own keyring trusts mallory: it must play no part.
    monkeypatch.setenv("GNUPGHOME", str(mallory.home))
    alice.use(upstream)
    good = upstream.commit({CFG: config_yaml("1.0.0")}, "signed by alice")
    state = tmp_path / "state"
    daemon = GitDaemon(upstream.root)
    try:
        agent = agent_for(daemon.url("policies.git"), state, signers)
        assert agent.sync_once().result == "success"
        st = read_status(state)
        assert st["verify_signers"] == {"enabled": True, "format": "openpgp", "file": str(signers), "keys": 1}
        assert st["applied_signer"] == {"format": "openpgp", "fingerprint": alice.fingerprint,
                                        "identity": alice.uid}
        unsigned(upstream)
        bad = upstream.commit({CFG: disabled(config_yaml("1.0.1"))}, "unsigned")
        assert_refused(agent, state, good, bad, "is not signed")
        mallory.use(upstream)
        forged = upstream.commit({CFG: disabled(config_yaml("1.0.2"))}, "signed by mallory")
        assert_refused(agent, state, good, forged, f"is signed by an untrusted key {mallory.fingerprint}")
        alice.use(upstream)
        fixed = upstream.commit({CFG: config_yaml("2.0.0")}, "signed fix")
        assert agent.sync_once().applied == fixed and "version: 2.0.0" in served(state)
    finally:
        daemon.stop()
    assert agent.signers is not None
    assert not list(Path(agent.signers.home).glob("S.gpg-agent*"))  # no agent in the private home
    home = agent.signers.home
    agent.release()
    assert not home.exists()


@needs_ssh
def test_key_rotation_without_restart_and_verification_turned_on_judges_what_runs(upstream, alice, tmp_path):
    bob = SshKey(tmp_path / "keys", "bob")
    unsigned(upstream)
    legacy = upstream.commit({CFG: config_yaml("1.0.0")}, "before signing was required")
    state = tmp_path / "state"
    agent = agent_for(upstream.url, state, None)
    assert agent.sync_once().result == "success"
    st = read_status(state)
    assert st["verify_signers"] == {"enabled": False} and st["applied_signer"] is None
    agent.release()
    signers = tmp_path / "allowed_signers"
    signers.write_text(alice.allowed_signers_line())
    agent = agent_for(upstream.url, state, signers)  # restart with verification: the running head is judged
    result = agent.sync_once()
    assert result.result == "rejected" and result.findings[0]["message"] == f"commit {legacy} is not signed"
    alice.use(upstream)
    upstream.commit({CFG: config_yaml("2.0.0")}, "alice")
    assert agent.sync_once().result == "success"
    # Rotate: add bob, sign with bob, remove alice; the file is re-read at every sync.
    signers.write_text(alice.allowed_signers_line() + bob.allowed_signers_line())
    bob.use(upstream)
    by_bob = upstream.commit({CFG: config_yaml("3.0.0")}, "bob")
    assert agent.sync_once().applied == by_bob
    assert read_status(state)["verify_signers"]["keys"] == 2
    signers.write_text(bob.allowed_signers_line())
    assert agent.sync_once().result == "noop"
    alice.use(upstream)
    stale = upstream.commit({CFG: config_yaml("4.0.0")}, "alice after her key was removed")
    result = agent.sync_once()
    assert result.result == "rejected"
    assert result.findings[0]["message"] == f"commit {stale} is signed by an untrusted key {alice.fingerprint}"


@needs_gpg
def test_signers_files_that_cannot_be_used_are_startup_errors(tmp_path, gpg_keys, alice):
    def error(text: str | bytes) -> str:
        path = tmp_path / "signers"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        with pytest.raises(SignersError) as exc:
            TrustedSigners(path)
        return str(exc.value)

    assert "neither an SSH allowed_signers file nor an armored OpenPGP public-key file" in error("hello world\n")
    assert "neither" in error(b"\x99\x01\x0d\x04binary keyring")
    assert "line 2 is not an allowed_signers entry" in error(alice.allowed_signers_line() + "bob ssh-ed25519 AAAAnot\n")
    assert "lists no keys" in error("# nobody yet\n")
    key = gpg_keys("carol")
    lines = key.armored.splitlines()
    corrupt = "\n".join(lines[:3] + ["AAAA" + line[4:] for line in lines[3:-2]] + lines[-2:])
    assert "no OpenPGP public key could be read" in error(corrupt)
    assert "PRIVATE key" in error("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxx\n-----END PGP PRIVATE KEY BLOCK-----\n")
    with pytest.raises(SignersError, match="cannot read"):
        TrustedSigners(tmp_path / "missing")


@needs_ssh
def test_cli_flags_env_and_startup_errors(upstream, alice, tmp_path):
    signers = tmp_path / "allowed_signers"
    signers.write_text(alice.allowed_signers_line())
    unsigned(upstream)
    upstream.commit({CFG: config_yaml("1.0.0")}, "unsigned")
    base = ["sync", "run", "--once", "--repo", upstream.url, "--path", CFG]
    env = {**os.environ, "KEEPTRUSTS_GIT_VERIFY_SIGNERS": str(signers)}
    out = run_kt(*base, "--state-dir", str(tmp_path / "a"), env=env)
    assert out.returncode == 1 and "E120" in out.stderr and "is not signed" in out.stderr
    status = run_kt("sync", "status", "--state-dir", str(tmp_path / "a"))
    assert "verified: ssh keys" in status.stdout and "E120" in status.stdout and "not signed" in status.stdout
    as_json = run_kt("sync", "status", "--state-dir", str(tmp_path / "a"), "--json")
    sync = json.loads(as_json.stdout)["sync"]
    assert sync["verify_signers"] == {"enabled": True, "format": "ssh", "file": str(signers), "keys": 1}
    assert sync["applied_signer"] is None and sync["findings"][0]["code"] == "E120"
    bad = tmp_path / "bad"
    bad.write_text("not a key\n")
    for flag in ("--verify-signers", "--git-verify-signers"):
        out = run_kt(*base, "--state-dir", str(tmp_path / "b"), flag, str(bad))
        assert out.returncode == 1 and "neither an SSH allowed_signers file" in out.stderr, out.stderr
    gw = run_kt("gateway", "run", "--git-repo", upstream.url, "--state-dir", str(tmp_path / "c"),
                "--listen", "127.0.0.1:0", "--git-verify-signers", str(bad))
    assert gw.returncode == 1 and "--git-verify-signers" in gw.stderr and "neither" in gw.stderr


@needs_ssh
@needs_gpg
def test_a_commit_signed_in_the_other_format_is_untrusted(upstream, alice, gpg_keys, tmp_path, monkeypatch):
    """SSH keys trusted, an OpenPGP-signed head: git must not fall back to the host's keyring (which has the key)."""
    carol = gpg_keys("carol")
    monkeypatch.setenv("GNUPGHOME", str(carol.home))
    signers = tmp_path / "allowed_signers"
    signers.write_text(alice.allowed_signers_line())
    alice.use(upstream)
    good = upstream.commit({CFG: config_yaml("1.0.0")}, "alice, ssh")
    state = tmp_path / "state"
    agent = agent_for(upstream.url, state, signers)
    assert agent.sync_once().applied == good
    carol.use(upstream)
    other = upstream.commit({CFG: disabled(config_yaml("1.0.1"))}, "carol, openpgp")
    assert_refused(agent, state, good, other, f"is signed by an untrusted key {carol.fingerprint}")
