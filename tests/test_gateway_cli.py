"""`kt gateway run` as a real process: startup log, serving, SIGTERM drain, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import EXAMPLE_CONFIG, ROOT
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import write_config
from tests.kt_process import run_kt
from tests.waiting import wait_for

DEFAULT_CONFIG = str(EXAMPLE_CONFIG)


def kt(*args: str, state: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`kt ...` run to its end, its event store under `state` (never the user's home)."""
    return run_kt(*args, cwd=ROOT, timeout=30, env={**os.environ, "KEEPTRUSTS_STATE_DIR": str(state), **(env or {})})


def status_of(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_run_serves_and_drains_on_sigterm(tmp_path: Path, fake_upstream: FakeUpstream, gateway_process: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", [
        {"id": "main", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
         "secret_key_ref": {"env": "KT_CLI_KEY"}},
        {"id": "gone", "provider": "anthropic", "model": "claude-x", "secret_key_ref": {"env": "KT_CLI_MISSING"}}])
    os.environ.pop("KT_CLI_MISSING", None)
    gw = gateway_process(None, "--config", str(cfg), "--drain-timeout", "20", env={"KT_CLI_KEY": "sk-up"}, timeout=15)
    proc, base = gw.proc, gw.url
    text = gw.logs()
    assert "target gone (anthropic claude-x) is unavailable: secret env var KT_CLI_MISSING is not set" in text
    assert "no --keys-file" in text
    client = openai.OpenAI(base_url=base + "/v1", api_key="client", max_retries=0)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])

    fake_upstream.queue_reply("a slow stream that must finish", chunks=6, chunk_delay=0.15)
    received: list[str] = []
    done = threading.Event()

    def consume() -> None:
        for c in client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                messages=[{"role": "user", "content": "y"}]):
            received.extend(c.choices[0].delta.content or "" for _ in [0] if c.choices)
        done.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    wait_for(lambda: received, timeout=10)  # the stream is flowing
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    reader.join(10)
    assert done.is_set() and "".join(received) == "a slow stream that must finish"
    assert status_of(base + "/healthz") is None  # no longer listening
    assert "draining" in gw.logs()


@pytest.mark.parametrize("workers", [1, 2])
def test_listen_on_port_0_serves_on_the_port_it_reports(workers: int, gateway_process: Any) -> None:
    gw = gateway_process(None, "--config", DEFAULT_CONFIG, "--workers", str(workers), timeout=30)
    assert gw.proc.args[gw.proc.args.index("--listen") + 1] == "127.0.0.1:0"
    port = gw.port  # the `port` field of its log, as a program reads it
    assert port != 0 and gw.get("/readyz")[0] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
        assert resp.status == 200

    def listening() -> list[dict[str, Any]]:
        lines = [ln for ln in gw.log_lines() if ln.get("msg", "").startswith("listening on ")]
        return lines if len(lines) == workers else []

    for line in wait_for(listening, timeout=10):  # with --workers, each on the one socket the supervisor bound
        assert (line["logger"], line["host"], line["port"]) == ("kt.gateway", "127.0.0.1", port)
        assert line["msg"].startswith(f"listening on http://127.0.0.1:{port} (ready in "), line
    supervisor = [ln for ln in gw.log_lines() if ln.get("logger") == "kt.gateway.supervisor" and "port" in ln]
    if workers == 1:
        assert supervisor == []
    else:
        assert [(ln["host"], ln["port"]) for ln in supervisor] == [("127.0.0.1", port)]
        assert supervisor[0]["msg"].endswith(f": 2 worker(s) on 127.0.0.1:{port}")
        wait_for(lambda: gw.get("/readyz")[1]["workers"] == {"ready": 2, "total": 2}, timeout=10)


def test_default_config_answers_with_no_provider_key(tmp_path: Path, gateway_process: Any) -> None:
    # --port overrides the port of --listen (9 would be refused without root, or reported)
    gw = gateway_process(None, timeout=15, argv=[
        "gateway", "run", "--policy-config", DEFAULT_CONFIG, "--port", "0", "--listen", "127.0.0.1:9"])
    proc, base = gw.proc, gw.url
    assert gw.port != 9
    req = urllib.request.Request(base + "/v1/chat/completions", method="POST", data=json.dumps(
        {"model": "demo-model", "messages": [{"role": "user", "content": "hello"}]}).encode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = json.load(resp)
    assert body["choices"][0]["message"]["content"].startswith("[mock]")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--config", "missing.yaml"], 2, "cannot read file"),
    (["--config", "policies/examples/default/policy-config.yaml", "--listen", "nonsense"], 1, "HOST:PORT"),
    (["--config", "policies/examples/default/policy-config.yaml", "--keys-file", "/nonexistent/keys"], 1,
     "cannot read keys file"),
    (["--config", "policies/examples/default/policy-config.yaml", "--max-body-size", "lots"], 1, "10MiB"),
    (["--config", "policies/examples/default/policy-config.yaml", "--max-response-size", "0"], 1,
     "--max-response-size"),
])
def test_bad_input_exits_with_a_message(args: list[str], code: int, needle: str, tmp_path: Path) -> None:
    proc = kt("gateway", "run", *args, state=tmp_path)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == code
    assert needle in out + err and "Traceback" not in out + err


def test_https_proxy_is_named_at_start_without_its_credentials(tmp_path: Path, gateway_process: Any) -> None:
    bad = kt("gateway", "run", "--config", "policies/examples/default/policy-config.yaml", state=tmp_path,
             env={"HTTPS_PROXY": "socks5://u:s3cret@proxy:1080"})
    out, err = bad.stdout, bad.stderr
    assert bad.returncode == 1 and "HTTPS_PROXY must be an http:// proxy" in err
    assert "s3cret" not in out + err and "Traceback" not in out + err

    gw = gateway_process(None, timeout=15, argv=[
        "gateway", "run", "--config", DEFAULT_CONFIG, "--listen", "127.0.0.1:0"],
        env={"HTTPS_PROXY": "http://u:s3cret@127.0.0.1:9", "NO_PROXY": "internal.corp"})
    text = gw.logs()
    assert "https upstreams go through the proxy http://127.0.0.1:9 (CONNECT)" in text
    assert "NO_PROXY=internal.corp" in text and "s3cret" not in text
