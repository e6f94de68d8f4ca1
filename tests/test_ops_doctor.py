"""`kt doctor` as a real subprocess: config, providers, control plane, state dir, hanging remotes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "policies" / "examples" / "default" / "policy-config.yaml"
GUARD = 30  # a hang guard for the subprocess, not a timing assertion


def kt_doctor(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, dict]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEEPTRUSTS_")}
    proc = subprocess.run([sys.executable, "-m", "kt", "doctor", "--json", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd or ROOT, timeout=GUARD)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hanging_listener() -> Iterator[str]:
    """A port that accepts TCP connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """A server that answers one header byte at a time, forever: socket timeouts never fire."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.2):
                    conn.sendall(b"X-Slow: a\r\n")
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    sock.close()


class ControlPlane(BaseHTTPRequestHandler):
    """A stand-in control plane: GET /v1/events accepts only `Bearer good-token`."""

    def do_GET(self) -> None:
        ok = self.path.startswith("/v1/events") and self.headers.get("Authorization") == "Bearer good-token"
        body = b'{"events": []}' if ok else b'{"error": "unauthorized"}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def control_plane() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ControlPlane)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def write_config(tmp_path: Path, targets: str, chain: str = "[audit-logger]") -> Path:
    path = tmp_path / "policy-config.yaml"
    path.write_text(f"""pack: {{name: doctor-test, version: 1.0.0, enabled: true}}
providers:
  targets:
{targets}
policies:
  chain: {chain}
policy:
  audit-logger: {{retention_days: 30}}
""")
    return path


def test_valid_config_passes(tmp_path: Path) -> None:
    code, report = kt_doctor("--config", str(DEFAULT_CONFIG), "--state-dir", str(tmp_path / "state"))
    checks = by_name(report)
    assert code == 0 and report["ok"] is True, report
    assert checks["config"]["status"] == "ok" and "kt-default" in checks["config"]["detail"]
    assert checks["chain"]["status"] == "ok" and "audit-logger" in checks["chain"]["detail"]
    assert checks["provider demo"]["status"] == "ok"
    assert checks["event store"]["status"] == "ok"
    assert checks["control plane"]["status"] == "skip"
    assert not any(name.startswith("gateway") for name in checks), "no gateway is checked unless asked"


def test_human_output_has_header_marks_and_fixes(tmp_path: Path) -> None:
    config = write_config(tmp_path, "    - {id: demo, provider: mock, model: m}", chain="[audit-loger]")
    proc = subprocess.run([sys.executable, "-m", "kt", "doctor", "--config", str(config)], capture_output=True,
                          text=True, timeout=GUARD, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("Keeptrusts Gateway Diagnostics")
    assert "✗ config:" in proc.stdout and "✗ chain:" in proc.stdout and "E001" in proc.stdout
    assert f"fix: run `kt policy lint --file {config}`" in proc.stdout


def test_invalid_config_fails_with_findings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pack: {name: x, version: 1.0.0, enabled: true\n  oops: [")
    code, report = kt_doctor("--config", str(bad))
    checks = by_name(report)
    assert code == 1 and report["ok"] is False
    assert checks["config"]["status"] == "fail" and "kt policy lint" in checks["config"]["fix"]
    assert checks["chain"]["status"] == "skip"


def test_provider_secret_and_reachability(tmp_path: Path, hanging_listener: str) -> None:
    closed = free_port()
    config = write_config(tmp_path, f"""    - id: no-secret
      provider: openai
      model: a
      base_url: {hanging_listener}
      secret_key_ref: {{env: KT_DOCTOR_TEST_MISSING_KEY}}
    - id: reachable
      provider: openai
      model: b
      base_url: {hanging_listener}
      secret_key_ref: {{env: KT_DOCTOR_TEST_KEY}}
    - id: refused
      provider: anthropic
      model: c
      base_url: http://127.0.0.1:{closed}
      secret_key_ref: {{env: KT_DOCTOR_TEST_KEY}}""")
    code, report = kt_doctor("--config", str(config), env={"KT_DOCTOR_TEST_KEY": "sk-test-secret-value"})
    checks = by_name(report)
    assert code == 1
    assert checks["provider no-secret"]["status"] == "fail"
    assert "KT_DOCTOR_TEST_MISSING_KEY" in checks["provider no-secret"]["detail"]
    assert checks["provider reachable"]["status"] == "ok", "a TCP connect is enough: no request, no token spent"
    assert checks["provider refused"]["status"] == "fail" and "unreachable" in checks["provider refused"]["detail"]
    assert f":{closed}" in checks["provider refused"]["fix"]
    assert "sk-test-secret-value" not in json.dumps(report)


def test_control_plane_token_accepted_and_rejected(control_plane: str) -> None:
    code, report = kt_doctor("--gateway", "http://127.0.0.1:1", env={
        "KEEPTRUSTS_API_URL": control_plane, "KEEPTRUSTS_GATEWAY_TOKEN": "good-token"})
    assert by_name(report)["control plane"]["status"] == "ok", report
    code, report = kt_doctor("--gateway", "http://127.0.0.1:1", env={
        "KEEPTRUSTS_API_URL": control_plane.replace("http://", "http://user:pw@"),
        "KEEPTRUSTS_GATEWAY_TOKEN": "bad-token"})
    check = by_name(report)["control plane"]
    assert code == 1 and check["status"] == "fail" and "rejected the token" in check["detail"]
    assert "KEEPTRUSTS_GATEWAY_TOKEN" in check["fix"]
    assert "pw@" not in json.dumps(report) and "bad-token" not in json.dumps(report)


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, report = kt_doctor("--config", str(DEFAULT_CONFIG), "--state-dir", str(blocker / "state"))
    check = by_name(report)["event store"]
    assert code == 1 and check["status"] == "fail" and "--state-dir" in check["fix"]


def test_gateway_down_is_one_failure_with_a_fix() -> None:
    code, report = kt_doctor("--gateway", f"http://127.0.0.1:{free_port()}")
    checks = by_name(report)
    assert code == 1
    assert checks["gateway liveness"]["status"] == "fail" and "running" in checks["gateway liveness"]["fix"]
    assert {checks[n]["status"] for n in ("gateway readiness", "running config", "event pipeline")} == {"skip"}


def test_gateway_alone_needs_no_config_file(tmp_path: Path) -> None:
    (tmp_path / "policy-config.yaml").write_text("not: [valid")  # must not be picked up when --gateway is given
    _, report = kt_doctor("--gateway", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert "config" not in by_name(report)


def test_every_remote_hanging_still_finishes(tmp_path: Path, hanging_listener: str, dripping_server: str) -> None:
    config = write_config(tmp_path, f"""    - id: slow
      provider: openai
      model: a
      base_url: {dripping_server}
      secret_key_ref: {{env: KT_DOCTOR_TEST_KEY}}""")
    code, report = kt_doctor("--config", str(config), "--gateway", dripping_server, "--timeout", "2.5", env={
        "KEEPTRUSTS_API_URL": hanging_listener, "KT_DOCTOR_TEST_KEY": "x"})
    checks = by_name(report)
    assert code == 1
    # a slow drip keeps every socket read alive: only the hard deadline ends these probes
    assert "no answer within 2.5s" in checks["gateway liveness"]["detail"]
    assert "no answer within 2.5s" in checks["running config"]["detail"]
    # a listener that never answers trips the socket timeout
    assert checks["control plane"]["status"] == "fail"
    assert "timed out" in checks["control plane"]["detail"] or "no answer" in checks["control plane"]["detail"]
    assert checks["config"]["status"] == "ok"
