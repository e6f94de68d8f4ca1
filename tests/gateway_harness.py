"""An in-process gateway for tests: its own thread and event loop, a free port, real HTTP.

    gw = GatewayThread(config_path, fail_mode="allow").start()
    OpenAI(base_url=gw.base_url, api_key="x")
    gw.events           # decision events recorded so far
    gw.stop()
    GatewayThread(None, sync=EmbeddedSync(...)).start()   # with the embedded Git agent (`--git-repo`)

Also test-only policy kinds (`test-term`, `test-boom`, `test-tool`) that a fixture registers
for the duration of a test, so gateway tests do not depend on the real kinds' tuning.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import openai
import yaml

from gateway.control.runtime import Runtime
from gateway.proxy.app import GatewaySettings
from gateway.proxy.services import ProxyServices, services_of
from gateway.server import RunningGateway, start
from policies.kinds.base import Decision, Hit, Policy
from policies.model import Exchange, Phase, Verdict
from policies.state import PolicyState

if TYPE_CHECKING:
    from gateway.control.gitsync import EmbeddedSync


class GatewayThread:
    """`gateway.server.start` on a background loop; `stop()` drains like SIGTERM does."""

    def __init__(self, config_path: str | Path | None, sync: EmbeddedSync | None = None, **settings: Any) -> None:
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("port", 0)
        self.settings = GatewaySettings(**settings)
        self.config_path = config_path
        self.sync = sync  # the embedded Git agent (`--git-repo`): the config is its `<state>/current/<path>`
        self.events: list[dict[str, Any]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gateway: RunningGateway | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> GatewayThread:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            runtime = Runtime()
            runtime.observers.append(self.events.append)
            try:
                self.gateway = loop.run_until_complete(start(self.settings, self.config_path, runtime, self.sync))
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="gateway-under-test", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    @property
    def runtime(self) -> Runtime:
        assert self.gateway is not None
        return self.gateway.runtime

    @property
    def port(self) -> int:
        """The port the gateway listens on."""
        assert self.gateway is not None
        return self.gateway.port

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return f"http://127.0.0.1:{self.gateway.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def services(self) -> ProxyServices:
        """The proxy's shared objects (upstream client, breakers, ...) of the running gateway."""
        assert self.gateway is not None
        return services_of(self.gateway.app.settings)

    def call(self, fn: Any) -> Any:
        """Run `fn()` on the gateway's loop and return its result (for poking at state safely)."""
        assert self.loop is not None

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(5)

    def open_connections(self) -> int:
        """Client connections the gateway holds open now (what `keeptrusts_gateway_connections` reports)."""
        assert self.gateway is not None
        ops = self.gateway.ops
        return self.call(lambda: ops.connections() if ops.connections else -1)

    def stop(self) -> None:
        if self.loop is None or self.gateway is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.gateway.drain(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.gateway = None


MOCK_TARGETS = [{"id": "m", "provider": "mock", "model": "demo-model"}]  # the built-in mock provider: no upstream


def write_config(path: Path, targets: list[dict[str, Any]], chain: list[str] | None = None,
                 policy: dict[str, Any] | None = None, fallback: dict[str, Any] | None = None,
                 enabled: bool = True, **extra: Any) -> Path:
    """Write a policy-config.yaml for a test."""
    chain = chain or []
    doc: dict[str, Any] = {
        "pack": {"name": "gw-test", "version": "1.0.0", "enabled": enabled},
        "providers": {"targets": targets},
        "policies": {"chain": chain},
        "policy": policy or {kind: {} for kind in chain},
    }
    if fallback is not None:
        doc["providers"]["fallback"] = fallback
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- test-only policy kinds ------------------------------------------------------------------


class TermKind(Policy):
    """test-term: `pattern` (regex) with `verdict` block|redact, in both phases."""

    kind = "test-term"
    phases: ClassVar = frozenset({Phase.INPUT, Phase.OUTPUT})
    schema: ClassVar = {"pattern": {"type": "string"}, "verdict": {"type": "string"}}

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        self.regex = re.compile(options.get("pattern", "forbidden"))
        self.verdict = Verdict(options.get("verdict", "block"))

    def scan_text(self, text: str, phase: Phase) -> list[Hit]:
        return [Hit(m.start(), m.end(), self.verdict, "test_term_found", "[REDACTED]", "test term found")
                for m in self.regex.finditer(text)]


class BoomKind(Policy):
    """test-boom: raises on the phase(s) named by `on` (input|output)."""

    kind = "test-boom"
    phases: ClassVar = frozenset({Phase.INPUT, Phase.OUTPUT})
    schema: ClassVar = {"on": {"type": "string"}}

    def check_input(self, ex: Exchange) -> Decision | None:
        if self.options.get("on", "input") == "input":
            raise RuntimeError("boom")
        return None

    def check_output(self, ex: Exchange) -> Decision | None:
        if self.options.get("on", "input") == "output":
            raise RuntimeError("boom")
        return None


class ToolKind(Policy):
    """test-tool: blocks responses that call the tool named `blocked`; records usage it saw."""

    kind = "test-tool"
    phases: ClassVar = frozenset({Phase.OUTPUT})
    schema: ClassVar = {"blocked": {"type": "string"}}
    seen_usage: ClassVar[list[tuple[int, int]]] = []

    def check_output(self, ex: Exchange) -> Decision | None:
        ToolKind.seen_usage.append((ex.input_tokens, ex.output_tokens))
        for call in ex.response_tool_calls:
            if call["function"]["name"] == self.options.get("blocked"):
                return Decision(Verdict.BLOCK, "tool_blocked", f"tool {self.options['blocked']} is not allowed")
        return None


TEST_KINDS = {k.kind: k for k in (TermKind, BoomKind, ToolKind)}


def assert_responses_blocked(client: Any, stream: bool, word: str = "forbidden") -> None:
    """`client.responses.create` (an OpenAI SDK client) on an answer an output policy blocks for `word`:
    JSON is a 409 `output_blocked`; a stream ends with an `output_blocked` error event and no delta held `word`."""
    if stream:
        events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
        assert events[-1].type == "error" and events[-1].code == "output_blocked"
        assert word not in "".join(e.delta for e in events if e.type == "response.output_text.delta")
        return
    try:
        client.responses.create(model="gpt-4o-mini", input="hi")
    except openai.ConflictError as err:
        assert err.body["code"] == "output_blocked"
    else:
        raise AssertionError("the blocked answer was served")
