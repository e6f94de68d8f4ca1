"""A real `kt gateway run` subprocess on a loopback port it binds itself (port 0), for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from email.message import Message
from pathlib import Path
from typing import Any

import openai

from tests.gitserve import push_signature
from tests.kt_process import clean_env
from tests.waiting import WaitTimeout, wait_for

REPORTERS = ("kt.gateway", "kt.gateway.supervisor")  # the loggers of the lines that say the bound port
_TEXT_PORT = re.compile(r"^\S+ INFO (?:kt\.gateway|kt\.gateway\.supervisor): .* port=(\d+)$")


def reported_port(log: str) -> int | None:
    """The port a gateway said it listens on (its "listening on" line, or with `--workers` its supervisor's),
    from its stderr: JSON lines (the `port` field) or `--log-format text` (`port=N`); None before it says.
    Only whole lines count (a line being written is not read half)."""
    for line in log.split("\n")[:-1]:
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("logger") in REPORTERS and isinstance(record.get("port"), int):
                return record["port"]
        elif found := _TEXT_PORT.match(line):
            return int(found[1])
    return None


class GatewayProcess:
    """`python -m kt gateway run` with its own state dir; stderr (JSON logs) goes to a file.

    The one way tests start a gateway subprocess (in a test, through the `gateway_process` fixture,
    which stops it after): `config` None runs it without `--policy-config` (e.g. `--git-repo ...`
    in `args`); `env` is added to this process's environment (to `clean_env()` with `clean=True`);
    it is started once `ready` answers 200 (within `timeout` s), or, with
    `wait=False`, once `wait_ready()` is called. It listens on `--listen 127.0.0.1:0` and `port`
    is the one its log reports (read on first use); an explicit `port` listens there instead (e.g. a
    restart on the port an earlier gateway reported). `argv` replaces the whole `kt ...` command line
    that config, state dir and args would make (e.g. a container image's command); it listens on
    loopback, on `port` if given, else on the port its log reports (e.g. `--listen 127.0.0.1:0`).
    """

    def __init__(self, config: Path | None, state_dir: Path, *args: str, env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None, ready: str = "/readyz", timeout: float = 20,
                 wait: bool = True, port: int | None = None, argv: Sequence[str] | None = None,
                 clean: bool = False) -> None:
        self._port = port or None  # 0: the port its log reports
        self._timeout = timeout
        self.state_dir = state_dir
        fd, log_path = tempfile.mkstemp(prefix="gateway-", suffix=".log", dir=state_dir.parent)
        os.close(fd)
        self.log_path = Path(log_path)
        self.env = {**(clean_env() if clean else os.environ), **(env or {})}
        self.admin_token = self.env.get("KEEPTRUSTS_ADMIN_TOKEN")
        source = ["--policy-config", str(config)] if config is not None else []
        argv = argv or ["gateway", "run", *source, "--listen", f"127.0.0.1:{port or 0}",
                        "--state-dir", str(state_dir), *args]
        self.ready_path = ready
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "kt", *argv], stdout=subprocess.DEVNULL,
                                     stderr=self._log, env=self.env,
                                     preexec_fn=preexec)  # e.g. a lower open-file limit
        if wait:
            self.wait_ready(timeout)

    @property
    def port(self) -> int:
        """The port it listens on: the one given, else the one its log reports (waited for, up to the start
        `timeout`; fails at once if the process exits first)."""
        if self._port is None:
            try:
                self._port = wait_for(self._reported_port, timeout=self._timeout)
            except WaitTimeout:
                raise WaitTimeout(f"gateway did not report its port within {self._timeout}s; log:\n"
                                  f"{self.logs()}") from None
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _reported_port(self) -> int | None:
        port = reported_port(self.logs())
        if port is None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode} before it reported its port; "
                                 f"log:\n{self.logs()}")
        return port

    def wait_ready(self, timeout: float = 20) -> None:
        """Wait until `ready` answers 200; fail (and end the process) if it exits or `timeout` s pass."""
        try:
            wait_for(self._ready, timeout=timeout)
        except WaitTimeout:
            self.kill9()
            raise WaitTimeout(f"gateway did not become ready within {timeout}s; log:\n{self.logs()}") from None
        except AssertionError:  # it exited
            self.kill9()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}; log:\n{self.logs()}")
        if self._port is None:
            self._port = self._reported_port()
            if self._port is None:
                return False
        try:
            return self.get(self.ready_path)[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                admin: bool = True) -> tuple[int, Message, bytes]:
        """One HTTP request; (status, headers (case-insensitive), body) whatever the status."""
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if admin and self.admin_token and path.startswith("/keeptrusts"):
            req.add_header("Authorization", f"Bearer {self.admin_token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, headers, body = self.request("GET", path, **kw)
        is_json = headers.get("Content-Type", "").startswith("application/json")
        return status, json.loads(body) if is_json else body.decode()

    def push_webhook(self, secret: str | bytes, payload: dict[str, Any] | None = None,
                     event: str | None = None) -> int:
        """POST a GitHub push webhook (default payload: a push to main) signed with `secret`, with
        `X-GitHub-Event: <event>` when given; its status."""
        payload = payload if payload is not None else {"ref": "refs/heads/main"}
        key = secret.encode() if isinstance(secret, str) else secret
        headers = {"X-Hub-Signature-256": push_signature(key, json.dumps(payload).encode())}
        if event:
            headers["X-GitHub-Event"] = event
        return self.request("POST", "/keeptrusts/sync/webhook", payload, headers, admin=False)[0]

    def chat(self, text: str) -> tuple[int, Message, bytes]:
        return self.request("POST", "/v1/chat/completions",
                            {"model": "demo-model", "messages": [{"role": "user", "content": text}]})

    def chat_status(self, text: str) -> int:
        """The status of one chat completion through the OpenAI SDK (no retries)."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)
        try:
            client.chat.completions.create(model="demo-model", messages=[{"role": "user", "content": text}])
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    def status(self) -> dict[str, Any]:
        """`GET /keeptrusts/status` (an empty dict when it is not JSON)."""
        body = self.get("/keeptrusts/status")[1]
        return body if isinstance(body, dict) else {}

    def revision(self) -> str | None:
        """The running config's revision."""
        return (self.status().get("config") or {}).get("revision")

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample of /metrics (0 when absent), e.g. metric("x_total", '{result="ok"}')."""
        wanted = name + labels
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.logs().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL and wait (no drain)."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()
