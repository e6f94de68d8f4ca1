"""The gateway's own CPU per request, in-process: no sockets, so what remains is kt's work.

The bench request goes through the real server-side path (`Router` -> lean handler ->
input chain -> adapter -> output chain -> decision event -> observers, queue, event store,
log writer) with a stand-in connection and upstream, on one core like `make bench` pins the
gateway. It prints the CPU microseconds per request of each thread of the process, for the
whole path and with parts switched off, so the difference is what that part costs:

    .venv/bin/python bench/own_work.py            # about a minute
"""

from __future__ import annotations

import asyncio
import glob
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from tornado import httputil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.control import logs  # noqa: E402
from gateway.control.ops import Ops  # noqa: E402
from gateway.control.runtime import Runtime  # noqa: E402
from gateway.http.handler import Router  # noqa: E402
from gateway.proxy.app import ROUTES, GatewaySettings, make_app  # noqa: E402
from gateway.server import tune_gc  # noqa: E402
from policies.chain import Chain  # noqa: E402

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [
    {"role": "system", "content": "You are a helpful support assistant."},
    {"role": "user", "content": "Hello, my email is jane.doe@example.com. Please summarise my last order."}]})
ANSWER = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Hello! Your last order, #4411, shipped on Monday and arrives Thursday."}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}})
VARIANTS = {
    "whole path": (),
    "without metrics and request log": ("observers",),
    "without events stored": ("observers", "queue"),
    "without events built": ("observers", "queue", "event"),
    "without policies": ("observers", "queue", "event", "chain"),
}


class Upstream:
    """Answers every call at once with the same completion."""

    async def post_json(self, target: Any, url: str, headers: dict[str, str], body: bytes) -> bytes:
        return ANSWER

    async def close(self) -> None:
        return None


class Connection:
    """Takes the response and resolves `done` when it is finished."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done

    def _ok(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def write_headers(self, start_line: Any, headers: Any, chunk: bytes | None = None) -> asyncio.Future[None]:
        list(headers.get_all())
        return self._ok()

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        return self._ok()

    def finish(self) -> None:
        self.done.set_result(None)

    def set_close_callback(self, callback: Any) -> None:
        return None


def thread_cpu() -> dict[str, int]:
    """CPU ticks of each thread of this process (Linux)."""
    ticks = {}
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/stat"):
        text = Path(path).read_text()
        fields = text[text.rindex(")") + 2:].split()
        ticks[path.split("/")[4]] = int(fields[11]) + int(fields[12])
    return ticks


async def measure(off: tuple[str, ...], requests: int) -> list[float]:
    """CPU us per request of each busy thread, main thread first."""
    work = Path(tempfile.mkdtemp(prefix="kt-own-"))
    config = work / "policy-config.yaml"
    config.write_text((ROOT / "bench/policy-config.yaml").read_text().replace("__UPSTREAM__", "http://127.0.0.1:9"))
    logs.setup_logging("json", stream=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    runtime = Runtime()
    ops = Ops(runtime, str(config), state_dir=work / "state", version="bench", watch=False)
    ops.load_initial(required=True)
    app = make_app(runtime, GatewaySettings(), upstream=Upstream())  # type: ignore[arg-type]
    await ops.start()
    if "observers" in off:
        runtime.observers.clear()
    if "queue" in off:
        runtime.events.put = lambda event: True  # type: ignore[method-assign]
    if "event" in off:
        runtime.record = lambda record: None  # type: ignore[method-assign]
    if "chain" in off:
        assert runtime.snapshot is not None
        object.__setattr__(runtime.snapshot.config, "chain", Chain(()))
    dispatcher = Router(app, ROUTES)
    start = httputil.RequestStartLine("POST", "/v1/chat/completions", "HTTP/1.1")
    loop = asyncio.get_running_loop()

    async def one() -> None:
        done = loop.create_future()
        delegate = dispatcher.start_request(None, Connection(done))
        delegate.headers_received(start, httputil.HTTPHeaders({
            "Host": "bench", "Content-Type": "application/json", "Authorization": "Bearer sk-client",
            "Content-Length": str(len(BODY))}))
        delegate.data_received(BODY)
        delegate.finish()
        await done

    for _ in range(500):
        await one()
    tune_gc()
    before = thread_cpu()
    for _ in range(requests):
        await one()
    await asyncio.sleep(0.3)  # the store and log threads finish their batches
    after = thread_cpu()
    await ops.stop()
    logs.shutdown_logging()
    tick = os.sysconf("SC_CLK_TCK")
    main = str(os.getpid())
    spent = {tid: (after[tid] - before.get(tid, 0)) / tick / requests * 1e6 for tid in after}
    return [spent.get(main, 0.0), *sorted((v for k, v in spent.items() if k != main and v > 0), reverse=True)]


def main() -> None:
    import subprocess

    import uvloop

    if len(sys.argv) > 2:  # one variant in this (fresh) process
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {0})
        print(orjson.dumps(uvloop.run(measure(VARIANTS[sys.argv[2]], int(sys.argv[1])))).decode())
        return
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    print(f"CPU per request (us), {requests} requests, pinned to CPU 0; the best of 3 fresh processes each")
    for name in VARIANTS:
        runs = [orjson.loads(subprocess.run([sys.executable, __file__, str(requests), name], check=True,
                                            capture_output=True, text=True).stdout.splitlines()[-1])
                for _ in range(3)]
        cpu = min(runs, key=sum)
        helpers = " + ".join(f"{c:.0f}" for c in cpu[1:]) or "0"
        print(f"  {name:34s} {sum(cpu):6.0f}   (main thread {cpu[0]:.0f}, helper threads {helpers})", flush=True)


if __name__ == "__main__":
    main()
