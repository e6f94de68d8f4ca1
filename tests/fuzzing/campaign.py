"""Run fuzz cases against a real `kt gateway run` process, judge them, shrink and report findings.

A case is fully determined by (seed, index): `make_case` draws its family, request and
mutations from `random.Random(f"{seed}:{index}")`, so any case replays alone and a finding
shrinks by dropping ops (`keep`). The oracle, per case: each request sent gets exactly one
well-framed response (`wire.Reader`) or a clean close, before a deadline; no 5xx of the
gateway's own making (502/503/504 are upstream trouble, 501/505 refusals); no response the
client did not ask for (a smuggled request); a stream is proper SSE; the upstream credential
never reaches the client. Across the campaign: no traceback and no ERROR line in the
gateway's log, the process alive, its RSS under a bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.fuzzing import bodies, requests, wire
from tests.fuzzing.upstream import Answer, Upstream, answer_op, valid_answer

FAMILIES = {"head": 2, "framing": 2, "body": 3, "upstream": 3}
ALLOWED_5XX = frozenset({501, 502, 503, 504, 505})
UPSTREAM_KEY = "sk-fuzz-" + "9f3c2a7e" * 5  # the credential the gateway sends upstream; must never come back
DEADLINE_S = 20.0  # a case's answer, upstream stalls and Retry-After waits included

# The ONE list of known issues: findings that belong to a fix another engineer owns (issue 12).
# Key: (op, problem kind, text): an op of the finding's case (`family.*` matches every op of a
# family), the kind of its problem, and a text its problems contain ("" for any). Every case is
# still generated and judged by the whole oracle; a matching finding is reported as known, apart
# from new ones, and does not fail the bounded test. Remove an entry when its fix lands.
KNOWN_ISSUES: dict[tuple[str, str, str], str] = {}


def known_issue(finding_ops: set[str], kind: str, text: str) -> list[str]:
    """The owners/reasons KNOWN_ISSUES gives for a finding with these ops, problem kind and problem text."""
    families = {op.split(".", 1)[0] + ".*" for op in finding_ops}
    return sorted({owner for (op, k, needle), owner in KNOWN_ISSUES.items()
                   if k == kind and (op in finding_ops or op in families) and needle in text})


@dataclass
class Case:
    """One case: a request draft, and the upstream's answer when the family is `upstream`."""

    seed: int
    index: int
    family: str
    draft: requests.Draft
    answer: Answer | None
    ops: list[str]  # labels of the ops kept, in order
    marker: str
    skipped: list[str] = field(default_factory=list)

    @property
    def route(self) -> str:
        return self.draft.route


def make_case(seed: int, index: int, keep: set[int] | None = None, skip: frozenset[str] = frozenset(),
              families: dict[str, int] | None = None) -> Case:
    """Case `index` of campaign `seed`; `keep`: indices of the ops to apply (None: all); `skip`: op labels left out."""
    rng = random.Random(f"{seed}:{index}")
    fams = families or FAMILIES
    family = rng.choices(list(fams), weights=list(fams.values()))[0]
    marker = f"fz:{seed:x}:{index}"
    request_id = f"fz-{index}"
    draft = requests.base_draft(rng, marker, request_id, upstream_only=family == "upstream",
                                route=rng.choice(requests.UPSTREAM_ROUTES) if family == "upstream" else None)
    answer: Answer | None = None
    targets: list[tuple[bodies.Op, Callable[[bodies.Op], None]]] = []
    count = rng.randrange(1, 4)
    if family == "head":
        targets = [(op, lambda op: op.apply(draft)) for op in (requests.head_op(rng) for _ in range(count))]
    elif family == "framing":
        ops = [requests.framing_op(rng, marker, request_id) for _ in range(rng.randrange(1, 3))]
        targets = [(op, lambda op: op.apply(draft)) for op in ops]
    elif family == "body":
        for _ in range(count):
            op = bodies.doc_op(rng) if draft.doc is not None and rng.random() < 0.8 else bodies.bytes_op(rng)
            bucket = draft.byte_ops if op.label.startswith("bytes.") else draft.doc_ops
            targets.append((op, bucket.append))
        if draft.doc is None:  # GET /v1/models: a body it does not expect
            draft.doc = {"model": "x"}
    else:
        model = str(draft.doc.get("model", "")) if isinstance(draft.doc, dict) else ""
        kind = "embeddings" if draft.route == "/v1/embeddings" else \
            "anthropic" if model.startswith("ant-") else "openai"
        answer = valid_answer(kind, draft.stream, model, rng)
        targets = [(op, lambda op: op.apply(answer)) for op in (answer_op(rng) for _ in range(count))]
    case = Case(seed, index, family, draft, answer, [], marker)
    for i, (op, apply) in enumerate(targets):
        if op.label in skip:
            case.skipped.append(op.label)
        elif keep is None or i in keep:
            with contextlib.suppress(TypeError, KeyError, IndexError, AttributeError, ValueError, RecursionError):
                apply(op)  # an op that no longer fits what earlier ops made of the document does nothing
            case.ops.append(op.label)
    return case


# --- running and judging one case ----------------------------------------------------------------


@dataclass
class Outcome:
    """What one case got back."""

    statuses: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    end: str = "answered"  # answered | closed | reset
    seconds: float = 0.0


async def run_case(case: Case, port: int, upstream: Upstream, deadline_s: float = DEADLINE_S) -> Outcome:
    """Send the case's bytes to the gateway and judge what comes back."""
    out = Outcome()
    started = time.monotonic()
    if case.answer is not None:
        upstream.answers[case.marker.split(":", 1)[1]] = case.answer
    draft = case.draft
    rng = random.Random(case.index)
    try:
        reader_stream, writer = await asyncio.open_connection("127.0.0.1", port, limit=256 * 1024)
    except OSError as exc:
        out.problems.append(f"connect: could not connect ({exc})")
        return out
    reader = wire.Reader(reader_stream)
    deadline = started + deadline_s
    pending: list[wire.Response] = []
    try:
        await _send(draft, rng, writer, reader, pending, deadline)
        await _judge(case, reader, writer, pending, out, deadline)
    except TimeoutError:
        out.problems.append(f"hang: no response and no close within {deadline_s:g} s")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        if case.answer is not None:
            upstream.answers.pop(case.marker.split(":", 1)[1], None)
    out.seconds = time.monotonic() - started
    return out


async def _send(draft: requests.Draft, rng: random.Random, writer: asyncio.StreamWriter, reader: wire.Reader,
                pending: list[wire.Response], deadline: float) -> None:
    """Write the case's segments (pausing as a slow sender would; waiting for 100 Continue when asked)."""
    segments = draft.segments(rng)
    try:
        for i, segment in enumerate(segments):
            if segment is requests.WAIT_100 or (segment == b"" and draft.expect_wait):
                try:
                    resp = await asyncio.wait_for(reader.read(draft.method_of(0)), 1.0)
                except (TimeoutError, wire.Closed, wire.Malformed):
                    resp = None  # no 100 within a second: send the body anyway (RFC 9110 10.1.1)
                if resp is not None and resp.status != 100:
                    pending.append(resp)
                    return
                continue
            writer.write(segment)
            await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
            if draft.pause and i < len(segments) - 1:
                await asyncio.sleep(draft.pause)
        if draft.half_close and writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        return  # the gateway closed on us mid-send: what it answered before is judged next


async def _judge(case: Case, reader: wire.Reader, writer: asyncio.StreamWriter, pending: list[wire.Response],
                 out: Outcome, deadline: float) -> None:
    draft = case.draft
    leftover_ok = case.family == "head" or requests.leftover(draft) or any(
        requests.leftover(p) for p in draft.pipeline)
    expected = draft.responses
    index = 0
    while True:
        try:
            if pending:
                resp = pending.pop(0)
            else:
                method = draft.method_of(index) if index < expected else "GET"
                resp = await asyncio.wait_for(reader.read(method, draft.http10_at(index)),
                                              max(0.05, deadline - time.monotonic()))
        except wire.Closed as closed:
            out.end = "reset" if closed.reset else "closed"
            return
        except wire.Malformed as exc:
            if draft.half_close and str(exc).startswith(("connection closed mid", "body cut short")):
                out.end = "cut_after_half_close"  # our half-close read as the client going away, as nginx does
            else:
                out.problems.append(f"malformed: {exc}")
            return
        if 100 <= resp.status < 200:
            continue
        out.statuses.append(resp.status)
        _check_response(resp, out, _ends_first(case))
        if index >= expected and not leftover_ok:
            out.problems.append(f"extra_response: {resp.status} to a request the client did not send "
                                f"({resp.body[:120]!r})")
            return
        index += 1
        if not resp.keep_alive:
            await _expect_eof(reader, out)
            return
        if index == expected:  # all answered: half-close, and see that nothing more comes
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()
            deadline = min(deadline, time.monotonic() + 5.0)


def _ends_first(case: Case) -> bool:
    """Whether the case's upstream answer is a stream whose first event is `[DONE]` (an empty answer, relayed)."""
    answer = case.answer
    return bool(answer and answer.stream and answer.events and answer.events[0].startswith(b"data: [DONE]"))


def _check_response(resp: wire.Response, out: Outcome, may_be_empty: bool = False) -> None:
    if resp.status >= 500 and resp.status not in ALLOWED_5XX:
        out.problems.append(f"status_{resp.status}: {resp.body[:200]!r}")
    blob = resp.body + repr(resp.headers).encode()
    if UPSTREAM_KEY.encode() in blob or UPSTREAM_KEY[8:].encode() in blob:
        out.problems.append(f"secret_leak: the upstream credential reached the client in a {resp.status} response")
    if resp.status == 200 and (resp.header("Content-Type") or "").startswith("text/event-stream"):
        try:
            problem = wire.sse_problem(resp.body, may_be_empty)
        except UnicodeDecodeError:
            problem = "a stream that is not UTF-8"
        if problem:
            out.problems.append(f"sse: {problem}")


async def _expect_eof(reader: wire.Reader, out: Outcome) -> None:
    try:
        data = await asyncio.wait_for(reader.stream.read(1024), 5.0)
    except TimeoutError:
        out.problems.append("hang: Connection: close answered but the connection stayed open")
        return
    except (ConnectionError, OSError):
        return
    if data:
        out.problems.append(f"malformed: bytes after a Connection: close response: {data[:80]!r}")


# --- the gateway process, its log and RSS ------------------------------------------------------


def write_config(path: Path, upstream_port: int) -> Path:
    """The campaign's config: openai/anthropic/embedding targets on the fuzz upstream, the mock, real policies."""
    base = f"http://127.0.0.1:{upstream_port}"
    ref = {"env": "FUZZ_UPSTREAM_KEY"}
    targets = [{"id": m, "provider": "openai", "model": "gpt-4o-mini", "base_url": base, "secret_key_ref": ref}
               for m in bodies.OPENAI_MODELS]
    targets += [{"id": m, "provider": "anthropic", "model": "claude-3-5-haiku-latest", "base_url": base,
                 "secret_key_ref": ref} for m in bodies.ANTHROPIC_MODELS]
    targets += [{"id": m, "provider": "openai", "model": "text-embedding-3-small", "base_url": base,
                 "secret_key_ref": ref} for m in bodies.EMBEDDING_MODELS]
    targets.append({"id": "mock", "provider": "mock", "model": bodies.MOCK_MODEL})
    example = Path(__file__).resolve().parents[2] / "policies/examples/default/policy-config.yaml"
    doc = yaml.safe_load(example.read_text())
    doc["pack"] = {"name": "fuzz", "version": "1.0.0", "enabled": True}
    # Mutated content parts of odd types must reach translation and the upstreams, not stop at a 409.
    doc["policy"]["dlp-filter"]["on_unscannable_input"] = "allow"
    doc["providers"] = {"targets": targets,
                        "fallback": {"strategy": "ordered", "max_retries": 1, "retry_on": ["5xx", "timeout",
                                                                                          "rate_limit"]}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def gateway_args() -> list[str]:
    # An 8 MiB answer cap (default 64 MiB): gzip bombs cross it, and 12 connections at once fit the RSS bound.
    return ["--upstream-read-timeout", "1", "--upstream-connect-timeout", "1", "--max-body-size", "256KiB",
            "--max-response-size", "8MiB",
            "--client-timeout", str(requests.CLIENT_TIMEOUT_S), "--no-watch", "--drain-timeout", "5"]


def open_fds(pid: int | str = "self") -> int:
    """File descriptors a process holds (sockets included)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


_REQUEST_ID = re.compile(r"\bfz-(\d+)")


class LogWatch:
    """Reads the gateway's log as it grows: tracebacks, ERROR lines and leaked credentials are problems."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def scan(self) -> list[tuple[int | None, str]]:
        """New problems since the last scan: (case index when the line names one, what)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        found: list[tuple[int | None, str]] = []
        for raw in data[:end].decode("utf-8", "replace").splitlines():
            self.lines += 1
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"level": "error" if "Traceback" in raw else "info", "msg": raw}
            if not isinstance(line, dict):
                continue
            what = None
            if line.get("exc") or "Traceback" in raw:
                what = "traceback: " + (str(line.get("exc")) or raw)[-500:].replace("\n", " | ")
            elif str(line.get("level", "")).lower() in ("error", "critical"):
                what = f"log_error: {str(line.get('msg'))[:300]}"
            elif UPSTREAM_KEY[8:] in raw:
                what = "secret_leak: the upstream credential is in the gateway log"
            if what:
                match = _REQUEST_ID.search(raw)
                found.append((int(match[1]) if match else None, what))
        return found


# --- the campaign ------------------------------------------------------------------------------


@dataclass
class Finding:
    case: Case
    problems: list[str]
    minimal: Case | None = None
    known: str | None = None

    @property
    def kind(self) -> str:
        return self.problems[0].split(":", 1)[0]


@dataclass
class Report:
    """What the campaign tried and found."""

    seed: int
    requests: int = 0
    families: collections.Counter = field(default_factory=collections.Counter)
    routes: collections.Counter = field(default_factory=collections.Counter)
    ops: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    ends: collections.Counter = field(default_factory=collections.Counter)
    skipped: collections.Counter = field(default_factory=collections.Counter)
    findings: list[Finding] = field(default_factory=list)
    rss_start: float = 0.0
    rss_peak: float = 0.0
    rss_end: float = 0.0
    seconds: float = 0.0
    upstream_requests: int = 0
    heals: int = 0
    duplicates: int = 0  # findings like one already reported (same problem kind, same shrunk ops)
    alive: bool = True

    def new_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.known is None]

    def text(self) -> str:
        def top(counter: collections.Counter, n: int = 60) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n])

        lines = [
            f"fuzz campaign: seed {self.seed}, {self.requests} cases in {self.seconds:.1f} s "
            f"({self.requests / max(self.seconds, 1e-9):.0f}/s); the upstream saw {self.upstream_requests} requests "
            f"({self.heals} of them valid ones after a junk answer, to keep circuit breakers closed)",
            f"  families: {top(self.families)}",
            f"  routes:   {top(self.routes)}",
            f"  statuses: {top(self.statuses)}",
            f"  ends:     {top(self.ends)}",
            f"  ops:      {top(self.ops, 200)}",
            f"  RSS MB: start {self.rss_start:.0f}, peak {self.rss_peak:.0f}, end {self.rss_end:.0f}; "
            f"process {'alive' if self.alive else 'DEAD'}",
        ]
        new, known = self.new_findings(), [f for f in self.findings if f.known]
        lines.append(f"findings: {len(new)} new, {len(known)} known ({self.duplicates} more cases showed one of these)")
        for finding in new + known:
            lines.append(describe(finding))
        return "\n".join(lines)


def describe(finding: Finding) -> str:
    case = finding.minimal or finding.case
    keep = ",".join(str(i) for i in range(len(case.ops))) if finding.minimal is None else "..."
    head, body = case.draft.render()
    lines = [f"- {'KNOWN (' + finding.known + ') ' if finding.known else ''}{finding.problems[0][:400]}",
             f"  case {case.index} ({case.family}, {case.route}); ops {case.ops or '(none: the base request)'}",
             f"  replay: python bench/fuzz.py --seed {case.seed} --case {case.index}"
             + (f" --keep {finding.minimal_keep}" if getattr(finding, "minimal_keep", None) is not None else ""),
             f"  request: {(head + body)[:600]!r}"]
    if case.answer is not None:
        actions = case.answer.actions(b"Bearer <key>")
        lines.append(f"  upstream answer: {[(a, (v[:300] if isinstance(v, bytes) else v)) for a, v in actions][:6]!r}")
    del keep
    for extra in finding.problems[1:3]:
        lines.append(f"  also: {extra[:300]}")
    return "\n".join(lines)


class Campaign:
    """A gateway process, the fuzz upstream, and the cases run against them."""

    def __init__(self, seed: int, workdir: Path | None = None, concurrency: int = 6,
                 max_rss_mb: float = 600.0, log: Callable[[str], None] = print,
                 families: dict[str, int] | None = None, shrink_budget_s: float = 120.0) -> None:
        self.seed = seed
        self.workdir = workdir
        self.concurrency = concurrency
        self.skip: frozenset[str] = frozenset()
        self.max_rss_mb = max_rss_mb
        self.log = log
        self.families = families
        self.shrink_budget_s = shrink_budget_s
        self.report = Report(seed)
        self.unattributed: list[tuple[str, list[int]]] = []
        self.signatures: set[tuple[str, tuple[str, ...]]] = set()

    def case(self, index: int, keep: set[int] | None = None) -> Case:
        return make_case(self.seed, index, keep, self.skip, self.families)

    async def run(self, count: int, start: int = 0, only: list[int] | None = None,
                  keep: set[int] | None = None) -> Report:
        from tests.gateway_process import GatewayProcess

        logging.getLogger("asyncio").setLevel(logging.ERROR)  # "socket.send() raised exception": the gateway hung up

        tmp = None
        if self.workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="kt-fuzz-")
            self.workdir = Path(tmp.name)
        upstream = await Upstream().start()
        config = write_config(self.workdir / "policy-config.yaml", upstream.port)
        env = {"FUZZ_UPSTREAM_KEY": UPSTREAM_KEY, "KEEPTRUSTS_ADMIN_TOKEN": ""}
        gw = await asyncio.to_thread(GatewayProcess, config, self.workdir / "state", *gateway_args(), env=env)
        self.gateway, self.upstream, self.logwatch = gw, upstream, LogWatch(gw.log_path)
        report = self.report
        report.rss_start = rss_mb(gw.proc.pid)
        t0 = time.monotonic()
        try:
            indices = only if only is not None else list(range(start, start + count))
            outcomes = await self._run_all(indices, keep)
            report.seconds = time.monotonic() - t0
            await self._shrink(outcomes, self.shrink_budget_s)
        finally:
            report.rss_end = rss_mb(gw.proc.pid)
            report.alive = gw.proc.poll() is None
            report.upstream_requests = upstream.requests
            await asyncio.to_thread(gw.stop)
            await upstream.stop()
            if tmp is not None:
                tmp.cleanup()
        if not report.alive:
            report.findings.append(Finding(self.case(indices[-1]), ["crash: the gateway process died"]))
        return report

    async def _run_all(self, indices: list[int], keep: set[int] | None) -> dict[int, tuple[Case, Outcome]]:
        report, gw = self.report, self.gateway
        queue = collections.deque(indices)
        results: dict[int, tuple[Case, Outcome]] = {}
        recent: collections.deque[int] = collections.deque(maxlen=4 * self.concurrency)
        progress_every = max(1000, len(indices) // 20)
        logged = [0]

        async def worker() -> None:
            while queue and report.alive:
                index = queue.popleft()
                case = self.case(index, keep)
                try:
                    outcome = await run_case(case, gw.port, self.upstream)
                except Exception as exc:  # a bug of the harness: reported, and the campaign goes on
                    outcome = Outcome(problems=[f"harness_error: {type(exc).__name__}: {exc}"])
                results[index] = (case, outcome)
                recent.append(index)
                report.requests += 1
                if case.family == "upstream" and isinstance(case.draft.doc, dict):
                    await self._heal(case)
                report.families[case.family] += 1
                report.routes[case.route] += 1
                report.ops.update(case.ops)
                report.skipped.update(case.skipped)
                report.statuses.update(outcome.statuses)
                report.ends[outcome.end] += 1
                if report.requests % 50 == 0:
                    self._checks(results, recent)
                if report.requests >= logged[0] + progress_every:
                    logged[0] = report.requests
                    examples = {o.problems[0].split(":", 1)[0]: o.problems[0][:160]
                                for _, o in results_with_problems(results)}
                    kinds = collections.Counter(o.problems[0].split(":", 1)[0]
                                                for _, o in results_with_problems(results))
                    self.log(f"  ... {report.requests}/{len(indices)} cases, statuses {dict(report.statuses)}, "
                             f"RSS {rss_mb(gw.proc.pid):.0f} MB, fds gateway {open_fds(gw.proc.pid)} "
                             f"fuzzer {open_fds()}, "
                             f"problems {dict(kinds)} {list(examples.values())}")

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        await asyncio.sleep(0.2)
        self._checks(results, recent)
        return results

    async def _heal(self, case: Case) -> None:
        """One valid request to the target a junk answer came from: a success closes its breaker's count."""
        model = case.draft.doc.get("model")
        route = "/v1/embeddings" if case.route == "/v1/embeddings" else "/v1/chat/completions"
        body = {"model": model, "input": "heal"} if route == "/v1/embeddings" else \
            {"model": model, "messages": [{"role": "user", "content": "heal"}]}
        data = bodies.dumps(body)
        with contextlib.suppress(Exception):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.gateway.port)
            writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (route.encode(), len(data), data))
            try:
                await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()
        self.report.heals += 1

    def _checks(self, results: dict[int, tuple[Case, Outcome]], recent: collections.deque[int]) -> None:
        """The process-wide oracle: log lines, liveness, RSS."""
        report, gw = self.report, self.gateway
        for index, what in self.logwatch.scan():
            if index is not None and index in results:
                results[index][1].problems.append(what)
            else:  # a line naming no case: one of the recent ones; `_shrink` replays them to find which
                self.unattributed.append((what, list(recent)))
        rss = rss_mb(gw.proc.pid)
        report.rss_peak = max(report.rss_peak, rss)
        if rss > self.max_rss_mb and recent:  # charged to a recent case that sent a gzip bomb, if one did
            bombs = [i for i in recent if "upstream.bomb" in results[i][0].ops]
            suspect = (bombs or list(recent))[-1]
            results[suspect][1].problems.append(f"rss: {rss:.0f} MB, over the bound of {self.max_rss_mb:.0f} MB")
        if gw.proc.poll() is not None:
            report.alive = False

    async def _shrink(self, results: dict[int, tuple[Case, Outcome]], budget_s: float = 120.0) -> None:
        """One finding per (family, problem kind, ops), each shrunk to the fewest ops that still show it."""
        seen: set[tuple[str, tuple[str, ...]]] = set()
        until = time.monotonic() + budget_s
        for case, outcome in results_with_problems(results):
            finding = Finding(case, outcome.problems)
            key = (finding.kind, tuple(sorted(set(case.ops))))
            if key in seen:
                self.report.duplicates += 1
                continue
            seen.add(key)
            if self.report.alive and time.monotonic() < until and len(self.report.findings) < 40:
                await self._minimise(finding)
            self._add(finding)
        distinct = {what[-160:]: (what, suspects) for what, suspects in reversed(self.unattributed)}
        for what, suspects in distinct.values():
            kind = what.split(":", 1)[0]
            found = None
            for index in reversed(suspects):
                if time.monotonic() > until:
                    break
                if any(p.startswith(kind) for p in await self._replay(self.case(index), tries=1)):
                    found = Finding(self.case(index), [what])
                    await self._minimise(found)
                    break
            self._add(found or Finding(self.case(suspects[-1]), [what, f"(not attributed: one of cases {suspects})"]))

    def _add(self, finding: Finding) -> None:
        """Record a finding (once per problem kind and shrunk ops); known when KNOWN_ISSUES lists it."""
        ops = (finding.minimal or finding.case).ops
        signature = (finding.kind, tuple(sorted(set(ops))))
        owners = known_issue(set(ops) | set(finding.case.ops), finding.kind, "\n".join(finding.problems))
        finding.known = "; ".join(owners) or None
        if signature in self.signatures:
            self.report.duplicates += 1
            return
        self.signatures.add(signature)
        self.report.findings.append(finding)

    async def _replay(self, case: Case, tries: int = 3) -> list[str]:
        """The problems of one run of `case` alone (the first of `tries` runs that has any)."""
        problems: list[str] = []
        for _ in range(tries):
            outcome = await run_case(case, self.gateway.port, self.upstream)
            await asyncio.sleep(0.05)
            problems = outcome.problems + [what for _, what in self.logwatch.scan()]
            if problems:
                break
        return problems

    async def _minimise(self, finding: Finding) -> None:
        kind = finding.kind
        case = finding.case
        if kind in ("rss", "crash"):
            return
        keep = set(range(len(case.ops) + len(case.skipped)))
        if not any(p.startswith(kind) for p in await self._replay(case)):
            finding.problems.append("(did not reproduce alone)")
            return
        for i in sorted(keep):
            trial = keep - {i}
            candidate = self.case(case.index, trial)
            if any(p.startswith(kind) for p in await self._replay(candidate)):
                keep = trial
        finding.minimal = self.case(case.index, keep)
        finding.minimal_keep = ",".join(map(str, sorted(keep))) or "none"  # type: ignore[attr-defined]


def results_with_problems(results: dict[int, tuple[Case, Outcome]]) -> list[tuple[Case, Outcome]]:
    return [results[i] for i in sorted(results) if results[i][1].problems]


def run(seed: int, count: int, **kwargs: Any) -> Report:
    """A campaign of `count` cases (case indices 0..count-1), from a fresh gateway process."""
    only = kwargs.pop("only", None)
    keep = kwargs.pop("keep", None)
    start = kwargs.pop("start", 0)
    campaign = Campaign(seed, **kwargs)
    return asyncio.run(campaign.run(count, start=start, only=only, keep=keep))


def seed_from_env(default: int) -> int:
    return int(os.environ.get("FUZZ_SEED", default))
