"""What the gateway adds: latency, throughput and streaming TTFT, side by side with the baselines.

`make bench` runs it. On loopback, with the test upstream (`tests/fake_upstream.py --fast`) at
zero delay, it starts three paths and measures them in one run:

- direct       client -> fake upstream
- passthrough  client -> bench/passthrough.py (minimal Tornado proxy, same upstream client as the gateway) -> fake
- passthrough-kt  the same pass-through served by the gateway's HTTP layer (gateway/http/http1.py) on uvloop
- gateway      client -> `kt gateway run` with bench/policy-config.yaml (five policies) -> fake
- gateway-otlp the same gateway with `--otlp-endpoint` to a local OTLP/HTTP receiver (bench/otlp_receiver.py):
               what tracing costs, printed next to the table (when the kt-gateway[otel] extra is installed)

The proxy under test is pinned to CPU 0; the fake upstream and the load generators to the other
CPUs. Added latency: concurrency 1, interleaved rounds (each round runs every path in turn),
perf_counter_ns client over a keep-alive connection. Throughput: concurrency 32 with wrk
(installed from Debian when missing and possible) or a small asyncio client. Streaming: time to
the first content delta at concurrency 1, interleaved likewise.

    python bench/overhead.py [--rounds 9] [--per-round 50] [--duration 10] [--quick] [--json out.json]
    python bench/overhead.py --only gateway,gateway-otlp --quick    # the tracing cost alone, briefly
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-upstream-bench"
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [
    {"role": "system", "content": "You are a helpful support assistant."},
    {"role": "user", "content": "Hello, my email is jane.doe@example.com. Please summarise my last order."}]})
STREAM_BODY = orjson.dumps({**orjson.loads(BODY), "stream": True})
# The client's key: ignored by the pass-through, never forwarded by the gateway; compare-litellm sets its master key.
CLIENT_KEY = os.environ.get("BENCH_CLIENT_KEY", "sk-client")
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
# `python -m kt` with uvloop installed as the policy (the gateway picks uvloop itself when it is installed).
UVLOOP_KT = "import sys, uvloop; uvloop.install(); from kt.cli import main; sys.argv[0] = 'kt'; main()"
PATHS = ("passthrough", "passthrough-kt", "gateway", "gateway-otlp")  # measured besides direct (--only)
TARGETS = {"added_p50_ms": 0.5, "added_p99_ms": 1.5, "rps": 3000, "rps_vs_passthrough": 0.75, "ttft_added_ms": 1.0}


@dataclass
class Path_:
    name: str
    url: str  # base URL without /v1
    proc: subprocess.Popen | None = None
    note: str = ""
    latency_ns: list[int] = field(default_factory=list)
    round_p50_ns: list[float] = field(default_factory=list)
    ttft_ns: list[int] = field(default_factory=list)
    errors: int = 0
    rps: float = 0.0
    round_rps: list[float] = field(default_factory=list)  # c=32, one per load round
    load_p50_ms: float = 0.0
    load_p99_ms: float = 0.0
    load_errors: int = 0
    rss_mb: float = 0.0


# -- processes ---------------------------------------------------------------------------------


def cpus(layout: str) -> tuple[str | None, str | None]:
    """(CPUs of the proxy under test, CPUs of the upstream and load generators); Nones without pinning.

    split: the proxy alone on CPU 0, the rest on the others (the issue's setup). shared: all on CPU 0,
    for VMs where a wake-up across vCPUs costs milliseconds (c=1 latency only; RPS is then shared).
    """
    n = os.cpu_count() or 1
    if layout == "none" or not shutil.which("taskset") or (layout == "split" and n < 2):
        return None, None
    if layout == "shared":
        return "0", "0"
    return "0", f"1-{n - 1}" if n > 2 else "1"


def pinned(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu else cmd


def free_port() -> int:
    """A port free a moment ago, for a server that cannot bind 0 and report it (redis-server: 0 = no TCP)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LISTENING = re.compile(r"listening on http://[^\s/]+:(\d+)")


def reported_port(log: Path, proc: subprocess.Popen, timeout: float) -> int:
    """The port a server started on port 0 says it got, from its log: the `port` field of a JSON line (kt
    gateway run; docs/gateway.md), else `listening on http://HOST:PORT` (the fake upstream, the pass-through,
    the OTLP receiver). A port picked free beforehand could be taken by another socket before the bind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in (log.read_text(errors="replace") if log.exists() else "").split("\n")[:-1]:  # whole lines
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    if isinstance(port := orjson.loads(line).get("port"), int):
                        return port
            elif found := LISTENING.search(line):
                return int(found[1])
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it reported its port")
        time.sleep(0.05)
    raise RuntimeError(f"reported no port within {timeout}s")


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    """Poll GET url until it answers 200; fail early when the process died."""
    deadline = time.monotonic() + timeout
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].partition("/")[2]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not ready within {timeout}s")


def start(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)


def gateway_client() -> str:
    """The upstream client the gateway uses, so the pass-through baseline uses the same one."""
    src = (ROOT / "gateway" / "providers" / "upstream.py").read_text(errors="ignore")
    return "kt" if "gateway.http.client" in src else "aiohttp" if "import aiohttp" in src else "curl"


def rss_mb(proc: subprocess.Popen | None) -> float:
    """Resident memory of the process (the child of taskset is the same pid: taskset execs)."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, AttributeError):
        pass
    return 0.0


# -- measurements ------------------------------------------------------------------------------


def connect(url: str) -> http.client.HTTPConnection:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def one_request(conn: http.client.HTTPConnection) -> tuple[int, bool]:
    t0 = time.perf_counter_ns()
    conn.request("POST", "/v1/chat/completions", BODY, HEADERS)
    resp = conn.getresponse()
    resp.read()
    return time.perf_counter_ns() - t0, resp.status == 200


def one_stream(conn: http.client.HTTPConnection) -> tuple[int, bool]:
    """Time to the first SSE event carrying content; the rest of the stream is drained."""
    t0 = time.perf_counter_ns()
    conn.request("POST", "/v1/chat/completions", STREAM_BODY, HEADERS)
    resp = conn.getresponse()
    ttft = 0
    while line := resp.readline():
        if not ttft and line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
            ttft = time.perf_counter_ns() - t0
    return ttft, resp.status == 200 and ttft > 0


def interleaved(paths: list[Path_], rounds: int, per_round: int, warmup: int, stream: bool) -> None:
    """c=1: each round runs `per_round` requests on every path in turn (rotating the order)."""
    conns = {p.name: connect(p.url) for p in paths}
    call = one_stream if stream else one_request
    for p in paths:
        for _ in range(warmup):
            call(conns[p.name])
    for r in range(rounds):
        for p in paths[r % len(paths):] + paths[: r % len(paths)]:
            samples = []
            for _ in range(per_round):
                ns, ok = call(conns[p.name])
                if ok:
                    samples.append(ns)
                else:
                    p.errors += 1
            (p.ttft_ns if stream else p.latency_ns).extend(samples)
            if not stream and samples:
                p.round_p50_ns.append(statistics.median(samples))
    for c in conns.values():
        c.close()


def wrk_lua() -> Path:
    path = Path(tempfile.mkdtemp(prefix="kt-bench-")) / "post.lua"
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in HEADERS.items())
    path.write_text(f'wrk.method = "POST"\nwrk.body = [[{BODY.decode()}]]\n{headers}')
    return path


def ensure_wrk() -> str | None:
    if shutil.which("wrk"):
        return shutil.which("wrk")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk from Debian ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True, check=False)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True, check=False)
    return shutil.which("wrk")


Load = tuple[float, float, float, int]  # RPS, p50 ms, p99 ms, errors


def load_wrk(wrk: str, p: Path_, concurrency: int, duration: float, cpu: str | None, lua: Path) -> Load:
    cmd = pinned([wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(lua),
                  p.url + "/v1/chat/completions"], cpu)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout

    def ms(token: str) -> float:
        value = float(token.rstrip("usm"))
        return value / 1000 if token.endswith("us") else value * 1000 if token.endswith("s") and not \
            token.endswith("ms") else value

    rps = p50 = p99 = 0.0
    errors = 0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif parts[:1] == ["50%"]:
            p50 = ms(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = ms(parts[1])
        elif "Non-2xx" in line or line.strip().startswith("Socket errors"):
            errors += sum(int(x.strip(",")) for x in parts if x.strip(",").isdigit())
    return rps, p50, p99, errors


async def load_asyncio(p: Path_, concurrency: int, duration: float) -> Load:
    host, port = p.url.split("//")[1].split(":")
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(BODY)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()) + "\r\n").encode() + BODY
    latencies: list[int] = []
    errors = 0
    end = time.monotonic() + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.monotonic() < end:
            t0 = time.perf_counter_ns()
            writer.write(head)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter_ns() - t0)
            if b" 200 " not in status:
                errors += 1
        writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / (time.monotonic() - t0), q[49] / 1e6, q[98] / 1e6, errors


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """Sample `pid` with py-spy (raw collapsed stacks) while it is under load; None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                             "--rate", "250", "--gil", "--format", "raw", "--function", "--output", str(out),
                             "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hot_spots(raw: Path, top: int = 20) -> str:
    """Where the gateway's CPU goes, from py-spy's collapsed stacks.

    Three views: self time per function; time per innermost kt function (its library calls
    included, so `UpstreamClient.post_json` holds the HTTP client's request work); inclusive time of kt functions.
    """
    own: dict[str, int] = {}
    innermost: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # py-spy writes the odd torn line under load
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        ours = [f for f in frames if "(gateway/" in f or "(policies/" in f or "(sync/" in f]
        key = ours[-1] if ours else f"(no kt frame: {frames[-1].partition('(')[2].split('/')[0] or '?'})"
        innermost[key] = innermost.get(key, 0) + n
        for frame in set(ours):
            incl[frame] = incl.get(frame, 0) + n

    def block(title: str, counts: dict[str, int]) -> list[str]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return ["", title, *(f"  {v / total:6.1%}  {k}" for k, v in best)]

    return "\n".join([f"py-spy: {total} samples", *block("self time:", own),
                      *block("innermost kt function (library calls included):", innermost),
                      *block("inclusive time, kt functions:", incl)])


def http_get(url: str) -> bytes:
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/" + url.split("//")[1].partition("/")[2])
    return conn.getresponse().read()


def exported_spans(receiver: str, gateway: str, per_request: int = 4, wait_s: float = 8.0) -> tuple[int, int]:
    """(spans the OTLP receiver got, requests the traced gateway served), once the export caught up.

    A request makes `per_request` spans (request, input chain, upstream attempt, output chain); the
    SDK exports a batch every 5 s or when 512 are queued, and drops spans past a full queue (2048).
    """
    served = sum(float(line.rsplit(" ", 1)[1]) for line in http_get(gateway + "/metrics").decode().splitlines()
                 if line.startswith("keeptrusts_gateway_requests_total{"))
    deadline = time.monotonic() + wait_s
    while True:
        spans = orjson.loads(http_get(receiver + "/count"))["spans"]
        if spans >= served * per_request or time.monotonic() > deadline:
            return spans, int(served)
        time.sleep(0.2)


# -- report ------------------------------------------------------------------------------------


def rps_ratio(p: Path_, base: Path_ | None) -> float:
    """The median over load rounds of p's RPS / base's RPS in the same round (paired, like added p50).

    A ratio of the two medians would pair measurements up to a whole round apart; on a shared VM
    the machine's speed drifts within that time.
    """
    if base is None or not base.round_rps or len(p.round_rps) != len(base.round_rps):
        return float("nan")
    return statistics.median(a / b for a, b in zip(p.round_rps, base.round_rps, strict=True) if b)


def pct(values: list[int], q: int) -> float:
    """q-th percentile in ms (NaN without samples)."""
    return statistics.quantiles(values, n=100)[q - 1] / 1e6 if len(values) > 1 else float("nan")


def added_p50(p: Path_, direct: Path_) -> tuple[float, float]:
    """Median and IQR (ms) over rounds of this path's round median minus direct's in the same round."""
    diffs = [(a - b) / 1e6 for a, b in zip(p.round_p50_ns, direct.round_p50_ns, strict=False)]
    if len(diffs) < 2:
        return float("nan"), float("nan")
    q1, _, q3 = statistics.quantiles(diffs, n=4)
    return statistics.median(diffs), q3 - q1


def report(paths: list[Path_], info: dict[str, str], exported: tuple[int, int] | None = None) -> tuple[str, dict]:
    """A markdown table (and the same numbers as a dict) with the targets checked.

    `exported`: (spans the OTLP receiver got, requests the traced gateway served), for the tracing line."""
    direct = paths[0]
    passthrough = next((p for p in paths if p.name == "passthrough"), None)
    cols = ["path", "c=1 p50", "c=1 p99", "added p50 (IQR)", "added p99", f"c={info['concurrency']} RPS",
            f"c={info['concurrency']} p50 / p99", "RPS vs pass-through", "stream TTFT p50", "TTFT added",
            "errors", "RSS"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    data: dict = {"machine": info, "paths": {}}
    for p in paths:
        med, iqr = added_p50(p, direct)
        d = {"p50_ms": pct(p.latency_ns, 50), "p99_ms": pct(p.latency_ns, 99), "added_p50_ms": med,
             "added_p50_iqr_ms": iqr, "added_p99_ms": pct(p.latency_ns, 99) - pct(direct.latency_ns, 99),
             "rps": p.rps, "load_p50_ms": p.load_p50_ms, "load_p99_ms": p.load_p99_ms,
             "rps_vs_passthrough": rps_ratio(p, passthrough),
             "ttft_p50_ms": pct(p.ttft_ns, 50), "ttft_added_ms": pct(p.ttft_ns, 50) - pct(direct.ttft_ns, 50),
             "errors": p.errors + p.load_errors, "rss_mb": p.rss_mb}
        data["paths"][p.name] = d
        base = p is direct
        rows.append("| " + " | ".join([
            p.name + (f" ({p.note})" if p.note else ""), f"{d['p50_ms']:.3f} ms", f"{d['p99_ms']:.3f} ms",
            "—" if base else f"{med:+.3f} ms ({iqr:.3f})", "—" if base else f"{d['added_p99_ms']:+.3f} ms",
            f"{p.rps:,.0f}", f"{p.load_p50_ms:.1f} / {p.load_p99_ms:.1f} ms",
            "—" if base or p is passthrough else f"{d['rps_vs_passthrough']:.0%}",
            f"{d['ttft_p50_ms']:.3f} ms", "—" if base else f"{d['ttft_added_ms']:+.3f} ms",
            str(d["errors"]), f"{p.rss_mb:.0f} MB" if p.rss_mb else "—"]) + " |")
    gw = data["paths"].get("gateway")
    checks = []
    if gw:
        checks = [("added p50 <= 0.5 ms", gw["added_p50_ms"] <= TARGETS["added_p50_ms"]),
                  ("added p99 <= 1.5 ms", gw["added_p99_ms"] <= TARGETS["added_p99_ms"]),
                  (">= 3,000 RPS on one core", gw["rps"] >= TARGETS["rps"]),
                  (">= 75% of pass-through RPS", gw["rps_vs_passthrough"] >= TARGETS["rps_vs_passthrough"]),
                  ("streaming adds <= 1 ms to the first token", gw["ttft_added_ms"] <= TARGETS["ttft_added_ms"]),
                  ("no errors", gw["errors"] == 0)]
    data["targets"] = dict(checks)
    lines = [f"- {k}: {v}" for k, v in info.items()] + ["", *rows, ""]
    lines += [f"{'PASS' if ok else 'MISS'}  {name}{_context(name, ok, data['paths'])}" for name, ok in checks]
    own = data["paths"].get("passthrough-kt")
    if gw and own and own["rps"]:
        gw["rps_vs_passthrough_kt"] = gw["rps"] / own["rps"]
        p50 = gw["added_p50_ms"] - own["added_p50_ms"]
        ttft = gw["ttft_added_ms"] - own["ttft_added_ms"]
        lines.append(f"\ngateway vs the same pass-through on kt's HTTP layer (passthrough-kt): "
                     f"{gw['rps_vs_passthrough_kt']:.0%} of its RPS, {p50:+.3f} ms at c=1 p50, "
                     f"{ttft:+.3f} ms to the first token")
    plain = next((p for p in paths if p.name == "gateway"), None)
    traced = next((p for p in paths if p.name == "gateway-otlp"), None)
    if plain and traced:
        data["tracing"] = cost = tracing_cost(traced, plain, exported)
        lines.append(f"\ntracing on (gateway-otlp) vs off (gateway), same run: {cost['added_p50_ms']:+.3f} ms at c=1 "
                     f"p50 (IQR {cost['added_p50_iqr_ms']:.3f}), {cost['rps_vs_off']:.0%} of the RPS, "
                     f"{cost['ttft_added_ms']:+.3f} ms to the first token; the receiver got "
                     f"{cost['spans']:,} spans for {cost['requests']:,} requests")
    return "\n".join(lines), data


def tracing_cost(traced: Path_, plain: Path_, exported: tuple[int, int] | None) -> dict[str, float]:
    """What `--otlp-endpoint` costs: the traced gateway against the plain one, paired per round."""
    med, iqr = added_p50(traced, plain)
    spans, requests = exported or (0, 0)
    return {"added_p50_ms": med, "added_p50_iqr_ms": iqr, "rps_vs_off": rps_ratio(traced, plain),
            "ttft_added_ms": pct(traced.ttft_ns, 50) - pct(plain.ttft_ns, 50), "spans": spans, "requests": requests}


def _context(check: str, ok: bool, paths: dict[str, dict[str, float]]) -> str:
    """For a missed latency target: what the minimal pass-through added in the same run."""
    base = paths.get("passthrough")
    key = {"added p50": "added_p50_ms", "added p99": "added_p99_ms"}.get(check[:9])
    if ok or not base or key is None:
        return ""
    return f"  (the pass-through alone added {base[key]:+.3f} ms in this run)"


def machine(args: argparse.Namespace, client: str, load_tool: str) -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    import tornado

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or "?"
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "nproc": str(os.cpu_count()),
            "cpu": model, "python": platform.python_version(), "tornado": tornado.version,
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "layout": "{} (proxy on CPUs {}, upstream and load on CPUs {})".format(args.layout, *cpus(args.layout)),
            "scheduling": f"nice {os.getpriority(os.PRIO_PROCESS, 0)}" + (
                f", SCHED_FIFO {os.sched_getparam(0).sched_priority}" if os.sched_getscheduler(0) == os.SCHED_FIFO
                else ""),
            "upstream client (gateway and pass-through)": client + (" on uvloop" if args.uvloop else ""),
            "load generator": load_tool,
            "concurrency": str(args.concurrency),
            "runs": f"c=1: {args.rounds} rounds x {args.per_round} req/path (+{args.warmup} warmup); "
                    f"c={args.concurrency}: {args.load_rounds} rounds, {args.duration:g} s/path in all; "
                    f"stream: {args.stream_rounds} rounds x {args.per_round}"}


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="c=1 interleaved rounds (default 9)")
    parser.add_argument("--per-round", type=int, help="requests per path per round (default 50)")
    parser.add_argument("--warmup", type=int, help="discarded requests per path first (default 200)")
    parser.add_argument("--stream-rounds", type=int, help="streaming rounds (default 5)")
    parser.add_argument("--duration", type=float, help="seconds of c=32 load per path (default 15)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--load-rounds", type=int, default=5, help="the c=32 time is cut into interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (numbers not meaningful)")
    parser.add_argument("--no-gateway", action="store_true", help="measure only direct and pass-through")
    parser.add_argument("--no-tracing", action="store_true",
                        help="skip gateway-otlp (the gateway with --otlp-endpoint, for the cost of tracing)")
    parser.add_argument("--only", metavar="PATH,...",
                        help=f"measure only these paths besides direct (of {', '.join(PATHS)})")
    parser.add_argument("--uvloop", action="store_true",
                        help="run the pass-through on uvloop too (the gateway uses uvloop whenever it is installed)")
    parser.add_argument("--client", choices=["kt", "curl", "aiohttp", "simple"],
                        help="pass-through upstream client (default: the gateway's own, kt)")
    parser.add_argument("--upstream-port", type=int, default=0, help="fixed port for the fake upstream")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=URL",
                        help="also measure an already running proxy (e.g. LiteLLM; see compare-litellm.sh)")
    parser.add_argument("--layout", choices=["split", "shared", "none"], default="split",
                        help="CPU pinning: proxy alone on CPU 0 (split), everything on CPU 0 (shared), or none")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness for the bench and everything it starts (negative needs root): on a shared "
                             "machine, -10 keeps other work from distorting the numbers")
    parser.add_argument("--realtime", type=int, default=0, metavar="PRIO",
                        help="run everything SCHED_FIFO at this priority (root): on a busy shared machine this is "
                             "the only way to measure sub-millisecond costs; it starves other work while it runs")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway during its c=32 run")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "kt-bench",
                        help="where the processes' logs go")
    args = parser.parse_args()
    defaults = (3, 20, 20, 2, 3.0) if args.quick else (9, 50, 200, 5, 15.0)
    for name, value in zip(("rounds", "per_round", "warmup", "stream_rounds", "duration"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)

    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every process started below
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.realtime))  # likewise inherited
    wanted = set(PATHS if args.only is None else args.only.split(","))
    if wanted - set(PATHS):
        parser.error(f"--only: unknown path(s) {', '.join(sorted(wanted - set(PATHS)))}; of {', '.join(PATHS)}")
    if args.no_gateway:
        wanted -= {"gateway", "gateway-otlp"}
    if args.no_tracing:
        wanted.discard("gateway-otlp")
    if "gateway-otlp" in wanted and importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        print("gateway-otlp skipped: tracing needs the kt-gateway[otel] extra", file=sys.stderr)
        wanted.discard("gateway-otlp")
    server_cpu, other_cpu = cpus(args.layout)
    if other_cpu:
        first, _, last = other_cpu.partition("-")
        os.sched_setaffinity(0, set(range(int(first), int(last or first) + 1)))
    args.logs.mkdir(parents=True, exist_ok=True)
    client = args.client or gateway_client()
    wrk = ensure_wrk()
    py = sys.executable
    procs: list[subprocess.Popen] = []
    try:
        fake = start(pinned([py, "-m", "tests.fake_upstream", "--fast", "--port", str(args.upstream_port), "--chunks",
                             "8", "--text", "Hello! Your last order, #4411, shipped on Monday and arrives Thursday."],
                            other_cpu), log=args.logs / "fake-upstream.log")
        procs.append(fake)
        up_port = reported_port(args.logs / "fake-upstream.log", fake, 10)
        paths = [Path_("direct", f"http://127.0.0.1:{up_port}", fake)]
        wait_http(paths[0].url + "/v1/models", 10, fake)

        started: list[Path_] = []  # the proxies, started before any is waited for
        if "passthrough" in wanted:
            pt = start(pinned([py, "bench/passthrough.py", "--listen", "127.0.0.1:0", "--upstream",
                               paths[0].url, "--client", client, *(["--uvloop"] if args.uvloop else [])], server_cpu),
                       log=args.logs / "passthrough.log")
            procs.append(pt)
            started.append(Path_("passthrough", "", pt))
        if "passthrough-kt" in wanted:
            # The same pass-through on the gateway's own stack (gateway/http/http1.py on uvloop): what is left
            # between it and the gateway is the gateway's own work (policies, events, metrics, logs).
            ptk = start(pinned([py, "bench/passthrough.py", "--listen", "127.0.0.1:0", "--upstream",
                                paths[0].url, "--client", client, "--server", "kt", "--uvloop"], server_cpu),
                        log=args.logs / "passthrough-kt.log")
            procs.append(ptk)
            started.append(Path_("passthrough-kt", "", ptk, note="kt's HTTP layer"))

        receiver = ""
        if "gateway-otlp" in wanted:  # the traced gateway's collector, beside the upstream
            rec = start(pinned([py, "bench/otlp_receiver.py", "--port", "0"], other_cpu),
                        log=args.logs / "otlp-receiver.log")
            procs.append(rec)
            receiver = f"http://127.0.0.1:{reported_port(args.logs / 'otlp-receiver.log', rec, 10)}"
            wait_http(receiver + "/count", 10, rec)
        gateways = [("gateway", [], "5 policies"),
                    ("gateway-otlp", ["--otlp-endpoint", receiver], "5 policies, --otlp-endpoint")]
        cfg = args.logs / "policy-config.yaml"
        cfg.write_text((ROOT / "bench/policy-config.yaml").read_text().replace("__UPSTREAM__", paths[0].url))
        kt = [py, "-c", UVLOOP_KT] if args.uvloop else [py, "-m", "kt"]
        for name, flags, note in gateways:
            if name not in wanted:
                continue
            gw = start(pinned([*kt, "gateway", "run", "--policy-config", str(cfg), "--listen", "127.0.0.1:0",
                               "--state-dir", str(args.logs / name.replace("gateway", "state")), *flags], server_cpu),
                       env={"BENCH_UPSTREAM_KEY": UPSTREAM_KEY}, log=args.logs / f"{name}.log")
            procs.append(gw)
            started.append(Path_(name, "", gw, note=note))
        for p in started:  # each listens on port 0 and reports the port it got in its log
            assert p.proc is not None
            gateway = p.name.startswith("gateway")
            try:
                p.url = f"http://127.0.0.1:{reported_port(args.logs / f'{p.name}.log', p.proc, 30 if gateway else 10)}"
                wait_http(p.url + ("/readyz" if gateway else "/healthz"), 30 if gateway else 10, p.proc)
                paths.append(p)
            except RuntimeError as err:
                if not gateway:
                    raise
                print(f"{p.name} did not start ({err}); see {args.logs / (p.name + '.log')}", file=sys.stderr)

        for extra in args.extra:
            name, _, url = extra.partition("=")
            paths.append(Path_(name, url.rstrip("/")))
        print(f"c=1 latency: {args.rounds} interleaved rounds ...", flush=True)
        interleaved(paths, args.rounds, args.per_round, args.warmup, stream=False)
        print(f"c=1 streaming TTFT: {args.stream_rounds} interleaved rounds ...", flush=True)
        interleaved(paths, args.stream_rounds, args.per_round, args.warmup // 4, stream=True)
        lua = wrk_lua() if wrk else None
        seconds = args.duration / args.load_rounds
        print(f"c={args.concurrency} throughput: {args.load_rounds} rounds of {seconds:g} s ...", flush=True)
        runs: dict[str, list[Load]] = {p.name: [] for p in paths}
        for r in range(args.load_rounds):
            for p in paths[r % len(paths):] + paths[: r % len(paths)]:
                if wrk and lua:
                    runs[p.name].append(load_wrk(wrk, p, args.concurrency, seconds, other_cpu, lua))
                else:
                    runs[p.name].append(asyncio.run(load_asyncio(p, args.concurrency, seconds)))
        for p in paths:  # the median of the rounds, errors summed
            p.round_rps = [x[0] for x in runs[p.name]]
            p.rps, p.load_p50_ms, p.load_p99_ms = (statistics.median(x[i] for x in runs[p.name]) for i in range(3))
            p.load_errors = sum(x[3] for x in runs[p.name])
            p.rss_mb = rss_mb(p.proc) if p.name != "direct" else 0.0
        gateway = next((p for p in paths if p.name == "gateway"), None)
        if args.profile and gateway and gateway.proc:  # after the measurements: sampling slows the target
            print("profiling the gateway under c=32 load for 10 s ...", flush=True)
            spy = profile(gateway.proc.pid, 10, args.logs / "gateway.pyspy")
            if wrk and lua:
                load_wrk(wrk, gateway, args.concurrency, 11, other_cpu, lua)
            else:
                asyncio.run(load_asyncio(gateway, args.concurrency, 11))
            if spy:
                spy.wait(30)
        traced = next((p for p in paths if p.name == "gateway-otlp"), None)
        exported = exported_spans(receiver, traced.url) if traced else None
        text, data = report(paths, machine(args, client, "wrk (1 thread)" if wrk else "asyncio client"), exported)
        print("\n" + text)
        if args.profile and (args.logs / "gateway.pyspy").exists():
            print("\n" + hot_spots(args.logs / "gateway.pyspy"))
        if args.json:
            args.json.write_text(json.dumps(data, indent=2))
        return 0
    finally:
        for proc in reversed(procs):  # proxies first, then the upstream they talk to
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
