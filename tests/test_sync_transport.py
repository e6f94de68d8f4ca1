"""The agent over real transports on loopback: `git daemon`, and `git http-backend` behind basic auth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sync.agent import SyncAgent, SyncSettings
from sync.credentials import Credentials, mask_url, split_url
from sync.repo import Remote
from sync.status import read_status, report
from tests.gitserve import CFG, GitDaemon, GitHttpServer, HangingServer, config_yaml
from tests.kt_process import run_kt

TOKEN = "s3cr3t-token-value"


@pytest.fixture
def http(upstream):
    server = GitHttpServer(upstream.root, users={("ci", TOKEN)})
    yield server
    server.stop()


def agent_for(url: str, state: Path, creds: Credentials | None = None, timeout: float = 30) -> SyncAgent:
    agent = SyncAgent(SyncSettings(Remote(url, "main", 1, creds or Credentials()), state, CFG, timeout=timeout))
    agent.acquire()
    return agent


def no_secret_anywhere(state: Path, *texts: str) -> None:
    blob = (state / "status.json").read_text() + "".join(texts) + json.dumps(report(state, time.time()))
    assert TOKEN not in blob
    assert not any(TOKEN in p.read_text(errors="ignore") for p in (state / "repo").glob("config"))


def test_git_daemon_first_sync_and_update(upstream, tmp_path):
    daemon = GitDaemon(upstream.root)
    try:
        agent = agent_for(daemon.url("policies.git"), tmp_path / "state")
        assert agent.sync_once().result == "success"
        sha = upstream.commit({CFG: config_yaml("2.0.0")})
        assert agent.sync_once().applied == sha
        assert "2.0.0" in (tmp_path / "state" / "current" / CFG).read_text()
    finally:
        daemon.stop()
    result = agent.sync_once()
    assert result.result == "error" and result.error_kind == "unreachable"
    assert "2.0.0" in (tmp_path / "state" / "current" / CFG).read_text()


def test_http_basic_auth_with_token_file_and_rotation(upstream, http, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    state = tmp_path / "state"
    agent = agent_for(http.url("policies.git"), state, Credentials(token_file=str(token_file), username="ci"))
    assert agent.sync_once().result == "success"
    no_secret_anywhere(state)
    # Rotate: the server accepts only the new token; the file is re-read before the next fetch.
    http.users.clear()
    http.users.add(("ci", "rotated-token"))
    result = agent.sync_once()
    assert result.result == "error" and result.error_kind == "auth"
    token_file.write_text("rotated-token\n")
    sha = upstream.commit({CFG: config_yaml("2.0.0")})
    assert agent.sync_once().applied == sha


def test_wrong_credentials_error_names_no_secret(upstream, http, tmp_path, monkeypatch):
    monkeypatch.setenv("KEEPTRUSTS_GIT_TOKEN", "wrong-" + TOKEN)
    state = tmp_path / "state"
    agent = agent_for(http.url("policies.git"), state, Credentials(username="ci"))
    result = agent.sync_once()
    assert result.result == "error" and result.error_kind == "auth"
    assert "authentication" in result.error and TOKEN not in result.error
    no_secret_anywhere(state, result.error)
    assert not (state / "current").exists()


def test_no_credentials_fails_fast_instead_of_prompting(upstream, http, tmp_path):
    result = agent_for(http.url("policies.git"), tmp_path / "state").sync_once()
    assert result.result == "error" and result.error_kind == "auth"


def test_credentials_in_url_are_masked_everywhere(upstream, http, tmp_path):
    url = http.url("policies.git", auth=f"ci:{TOKEN}")
    state = tmp_path / "state"
    agent = agent_for(url, state)
    assert agent.sync_once().result == "success"
    st = read_status(state)
    assert st["repo"] == mask_url(url) and "***@" in st["repo"]
    no_secret_anywhere(state)
    http.users.clear()
    http.users.add(("ci", "another-token"))
    result = agent.sync_once()
    assert result.result == "error" and TOKEN not in result.error
    no_secret_anywhere(state, result.error)


def test_password_with_a_raw_at_is_masked_whole_in_status_and_cli(upstream, tmp_path):
    """`http://ci:p@ss%word@host` must never print `ss%word` (the userinfo ends at the last `@`)."""
    server = GitHttpServer(upstream.root, users={("ci", "p@ss%word")})
    try:
        url = server.url("policies.git", auth="ci:p@ss%word")
        state = tmp_path / "state"
        assert agent_for(url, state).sync_once().result == "success"
        masked = f"http://***@127.0.0.1:{server.server_address[1]}/policies.git"
        assert read_status(state)["repo"] == masked
        assert report(state, time.time())["sync"]["repo"] == masked
        for args in ([], ["--json"]):
            out = run_kt("sync", "status", "--state-dir", str(state), *args)
            assert out.returncode == 0, out.stderr
            assert "ss%word" not in out.stdout and "p@ss" not in out.stdout and "***@127.0.0.1" in out.stdout
    finally:
        server.stop()


def test_percent_encoded_credentials_in_the_url_are_decoded_as_git_does(upstream, tmp_path):
    server = GitHttpServer(upstream.root, users={("ci@corp", "p@ss:/w")})
    try:
        url = server.url("policies.git", auth="ci%40corp:p%40ss%3A%2Fw")
        state = tmp_path / "state"
        result = agent_for(url, state).sync_once()
        assert result.result == "success", result.error
        assert read_status(state)["repo"] == f"http://***@127.0.0.1:{server.server_address[1]}/policies.git"
        blob = (state / "status.json").read_text()
        assert "p%40ss" not in blob and "p@ss" not in blob
    finally:
        server.stop()


def test_hung_fetch_hits_the_timeout(tmp_path):
    hang = HangingServer()
    try:
        for url in (f"http://127.0.0.1:{hang.port}/policies.git", f"git://127.0.0.1:{hang.port}/policies.git"):
            state = tmp_path / url.split(":")[0]
            started = time.monotonic()
            result = agent_for(url, state, timeout=1.0).sync_once()
            assert result.result == "error" and result.error_kind == "timeout", result
            assert time.monotonic() - started < 30  # killed, not waited out
            assert "timed out" in result.error
    finally:
        hang.stop()


def test_url_helpers():
    assert mask_url("https://user:pw@host/r.git") == "https://***@host/r.git"
    assert mask_url("https://tok@host/r.git") == "https://***@host/r.git"
    assert mask_url("git@github.com:org/r.git") == "git@github.com:org/r.git"
    assert mask_url("http://u:p@ss%word@host:8/r.git") == "http://***@host:8/r.git"
    assert mask_url("see https://u:p@w@h/x and ssh://git@h/y") == "see https://***@h/x and ssh://***@h/y"
    assert mask_url("https://u:p@w@h?q=a@b") == "https://***@h?q=a@b"
    assert split_url("https://u%40c:p%40ss@h/x") == ("https://h/x", "u@c", "p@ss")
    assert split_url("https://u:p@h:1/x") == ("https://h:1/x", "u", "p")
    assert split_url("ssh://git@h/x") == ("ssh://git@h/x", None, None)


def test_ssh_key_and_known_hosts_go_to_git_ssh_command(tmp_path):
    creds = Credentials(ssh_key=str(tmp_path / "id key"), known_hosts=str(tmp_path / "kh"))
    _, env, _ = creds.git_env("ssh://git@example.com/r.git", tmp_path / "askpass")
    cmd = env["GIT_SSH_COMMAND"]
    assert "StrictHostKeyChecking=yes" in cmd and f"'-i' '{tmp_path}/id key'" not in cmd
    assert f"'{tmp_path}/id key'" in cmd and f"UserKnownHostsFile={tmp_path}/kh" in cmd
