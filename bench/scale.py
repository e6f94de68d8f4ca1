"""Scale-out figures: workers, concurrent streams, and what shared counters cost (issue 15 §4).

    python bench/scale.py [--quick] [--duration 10] [--streams 10000] [--json out.json]

One command, three parts, each against `tests/fake_upstream.py --fast` on loopback:

(a) throughput of `kt gateway run --workers 1`, `2` and `auto` side by side, against an upstream
    with a realistic delay (50 ms to the first token, then 20 tokens 20 ms apart: a 0.43 s
    stream), `--concurrency` streams at once for `--duration` s: streams/s, TTFT p50/p99, and
    gateway CPU per request (user+system time of the supervisor and its workers / requests);
(b) the most concurrent SSE streams one worker holds: a ladder of open streams (1000, 2000, ...
    up to `--streams`), each stream 20 tokens 0.5 s apart, opened over a ramp; per step the
    streams that got their first token, TTFT added p99 (TTFT minus the upstream's 50 ms) and
    RSS per stream (worker RSS with the streams open minus idle, divided by the streams);
(c) the cost of counters per request: c=1 interleaved rounds of non-streaming requests through a
    `spend-limit` chain with no counter backend in the path (no spend-limit), the default SQLite
    file, and `--state-url` Redis on loopback (a `redis-server` started here): added p50.

Load generators, the upstream and the gateway share the machine: on 2 cores the figures of (a)
and (b) are bounded by the client and the upstream as much as by the gateway (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the packages: bench/sync.py must not shadow sync/
import overhead  # noqa: E402  (free_port, reported_port, wait_http, start, rss_mb, connect, one_request)

KEY_ENV = "BENCH_UPSTREAM_KEY"
CONFIG = """\
pack: {{name: bench-scale, version: 1.0.0, enabled: true}}
providers:
  targets:
    - {{id: fake, provider: openai, model: gpt-4o-mini, base_url: "{upstream}", secret_key_ref: {{env: {key}}}}}
  fallback: {{strategy: ordered, max_retries: 0, retry_on: [5xx]}}
policies:
  chain: [{chain}]
policy:
  audit-logger: {{retention_days: 30}}
  pii-detector: {{action: redact}}
  spend-limit: {{max_daily_usd: 1000000000}}
"""
STREAM = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 64,
                     "messages": [{"role": "user", "content": "Tell me a story about the sea."}]}).encode()
PLAIN = json.dumps({"model": "gpt-4o-mini", "max_tokens": 16,
                    "messages": [{"role": "user", "content": "Say hi to jane@example.com"}]}).encode()


def request_bytes(port: int, body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer bench\r\nContent-Length: %d\r\n\r\n%s" % (port, len(body), body))


def tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds of `pid` and its children (the supervisor and its workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_tree_mb(pid: int) -> float:
    """RSS of the worker processes (the children) when supervised, else of `pid` itself."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []

    class P:
        def __init__(self, pid: int) -> None:
            self.pid = pid

    return sum(overhead.rss_mb(P(p)) for p in (children or [pid]))  # type: ignore[arg-type]


async def one_async_stream(port: int, payload: bytes, timings: list[float], errors: list[str]) -> None:
    """One streamed request on its own connection; appends TTFT (s) or an error."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        errors.append(f"connect: {exc.strerror or exc}")
        return
    try:
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            return
        ttft = None
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            if ttft is None and b'"content":"' in chunk:
                ttft = time.perf_counter() - started
            if b"[DONE]" in chunk or chunk.endswith(b"0\r\n\r\n"):
                break
        if ttft is None:
            errors.append("no content")
        else:
            timings.append(ttft)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        errors.append(type(exc).__name__)
    finally:
        writer.close()


async def closed_loop(port: int, concurrency: int, duration: float) -> tuple[int, list[float], list[str]]:
    """`concurrency` clients each streaming request after request for `duration` s."""
    payload = request_bytes(port, STREAM)
    timings: list[float] = []
    errors: list[str] = []
    done = 0
    deadline = time.perf_counter() + duration

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await one_async_stream(port, payload, timings, errors)
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done, timings, errors


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Stack:
    """Processes started for the run; all stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def upstream(self, *args: str) -> str:
        log = self.tmp / f"upstream-{len(self.procs)}.log"
        proc = overhead.start([sys.executable, "-m", "tests.fake_upstream", "--fast", "--no-record",
                               "--port", "0", *args], log=log)
        self.procs.append(proc)
        port = overhead.reported_port(log, proc, 10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                overhead.connect(f"http://127.0.0.1:{port}").close()
                break
            except OSError:
                time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    def gateway(self, upstream: str, chain: str, *args: str, name: str = "gw") -> tuple[subprocess.Popen, int]:
        cfg = self.tmp / f"{name}.yaml"
        cfg.write_text(CONFIG.format(upstream=upstream, key=KEY_ENV, chain=chain))
        # --log-level warning (no per-request lines in the figures) also hides the line that reports the port
        # of --listen HOST:0, so this gateway gets a port that was free a moment ago.
        port = overhead.free_port()
        proc = overhead.start([sys.executable, "-m", "kt", "gateway", "run", "--config", str(cfg),
                               "--listen", f"127.0.0.1:{port}", "--state-dir", str(self.tmp / f"state-{name}"),
                               "--log-level", "warning", *args],
                              env={KEY_ENV: "sk-bench"}, log=self.tmp / f"{name}.log")
        self.procs.append(proc)
        overhead.wait_http(f"http://127.0.0.1:{port}/readyz", 30, proc)
        return proc, port

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def part_a(stack: Stack, args: argparse.Namespace) -> list[dict]:
    from gateway.supervisor import worker_count

    upstream = stack.upstream("--first-byte-delay-ms", "50", "--chunks", "20", "--chunk-delay-ms", "20")
    rows = []
    auto = worker_count("auto")
    for label in ("1", "2", "auto"):
        if label == "auto" and auto in (1, 2):
            rows.append({"workers": f"auto (= {auto})", "same_as": str(auto)})
            continue
        proc, port = stack.gateway(upstream, "pii-detector, audit-logger", "--workers", label,
                                   "--max-concurrency", "5000", name=f"a{label}")
        time.sleep(1.0 if label != "1" else 0.2)  # every worker up (the supervisor's readyz is the first one's)
        asyncio.run(closed_loop(port, 8, 1.0))  # warm-up
        cpu0 = tree_cpu_s(proc.pid)
        t0 = time.perf_counter()
        done, timings, errors = asyncio.run(closed_loop(port, args.concurrency, args.duration))
        wall = time.perf_counter() - t0
        cpu = tree_cpu_s(proc.pid) - cpu0
        rows.append({"workers": label, "streams_per_s": round(done / wall, 1), "requests": done,
                     "errors": len(errors), "ttft_p50_ms": round(pct(timings, 50) * 1000, 1),
                     "ttft_p99_ms": round(pct(timings, 99) * 1000, 1),
                     "cpu_ms_per_request": round(cpu / max(done, 1) * 1000, 2)})
        stack.stop(proc)
    return rows


async def hold_streams(port: int, n: int, ramp_s: float) -> tuple[list[float], list[str], list[asyncio.Task]]:
    payload = request_bytes(port, STREAM)
    timings: list[float] = []
    errors: list[str] = []
    tasks = []
    for i in range(n):
        tasks.append(asyncio.ensure_future(one_async_stream(port, payload, timings, errors)))
        if i % 100 == 99:
            await asyncio.sleep(ramp_s / (n / 100))
    return timings, errors, tasks


def part_b(stack: Stack, args: argparse.Namespace) -> list[dict]:
    upstream = stack.upstream("--first-byte-delay-ms", "50", "--chunks", "20", "--chunk-delay-ms", "500")
    proc, port = stack.gateway(upstream, "pii-detector, audit-logger", "--max-concurrency", str(args.streams * 2),
                               "--max-connections", str(args.streams * 2), name="b")
    idle = overhead.rss_mb(proc)
    rows = []
    steps = [n for n in (1000, 2000, 5000, 10000, 20000) if n <= args.streams] or [args.streams]

    async def step(n: int) -> dict:
        timings, errors, tasks = await hold_streams(port, n, ramp_s=min(5.0, n / 1000))
        deadline = time.perf_counter() + 30
        while len(timings) + len(errors) < n and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        rss = overhead.rss_mb(proc)  # every stream open: 20 tokens 0.5 s apart last ~10 s
        opened = len(timings)
        await asyncio.gather(*tasks, return_exceptions=True)
        added = [max(0.0, t - 0.050) for t in timings]
        kinds = ", ".join(f"{k} x{v}" for k, v in Counter(errors).most_common(2))
        return {"streams": n, "first_token": opened, "errors": f"{len(errors)} {kinds}".strip(),
                "ttft_added_p50_ms": round(pct(added, 50) * 1000, 1),
                "ttft_added_p99_ms": round(pct(added, 99) * 1000, 1),
                "rss_mb": round(rss, 1), "rss_kb_per_stream": round((rss - idle) * 1024 / max(opened, 1), 1)}

    for n in steps:
        row = asyncio.run(step(n))
        rows.append(row)
        print(f"  (b) {row}", flush=True)
        if n - row["first_token"] > n * 0.01:
            break
    stack.stop(proc)
    return rows


def part_c(stack: Stack, args: argparse.Namespace) -> list[dict]:
    upstream = stack.upstream()
    redis_port = overhead.free_port()  # redis-server cannot report a port: --port 0 turns TCP off
    paths: dict[str, int] = {}
    if shutil.which("redis-server"):
        redis = overhead.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"])
        stack.procs.append(redis)
        time.sleep(0.3)
    _, paths["no counter (audit-logger)"] = stack.gateway(upstream, "audit-logger", name="c0")
    _, paths["spend-limit, SQLite (default)"] = stack.gateway(upstream, "spend-limit, audit-logger", name="c1")
    if shutil.which("redis-server"):
        _, paths["spend-limit, --state-url redis"] = stack.gateway(
            upstream, "spend-limit, audit-logger", "--state-url", f"redis://127.0.0.1:{redis_port}/0", name="c2")
    conns = {name: overhead.connect(f"http://127.0.0.1:{port}") for name, port in paths.items()}
    samples: dict[str, list[list[int]]] = {name: [] for name in paths}

    def one(conn) -> int:
        t0 = time.perf_counter_ns()
        conn.request("POST", "/v1/chat/completions", PLAIN, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        return time.perf_counter_ns() - t0

    for conn in conns.values():  # warm-up
        for _ in range(50):
            one(conn)
    for _ in range(args.rounds):
        for name, conn in conns.items():
            samples[name].append([one(conn) for _ in range(args.per_round)])
    base = statistics.median(statistics.median(r) for r in samples[next(iter(paths))])
    rows = []
    for name, rounds in samples.items():
        med = statistics.median(statistics.median(r) for r in rounds)
        rows.append({"path": name, "p50_ms": round(med / 1e6, 3), "added_p50_ms": round((med - base) / 1e6, 3),
                     "p99_ms": round(pct([v for r in rounds for v in r], 99) / 1e6, 3)})
    return rows


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: 3 s, 1000 streams, 5 rounds")
    parser.add_argument("--duration", type=float, default=10.0, help="(a) seconds per worker count")
    parser.add_argument("--concurrency", type=int, default=500, help="(a) streams at once")
    parser.add_argument("--streams", type=int, default=10000, help="(b) the top of the ladder")
    parser.add_argument("--rounds", type=int, default=9, help="(c) interleaved rounds")
    parser.add_argument("--per-round", type=int, default=50, help="(c) requests per path per round")
    parser.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.streams, args.rounds, args.per_round = 3.0, 1000, 5, 30
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the client holds every stream
    print(f"bench/scale.py on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="kt-bench-scale-") as tmp:
        stack = Stack(Path(tmp))
        try:
            if "a" in args.parts:
                results["a"] = part_a(stack, args)
                print("\n(a) throughput by workers (50 ms TTFT + 20 tokens x 20 ms upstream, "
                      f"{args.concurrency} streams at once, {args.duration:g} s)\n" + table(results["a"]), flush=True)
            if "b" in args.parts:
                results["b"] = part_b(stack, args)
                print("\n(b) concurrent SSE streams held by one worker\n" + table(results["b"]), flush=True)
            if "c" in args.parts:
                results["c"] = part_c(stack, args)
                print(f"\n(c) counters per request (c=1, {args.rounds} interleaved rounds x {args.per_round})\n"
                      + table(results["c"]), flush=True)
        finally:
            stack.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
