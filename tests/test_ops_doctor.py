"""`kt doctor` as a real subprocess: config, providers, control plane, state dir, hanging remotes."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import EXAMPLE_CONFIG
from tests.kt_doctor import GUARD, by_name, kt_doctor
from tests.kt_process import run_kt


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
    """A stand-in control plane: POST /v1/events stores the batch, only for `Bearer good-token`."""

    stored: list[dict] = []
    requests: list[tuple[str, str]] = []

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path))
        self._answer(200, b'{"events": []}')

    def do_POST(self) -> None:
        batch = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.requests.append(("POST", self.path))
        if self.path != "/v1/events" or self.headers.get("Authorization") != "Bearer good-token":
            return self._answer(401, b'{"error": "unauthorized"}')
        self.stored.extend(batch["events"])
        self._answer(202, b'{"accepted": %d}' % len(batch["events"]))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def control_plane() -> Iterator[str]:
    ControlPlane.stored, ControlPlane.requests = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ControlPlane)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Provider(BaseHTTPRequestHandler):
    """A stand-in provider: GET /v1/models with an OpenAI (`Bearer`) or Anthropic (`x-api-key`) key."""

    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:
        key = self.headers.get("x-api-key") if self.headers.get("anthropic-version") else \
            (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        self.seen.append((self.command, self.path))
        ok = self.path == "/v1/models" and key == "sk-good-secret-value"
        body = b'{"data": [{"id": "m"}]}' if ok else b'{"error": {"message": "invalid x-api-key"}}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # a completion would spend tokens: never expected
        self.seen.append((self.command, self.path))
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[str]:
    Provider.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
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
    code, report = kt_doctor("--config", str(EXAMPLE_CONFIG), "--state-dir", str(tmp_path / "state"))
    checks = by_name(report)
    assert code == 0 and report["ok"] is True, report
    assert checks["config"]["status"] == "ok" and "kt-default" in checks["config"]["detail"]
    assert checks["chain"]["status"] == "ok" and "audit-logger" in checks["chain"]["detail"]
    assert checks["provider demo"]["status"] == "ok"
    assert checks["event store"]["status"] == "ok"
    # an unset optional variable is a warning: exit 0, and 1 only with --strict
    assert checks["control plane"]["status"] == "warn" and "KEEPTRUSTS_API_URL" in checks["control plane"]["fix"]
    assert report["warnings"] == 1 and report["failures"] == 0
    assert not any(name.startswith("gateway") for name in checks), "no gateway is checked unless asked"
    code, report = kt_doctor("--config", str(EXAMPLE_CONFIG), "--state-dir", str(tmp_path / "state"), "--strict")
    assert code == 1 and report["ok"] is False and report["strict"] is True


def test_human_output_has_header_marks_and_fixes(tmp_path: Path) -> None:
    config = write_config(tmp_path, "    - {id: demo, provider: mock, model: m}", chain="[audit-loger]")
    proc = run_kt("doctor", "--config", str(config), timeout=GUARD, cwd=tmp_path)
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


def test_providers_are_asked_for_their_models_with_their_key(tmp_path: Path, provider: str,
                                                          hanging_listener: str, closed_port: int) -> None:
    config = write_config(tmp_path, f"""    - id: good-openai
      provider: openai
      model: a
      base_url: {provider}
      secret_key_ref: {{env: KT_DOCTOR_GOOD_KEY}}
    - id: good-anthropic
      provider: anthropic
      model: claude
      base_url: {provider}/v1
      secret_key_ref: {{env: KT_DOCTOR_GOOD_KEY}}
    - id: bad-key
      provider: openai
      model: b
      base_url: {provider}
      secret_key_ref: {{env: KT_DOCTOR_BAD_KEY}}
    - id: silent
      provider: openai
      model: c
      base_url: {hanging_listener}
      secret_key_ref: {{env: KT_DOCTOR_GOOD_KEY}}
    - id: refused
      provider: anthropic
      model: d
      base_url: http://127.0.0.1:{closed_port}
      secret_key_ref: {{env: KT_DOCTOR_GOOD_KEY}}
    - id: no-secret
      provider: openai
      model: e
      base_url: {provider}
      secret_key_ref: {{env: KT_DOCTOR_TEST_MISSING_KEY}}""")
    env = {"KT_DOCTOR_GOOD_KEY": "sk-good-secret-value", "KT_DOCTOR_BAD_KEY": "sk-bad-secret-value"}
    code, report = kt_doctor("--config", str(config), "--state-dir", str(tmp_path / "s"), "--timeout", "3", env=env)
    checks = by_name(report)
    good = checks["provider good-openai"]
    assert good["status"] == "ok" and "key accepted" in good["detail"]
    assert checks["provider good-anthropic"]["status"] == "ok"
    bad = checks["provider bad-key"]
    assert "key rejected" in bad["detail"] and "401" in bad["detail"] and "KT_DOCTOR_BAD_KEY" in bad["fix"]
    assert "no answer within" in checks["provider silent"]["detail"], "an accepting listener that never answers"
    assert "refused" in checks["provider refused"]["detail"].lower()
    assert "KT_DOCTOR_TEST_MISSING_KEY" in checks["provider no-secret"]["detail"]
    # one unusable target is a warning while others serve: exit 0
    assert {checks[f"provider {t}"]["status"] for t in ("bad-key", "silent", "refused", "no-secret")} == {"warn"}
    assert code == 0, report
    assert set(Provider.seen) == {("GET", "/v1/models")}, "only the model list: no token spent"
    assert "secret-value" not in json.dumps(report)

    # every target unusable: the gateway cannot serve, whatever --strict says
    env["KT_DOCTOR_GOOD_KEY"] = "sk-other-secret-value"
    code, report = kt_doctor("--config", str(config), "--state-dir", str(tmp_path / "s"), "--timeout", "3", env=env)
    checks = by_name(report)
    assert code == 1 and checks["provider good-openai"]["status"] == "fail"
    assert "key rejected" in checks["provider good-anthropic"]["detail"]
    assert "secret-value" not in json.dumps(report)


def test_control_plane_token_proven_by_an_empty_batch(control_plane: str) -> None:
    _, report = kt_doctor("--gateway", "http://127.0.0.1:1", env={
        "KEEPTRUSTS_API_URL": control_plane, "KEEPTRUSTS_GATEWAY_TOKEN": "good-token"})
    check = by_name(report)["control plane"]
    assert check["status"] == "ok" and "event submission" in check["detail"], report
    assert ControlPlane.requests == [("POST", "/v1/events")] and ControlPlane.stored == [], "nothing stored"
    _, report = kt_doctor("--gateway", "http://127.0.0.1:1", env={
        "KEEPTRUSTS_API_URL": control_plane.replace("http://", "http://user:pw@"),
        "KEEPTRUSTS_GATEWAY_TOKEN": "bad-token"})
    check = by_name(report)["control plane"]
    assert check["status"] == "warn" and "token rejected" in check["detail"] and "401" in check["detail"]
    assert "KEEPTRUSTS_GATEWAY_TOKEN" in check["fix"]
    assert "pw@" not in json.dumps(report) and "bad-token" not in json.dumps(report)
    assert ControlPlane.stored == []


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, report = kt_doctor("--config", str(EXAMPLE_CONFIG), "--state-dir", str(blocker / "state"))
    check = by_name(report)["event store"]
    assert code == 1 and check["status"] == "fail" and "--state-dir" in check["fix"]


def test_gateway_down_is_one_failure_with_a_fix(closed_port: int) -> None:
    code, report = kt_doctor("--gateway", f"http://127.0.0.1:{closed_port}")
    checks = by_name(report)
    assert code == 1
    assert checks["gateway liveness"]["status"] == "fail" and "running" in checks["gateway liveness"]["fix"]
    assert {checks[n]["status"] for n in ("gateway readiness", "running config", "event pipeline")} == {"skip"}


def test_gateway_alone_needs_no_config_file(tmp_path: Path, closed_port: int) -> None:
    (tmp_path / "policy-config.yaml").write_text("not: [valid")  # must not be picked up when --gateway is given
    _, report = kt_doctor("--gateway", f"http://127.0.0.1:{closed_port}", cwd=tmp_path)
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
    assert checks["control plane"]["status"] == "warn"
    assert "timed out" in checks["control plane"]["detail"] or "no answer" in checks["control plane"]["detail"]
    assert checks["config"]["status"] == "ok"


def test_a_refused_reload_on_a_running_gateway_is_a_warning(tmp_path: Path, gateway_process) -> None:
    from tests.waiting import wait_for

    config = write_config(tmp_path, "    - {id: demo, provider: mock, model: demo-model}")
    gw = gateway_process(config)
    code, report = kt_doctor("--gateway", gw.url)
    checks = by_name(report)
    assert code == 0 and checks["drift"]["status"] == "ok" and checks["gateway providers"]["status"] == "ok"
    config.write_text("pack: {name: doctor-test, version: 2.0.0, enabled: true}\npolicies: {chain: [nope]}\n")
    wait_for(lambda: gw.get("/keeptrusts/status")[1]["reload"]["last_result"] == "error", timeout=20)
    code, report = kt_doctor("--gateway", gw.url)
    checks = by_name(report)
    assert code == 0, report  # the last good config keeps serving: the probe must not fail every replica
    assert checks["drift"]["status"] == "warn" and "reload_failed" in checks["drift"]["detail"]
    assert checks["gateway readiness"]["status"] == "ok"
    code, report = kt_doctor("--gateway", gw.url, "--strict")
    assert code == 1 and report["failures"] == 0 and report["warnings"] >= 1


@pytest.mark.parametrize(("targets", "code", "status", "detail"), [
    ("""    - id: keyless
      provider: openai
      model: gpt-4o-mini
      base_url: http://127.0.0.1:9
      secret_key_ref: {env: KT_DOCTOR_UNSET_KEY}""", 1, "fail", "KT_DOCTOR_UNSET_KEY"),
    ("""    - {id: demo, provider: mock, model: demo-model}
    - id: keyless
      provider: openai
      model: gpt-4o-mini
      secret_key_ref: {env: KT_DOCTOR_UNSET_KEY}""", 0, "warn", "1 of 2 targets usable"),
], ids=["none-usable-fails", "one-usable-warns"])
def test_a_gateway_with_no_usable_target_fails_and_with_one_warns(
        tmp_path: Path, gateway_process, targets: str, code: int, status: str, detail: str) -> None:
    gw = gateway_process(write_config(tmp_path, targets))
    exit_code, report = kt_doctor("--gateway", gw.url)
    check = by_name(report)["gateway providers"]
    assert exit_code == code and check["status"] == status and detail in check["detail"], report


def test_a_native_responses_target_is_proven_without_spending_tokens(tmp_path: Path, fake_upstream) -> None:
    """`responses_api: native`: `{}` POSTed to the Responses URL; 400 = there, 404 = missing, 401 = bad key."""
    config = write_config(tmp_path, f"""    - id: native
      provider: openai
      model: gpt-4o-mini
      base_url: {fake_upstream.base_url}
      responses_api: native
      secret_key_ref: {{env: KT_DOCTOR_GOOD_KEY}}""")

    def doctor() -> tuple[int, dict[str, dict]]:
        code, report = kt_doctor("--config", str(config), "--state-dir", str(tmp_path / "s"), "--timeout", "5",
                                 env={"KT_DOCTOR_GOOD_KEY": "sk-good-secret-value"})
        assert "secret-value" not in json.dumps(report)
        return code, by_name(report)

    code, checks = doctor()
    there = checks["provider native responses"]
    assert code == 0 and checks["provider native"]["status"] == "ok", checks
    assert there["status"] == "ok" and "POST" in there["detail"] and "/v1/responses HTTP 400" in there["detail"]
    assert [(r.method, r.path) for r in fake_upstream.requests] == [("GET", "/v1/models"), ("POST", "/v1/responses")]
    assert fake_upstream.requests[-1].raw == b"{}", "an empty body: refused before anything is generated"

    fake_upstream.add_fault("status", status=404, path="/v1/responses")
    code, checks = doctor()
    missing = checks["provider native responses"]
    assert missing["status"] == "warn" and "answered 404" in missing["detail"], missing  # chat still serves
    assert "responses_api: translate" in missing["fix"] and code == 0

    fake_upstream.add_fault("status", status=401, path="/v1/responses")
    code, checks = doctor()
    refused = checks["provider native responses"]
    assert "key rejected" in refused["detail"] and "401" in refused["detail"] and "KT_DOCTOR_GOOD_KEY" in refused["fix"]
