"""`kt gateway run --workers N`: one supervisor process, N worker processes on one socket.

The supervisor binds the listening socket(s) and starts each worker as `python -m kt <the
same arguments>` with the sockets inherited (`$KEEPTRUSTS_GATEWAY_LISTEN_FDS`), its index
(`$KEEPTRUSTS_GATEWAY_WORKER`) and the group directory for the one metrics/status view
(`gateway/control/group.py`). It runs the embedded sync agent (one per host, not per worker);
workers load what it publishes to the state dir. A worker that exits is started again after a
jittered backoff (0.5 s doubling to 30 s, reset once a worker served a minute), logged and
counted. SIGHUP goes to every worker (each reloads `<state>/current`, the same revision) and
triggers a sync; SIGTERM/SIGINT go to every worker (each drains), then the supervisor exits 0.
sd_notify: the workers' own notifications go to the supervisor's socket, and it tells systemd
READY=1 once every worker said READY.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tornado.netutil import bind_sockets

from gateway.control import sdnotify
from gateway.control.group import GROUP_ENV, WORKER_ENV
from sync.backoff import backoff

if TYPE_CHECKING:
    from gateway.control.gitsync import EmbeddedSync

log = logging.getLogger("kt.gateway.supervisor")
FDS_ENV = "KEEPTRUSTS_GATEWAY_LISTEN_FDS"
RESTARTS_FILE = "restarts"  # in the group dir: worker restarts so far (keeptrusts_gateway_worker_restarts_total)
STABLE_S = 60.0  # a worker that served this long resets its backoff


V1_CPU_MOUNTS = ("cpu,cpuacct", "cpuacct,cpu", "cpu")  # where cgroup v1 mounts its cpu controller


def cgroup_cpus(root: Path = Path("/")) -> float | None:
    """The CPU quota of this process's cgroup (e.g. a container's CPU limit) in CPUs, or None for no limit.

    cgroup v2 `cpu.max` ("max 100000": none) and v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`
    (-1: none), in the cgroup `/proc/self/cgroup` names and each of its parents up to the
    hierarchy's root (a limit on a parent holds too; in a container the hierarchy's root is the
    container's own cgroup): the smallest found. `root` is the file system root (tests pass a tree)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    v2, v1 = "/", "/"
    for line in lines:
        number, controllers, path = [*line.split(":", 2), "", ""][:3]
        if number == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    base = root / "sys/fs/cgroup"
    quotas = [_v2_quota(d) for d in _up_from(base, v2)]
    mount = next((base / name for name in V1_CPU_MOUNTS if (base / name).is_dir()), None)
    if mount is not None:
        quotas += [_v1_quota(d) for d in _up_from(mount, v1)]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _up_from(mount: Path, path: str) -> list[Path]:
    """`mount/path` and its parents up to `mount` (those that exist)."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def _v2_quota(cgroup: Path) -> float | None:
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(cgroup: Path) -> float | None:
    try:
        quota = int((cgroup / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def worker_count(value: str | int, quota: float | None = None) -> int:
    """`auto` = the CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota
    (a Kubernetes CPU limit of 2 on a 64-core node is 2 workers); else a whole number >= 1."""
    if str(value).strip().lower() == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        quota = cgroup_cpus() if quota is None else quota
        return max(1, min(cpus, math.ceil(quota)) if quota and quota != math.inf else cpus)
    count = int(value)
    if count < 1:
        raise ValueError("--workers must be a whole number >= 1 or 'auto'")
    return count


def inherited_sockets() -> list[socket.socket] | None:
    """The listening sockets a supervisor handed to this worker, or None."""
    fds = os.environ.get(FDS_ENV)
    if not fds:
        return None
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",")]


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive early exits (backoff grows with them)
    restart_at: float | None = None
    ready: bool = False


@dataclass
class Supervisor:
    argv: list[str]  # the worker command line
    workers: int
    host: str
    port: int
    sync: EmbeddedSync | None = None
    drain_timeout: float = 30.0
    restarts: int = 0
    pool: list[Worker] = field(default_factory=list)
    _signals: list[int] = field(default_factory=list)

    def run(self) -> int:
        if self.sync is not None:
            self.sync.acquire()  # AgentLocked before a socket is bound or the group dir is made
        try:
            sockets = bind_sockets(self.port, self.host or None, backlog=1024)
        except BaseException:
            if self.sync is not None:
                self.sync.stop()
            raise
        self.group = Path(tempfile.mkdtemp(prefix="kt-gateway-group-"))
        notify_path = self.group / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify.bind(str(notify_path))
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.env = {**os.environ, GROUP_ENV: str(self.group), "NOTIFY_SOCKET": str(notify_path),
                    FDS_ENV: ",".join(str(s.fileno()) for s in sockets)}
        self.env.pop("WATCHDOG_USEC", None)  # systemd's watchdog is the supervisor's to answer
        self.fds = tuple(s.fileno() for s in sockets)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: self._signals.append(signum))
        if self.sync is not None:
            self.sync.start()
        self.pool = [Worker(i) for i in range(self.workers)]
        for worker in self.pool:
            self._spawn(worker)
        host, port = self.host or "0.0.0.0", sockets[0].getsockname()[1]  # the bound port (HOST:0 picks one)
        log.info("supervisor %d: %d worker(s) on %s:%d", os.getpid(), self.workers, host, port,
                 extra={"host": host, "port": port})
        try:
            return self._loop()
        finally:
            for s in sockets:
                s.close()
            self.notify.close()
            if self.sync is not None:
                self.sync.stop()
            shutil.rmtree(self.group, ignore_errors=True)

    def _spawn(self, worker: Worker) -> None:
        env = {**self.env, WORKER_ENV: str(worker.index)}
        worker.proc = subprocess.Popen(self.argv, env=env, pass_fds=self.fds)
        worker.started_at, worker.restart_at, worker.ready = time.monotonic(), None, False

    def _loop(self) -> int:
        told_ready = False
        interval = sdnotify.watchdog_interval()
        next_ping = time.monotonic()
        while True:
            readable, _, _ = select.select([self.notify], [], [], 0.1)
            if readable:
                self._read_notify()
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: every worker reloads%s", " and the agent syncs" if self.sync else "")
                    if self.sync is not None:
                        self.sync.trigger()
                    self._send(signal.SIGHUP)
                else:
                    return self._stop()
            now = time.monotonic()
            for worker in self.pool:
                self._check(worker, now)
            if not told_ready and all(w.ready for w in self.pool):
                told_ready = True
                sdnotify.ready(f"{self.workers} worker(s) serving")
            if interval and now >= next_ping:
                sdnotify.watchdog()
                next_ping = now + interval

    def _read_notify(self) -> None:
        try:
            data, ancdata, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(12))
        except OSError:
            return
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = int.from_bytes(payload[:4], sys.byteorder)
        fields = data.decode(errors="replace").split("\n")
        for worker in self.pool:
            if worker.proc is not None and worker.proc.pid == pid and "READY=1" in fields:
                worker.ready = True

    def _check(self, worker: Worker, now: float) -> None:
        proc = worker.proc
        if proc is not None and proc.poll() is None:
            if worker.failures and now - worker.started_at > STABLE_S:
                worker.failures = 0
            return
        if worker.restart_at is None:
            code = proc.returncode if proc is not None else None
            delay = backoff(worker.failures, 0.5, 30.0, least=0.25)
            worker.failures += 1
            worker.ready = False
            log.error("worker %d (pid %s) exited with %s; starting it again in %.1f s", worker.index,
                      proc.pid if proc else "-", code, delay)
            worker.restart_at = now + delay
            return
        if now >= worker.restart_at:
            self.restarts += 1
            with contextlib.suppress(OSError):
                (self.group / RESTARTS_FILE).write_text(str(self.restarts))
            self._spawn(worker)

    def _send(self, signum: int) -> None:
        for worker in self.pool:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    def _stop(self) -> int:
        log.info("signal received: every worker drains (up to %.1f s)", self.drain_timeout)
        sdnotify.stopping(f"draining (up to {self.drain_timeout:g} s)")
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_timeout + 10
        code = 0
        for worker in self.pool:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            if worker.proc.returncode not in (0, None) and worker.restart_at is None:
                code = 1
        log.info("stopped")
        return code
