"""Real Git for the sync tests: an upstream bare repo with a work clone to commit from, served by
`git daemon` or by the real `git http-backend` behind HTTP basic auth, and a server that hangs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import subprocess
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "kt test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "kt test", "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git, fail loudly, return stripped stdout."""
    proc = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


CFG = "policy-config.yaml"  # where the policy config sits in the test repositories


def push_signature(secret: bytes, body: bytes) -> str:
    """What GitHub sends in `X-Hub-Signature-256` for a webhook `body` signed with `secret`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def dlp_config(version: str = "1.0.0", name: str = "sync-e2e") -> str:
    """A valid policy config whose dlp-filter blocks 'project-bluebird' (then an audit-logger)."""
    return (f"pack: {{name: {name}, version: {version}, enabled: true}}\n"
            "providers:\n  targets:\n    - {id: demo, provider: mock, model: demo-model}\n"
            "policies:\n  chain: [dlp-filter, audit-logger]\n"
            "policy:\n  dlp-filter: {blocked_terms: [project-bluebird], action: block}\n"
            "  audit-logger: {retention_days: 30}\n")


def config_yaml(version: str = "1.0.0", chain: Iterable[str] = ("audit-logger",), name: str = "sync-test") -> str:
    """A valid policy config whose pack version marks which commit it came from."""
    blocks = "\n".join(f"  {kind}: {{}}" for kind in chain if kind != "audit-logger")
    return (
        f"pack: {{name: {name}, version: {version}, enabled: true}}\n"
        "providers:\n  targets:\n    - {id: demo, provider: mock, model: demo-model}\n"
        f"policies:\n  chain: [{', '.join(chain)}]\n"
        f"policy:\n  audit-logger: {{retention_days: 30}}\n{blocks}\n"
    )


INVALID_YAML = config_yaml("9.9.9", chain=("audit-logger", "no-such-policy"))


class Upstream:
    """A bare repository (the remote) and a work clone that commits and pushes to it."""

    def __init__(self, root: Path, branch: str = "main", name: str = "policies.git") -> None:
        self.root = root
        self.branch = branch
        self.bare = root / name
        self.work = root / "work"
        git("init", "--quiet", "--bare", "-b", branch, str(self.bare))
        git("init", "--quiet", "-b", branch, str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str | None], message: str = "change", push: bool = True) -> str:
        """Write (or with None delete) files, commit, push; return the new sha."""
        for rel, text in files.items():
            path = self.work / rel
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        if push:
            self.push()
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)

    def push(self, force: bool = False) -> None:
        flags = ["--force"] if force else []
        git("push", "--quiet", *flags, "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.work)

    def rewind(self, n: int = 1) -> str:
        """Force-push the branch `n` commits back (a history rewrite); return the new head."""
        git("reset", "--quiet", "--hard", f"HEAD~{n}", cwd=self.work)
        self.push(force=True)
        return self.head()

    def tag(self, name: str, rev: str = "HEAD", annotated: bool = False) -> None:
        """Create or move tag `name` to `rev` and force-push it."""
        git("tag", "-f", *(["-a", "-m", f"tag {name}"] if annotated else []), name, rev, cwd=self.work)
        git("push", "--quiet", "--force", "origin", f"refs/tags/{name}", cwd=self.work)

    def revert(self) -> str:
        """`git revert HEAD` and push; return the new head."""
        git("revert", "--no-edit", "HEAD", cwd=self.work)
        self.push()
        return self.head()

    def delete_branch(self) -> None:
        git("config", "receive.denyDeleteCurrent", "ignore", cwd=self.bare)
        git("push", "--quiet", "origin", "--delete", self.branch, cwd=self.work)



class GitDaemon:
    """The real `git daemon` exporting every repository under `base` on a loopback port (git:// URLs).

    `git daemon --port=0` listens on 9418, so the port is bound here (to 0, reported by the socket) and
    each accepted connection is served by its own `git daemon --inetd` (as inetd would run it)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._thread = threading.Thread(target=self._serve, name=f"git-daemon-{self.port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, (addr, port) = self.sock.accept()
            except OSError:  # stopped
                return
            with conn:  # the child holds its own copy
                self.procs.append(subprocess.Popen(
                    ["git", "daemon", "--inetd", "--export-all", "--log-destination=none",
                     f"--base-path={self.base}", str(self.base)],
                    stdin=conn, stdout=conn, stderr=subprocess.DEVNULL,
                    env={**GIT_ENV, "REMOTE_ADDR": addr, "REMOTE_PORT": str(port)}))

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop listening (connections are refused from now on) and end the connections still served."""
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone would leave it listening)
        self.sock.close()
        self._thread.join(10)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(10)


class _CgiHandler(BaseHTTPRequestHandler):
    server: GitHttpServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.server.requests += 1
        if self.command == "GET" and self.path.partition("?")[0].endswith("/info/refs"):
            self.server.fetches += 1  # every fetch (or clone) starts with one ref advertisement
        user = self._user()
        if self.server.users and user is None:
            body = b"authentication required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
            "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": user or "", "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", "") if self.server.protocol_v2 else "",
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        out = subprocess.run([HTTP_BACKEND], input=body, env=env, capture_output=True, timeout=60).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, payload = out.partition(sep)
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return user if (user, password) in self.server.users else None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class GitHttpServer(ThreadingHTTPServer):
    """Smart HTTP over loopback: the real git-http-backend as CGI, behind basic auth when `users` is set."""

    daemon_threads = True

    def __init__(self, root: Path, users: set[tuple[str, str]] | None = None, protocol_v2: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _CgiHandler)
        self.root = root
        self.protocol_v2 = protocol_v2  # False: protocol v0 only, where a server refuses unadvertised SHAs
        self.users = users if users is not None else set()
        self.requests = 0
        self.fetches = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str, auth: str = "") -> str:
        return f"http://{auth + '@' if auth else ''}127.0.0.1:{self.server_address[1]}/{name}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class HangingServer:
    """Accepts TCP connections and never answers (a remote that hangs mid-fetch)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def stop(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()
