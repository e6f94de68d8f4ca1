"""Benchmark the Git sync agent: merge-to-publish latency (trigger vs polling) and sync time on a big repo.

    .venv/bin/python bench/sync.py [--repeats 20] [--poll-interval 1.0] [--commits 10000] [--files 1000] [--json]

1. Latency: a commit is pushed to a bare repo on disk; we measure until `<state>/current` serves it,
   once with an immediate trigger (what a webhook, `kt sync now` or SIGHUP do) and once by polling;
   then until a `kt gateway run --git-repo` process serves it (`/keeptrusts/status`), by webhook and polling.
2. Scale: a repo of `--commits` commits touching `--files` config files (built with `git fast-import`);
   first sync into an empty state dir, then an incremental sync after one more commit, then a noop.
   With a shallow fetch (depth 1, the default) the incremental sync must not grow with history.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sync.agent import SyncAgent, SyncSettings
from sync.repo import Remote
from sync.scheduler import SyncScheduler
from sync.status import read_status

GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "b@example.com", "PATH": "/usr/bin:/bin:/usr/local/bin"}


def config(version: str, name: str = "bench") -> str:
    return (f"pack: {{name: {name}, version: {version}, enabled: true}}\n"
            "providers:\n  targets:\n    - {id: demo, provider: mock, model: demo-model}\n"
            "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {retention_days: 30}\n")


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True)
    return proc.stdout.strip()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def wait_applied(state: Path, sha: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (read_status(state) or {}).get("applied_revision") != sha:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {sha[:12]}")
        time.sleep(0.002)


def latency(root: Path, repeats: int, interval: float, use_trigger: bool) -> dict:
    root.mkdir(parents=True)
    bare, work = root / "lat.git", root / "lat-work"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("init", "-q", "-b", "main", str(work))
    git("remote", "add", "origin", str(bare), cwd=work)

    def commit(v: int) -> str:
        (work / "policy-config.yaml").write_text(config(f"{v}.0.0"))
        git("add", "-A", cwd=work)
        git("commit", "-qm", f"v{v}", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        return git("rev-parse", "HEAD", cwd=work)

    first = commit(1)
    state = root / ("state-trigger" if use_trigger else "state-poll")
    agent = SyncAgent(SyncSettings(Remote(str(bare)), state, "policy-config.yaml"))
    agent.acquire()
    sched = SyncScheduler(agent, interval=3600 if use_trigger else interval)
    sched.start()
    wait_applied(state, first)
    samples = []
    try:
        for v in range(2, repeats + 2):
            if not use_trigger:  # merge at a random point of the polling cycle
                time.sleep(random.uniform(0, interval))
            sha = commit(v)
            t0 = time.perf_counter()
            if use_trigger:
                sched.trigger()
            wait_applied(state, sha)
            samples.append(time.perf_counter() - t0)
    finally:
        sched.stop()
        agent.release()
    return {"mode": "trigger" if use_trigger else f"poll every {interval:g}s", "n": len(samples),
            "p50_ms": round(pct(samples, 50) * 1000, 1), "p95_ms": round(pct(samples, 95) * 1000, 1)}


def serving_latency(root: Path, repeats: int, interval: float, use_webhook: bool) -> dict:
    """Merge -> a `kt gateway run --git-repo` process serves the new revision (its /keeptrusts/status)."""
    import hashlib
    import hmac
    import os
    import socket
    import urllib.request

    root.mkdir(parents=True)
    bare, work = root / "gw.git", root / "gw-work"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("init", "-q", "-b", "main", str(work))
    git("remote", "add", "origin", str(bare), cwd=work)

    def commit(v: int) -> str:
        (work / "policy-config.yaml").write_text(config(f"{v}.0.0"))
        git("add", "-A", cwd=work)
        git("commit", "-qm", f"v{v}", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        return git("rev-parse", "HEAD", cwd=work)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "secret").write_text("bench-secret")
    first = commit(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kt", "gateway", "run", "--git-repo", str(bare), "--state-dir", str(root / "state"),
         "--listen", f"127.0.0.1:{port}", "--sync-interval", str(3600 if use_webhook else interval),
         "--webhook-secret-file", str(root / "secret"), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "KEEPTRUSTS_ADMIN_TOKEN": ""})
    url = f"http://127.0.0.1:{port}"

    def revision() -> str | None:
        try:
            with urllib.request.urlopen(url + "/keeptrusts/status", timeout=5) as resp:
                return (json.loads(resp.read()).get("config") or {}).get("revision")
        except OSError:
            return None

    def wait_serving(sha: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while revision() != sha:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"gateway did not serve {sha[:12]}")
            time.sleep(0.005)

    samples = []
    try:
        wait_serving(first)
        body = b'{"ref": "refs/heads/main"}'
        sig = "sha256=" + hmac.new(b"bench-secret", body, hashlib.sha256).hexdigest()
        for v in range(2, repeats + 2):
            if not use_webhook:
                time.sleep(random.uniform(0, interval))
            sha = commit(v)
            t0 = time.perf_counter()
            if use_webhook:
                req = urllib.request.Request(url + "/keeptrusts/sync/webhook", data=body,
                                             headers={"X-Hub-Signature-256": sig})
                urllib.request.urlopen(req, timeout=5).close()
            wait_serving(sha)
            samples.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"mode": "gateway, webhook" if use_webhook else f"gateway, poll every {interval:g}s", "n": len(samples),
            "p50_ms": round(pct(samples, 50) * 1000, 1), "p95_ms": round(pct(samples, 95) * 1000, 1)}


def big_repo(root: Path, commits: int, files: int) -> Path:
    """A bare repo with `commits` commits over `files` config files, built by git fast-import."""
    bare = root / "big.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=bare, stdin=subprocess.PIPE, env=GIT_ENV)
    out = proc.stdin
    ts = 1_700_000_000

    def blob(mark: int, text: str) -> None:
        data = text.encode()
        out.write(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))

    mark = 1
    first_files = []
    for i in range(files):
        blob(mark, config("1.0.0", f"team-{i:04}"))
        first_files.append((mark, f"configs/team-{i:04}.yaml"))
        mark += 1
    msg = b"initial import"
    out.write(b"commit refs/heads/main\nmark :%d\ncommitter bench <b@example.com> %d +0000\ndata %d\n%s\n"
              % (mark, ts, len(msg), msg))
    out.write(b"".join(b"M 100644 :%d %s\n" % (m, p.encode()) for m, p in first_files))
    prev = mark
    mark += 1
    for c in range(1, commits):
        i = c % files
        blob(mark, config(f"1.{c}.0", f"team-{i:04}"))
        msg = b"change %d" % c
        out.write(b"commit refs/heads/main\nmark :%d\ncommitter bench <b@example.com> %d +0000\ndata %d\n%s\n"
                  b"from :%d\nM 100644 :%d configs/team-%04d.yaml\n" % (mark + 1, ts + c, len(msg), msg, prev, mark, i))
        prev = mark + 1
        mark += 2
    out.close()
    if proc.wait():
        raise SystemExit("git fast-import failed")
    return bare


def scale(root: Path, commits: int, files: int) -> list[dict]:
    t0 = time.perf_counter()
    bare = big_repo(root, commits, files)
    built = time.perf_counter() - t0
    work = root / "big-work"
    rows = []
    for depth, path, label in ((1, "configs", f"depth 1, validate all {files} files"),
                               (1, "configs/team-0000.yaml", "depth 1, validate one file"),
                               (0, "configs/team-0000.yaml", "full history, validate one file")):
        state = root / f"state-big-{depth}-{len(rows)}"
        agent = SyncAgent(SyncSettings(Remote(str(bare), depth=depth), state, path))
        agent.acquire()
        first = agent.sync_once()
        assert first.result == "success", first
        if not work.exists():
            git("clone", "-q", str(bare), str(work))
        (work / "configs" / "team-0000.yaml").write_text(config(f"9.{len(rows)}.0", "team-0000"))
        git("commit", "-qam", "one more", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        incremental = agent.sync_once()
        assert incremental.result == "success", incremental
        noop = agent.sync_once()
        assert noop.result == "noop", noop
        agent.release()
        rows.append({"case": label, "first_s": round(first.duration, 3),
                     "incremental_s": round(incremental.duration, 3), "noop_s": round(noop.duration, 3)})
    rows.append({"case": f"repo built with fast-import ({commits} commits, {files} files)", "seconds": round(built, 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--poll-interval", type=float, default=1.0)
    ap.add_argument("--commits", type=int, default=10_000)
    ap.add_argument("--files", type=int, default=1_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kt-bench-sync-") as tmp:
        root = Path(tmp)
        result = {
            "latency": [latency(root / "t", args.repeats, args.poll_interval, True),
                        latency(root / "p", max(5, args.repeats // 2), args.poll_interval, False),
                        serving_latency(root / "gw", args.repeats, args.poll_interval, True),
                        serving_latency(root / "gp", max(5, args.repeats // 2), args.poll_interval, False)],
            "scale": scale(root, args.commits, args.files),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("merge latency: to publish (agent in process) and to serving (kt gateway run --git-repo)")
    for row in result["latency"]:
        print(f"  {row['mode']:<30} n={row['n']:<3} p50 {row['p50_ms']:>8.1f} ms   p95 {row['p95_ms']:>8.1f} ms")
    print(f"sync time ({args.commits} commits, {args.files} files)")
    for row in result["scale"]:
        if "first_s" in row:
            print(f"  {row['case']:<36} first {row['first_s']:>7.3f} s   incremental {row['incremental_s']:>7.3f} s"
                  f"   noop {row['noop_s']:>7.3f} s")
        else:
            print(f"  {row['case']}: {row['seconds']} s")


if __name__ == "__main__":
    main()
