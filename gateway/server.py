"""Starting, running and draining one gateway process (what `kt gateway run` calls).

Start: load and validate the config, build the immutable snapshot, bind, serve. SIGTERM or
SIGINT: /readyz turns 503, the listening socket closes, in-flight requests finish (bounded
by the drain timeout), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import tornado.web
from tornado.netutil import bind_sockets

from gateway.control import group, metrics, sdnotify
from gateway.control.admin import admin_routes
from gateway.control.ops import Ops
from gateway.control.runtime import Runtime, Snapshot
from gateway.http.handler import Router
from gateway.http.http1 import HTTP1Server
from gateway.providers.upstream import unavailable_reason
from gateway.proxy.app import ROUTES, GatewaySettings, make_app
from gateway.proxy.services import services_of
from gateway.supervisor import inherited_sockets
from sync.credentials import mask_url
from sync.publish import default_state_dir

if TYPE_CHECKING:
    from gateway.control.gitsync import EmbeddedSync

log = logging.getLogger("kt.gateway")

VERSION = version("kt-gateway")  # the installed distribution's (kt --version says the same)


def log_config(snapshot: Snapshot) -> None:
    """Say what runs: pack, revision, chain, and which targets are unavailable and why."""
    config = snapshot.config
    log.info("loaded config %s@%s from %s (revision %s); chain: %s", config.pack.name, config.pack.version,
             snapshot.path, snapshot.revision[:12], " -> ".join(config.chain.kinds) or "(empty)")
    if not config.enabled:
        log.warning("pack.enabled is false: traffic passes with NO policies (events say policies_enabled=false)")
    for target in config.targets:
        reason = unavailable_reason(target)
        if reason:
            log.warning("target %s (%s %s) is unavailable: %s", target.id, target.provider, target.model, reason)
        elif target.provider == "mock":
            log.info("target %s serves %s from the built-in mock provider (local demo, no network)",
                     target.id, target.model)


@dataclass
class RunningGateway:
    """A started gateway: its runtime, app and the port it listens on."""

    runtime: Runtime
    app: tornado.web.Application
    server: HTTP1Server
    settings: GatewaySettings
    port: int
    ops: Ops
    sync: EmbeddedSync | None = None
    publisher: group.GroupPublisher | None = None

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close connections and the upstream pool."""
        runtime = self.runtime
        runtime.draining = True
        self.server.stop()
        if self.publisher is not None:
            self.publisher.publish()  # the group sees this worker not ready at once
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout
        while runtime.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if runtime.in_flight > 0:
            log.warning("drain timeout (%.1f s) reached with %d request(s) still in flight",
                        self.settings.drain_timeout, runtime.in_flight)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.close_all_connections(), 2.0)
        await services_of(self.app.settings).upstream.close()
        runtime.flush_records()
        await self.ops.stop()  # stop reloading and forwarding; queued events are flushed to the store
        if runtime.tracer is not None:
            await asyncio.get_running_loop().run_in_executor(None, runtime.tracer.shutdown)
        await runtime.state.close()  # pending counter updates are sent first
        if self.publisher is not None:
            await self.publisher.stop()
        if self.sync is not None and self.sync.supervisor_pid is None:
            self.sync.stop()


async def start(settings: GatewaySettings, config_path: str | Path | None, runtime: Runtime | None = None,
                sync: EmbeddedSync | None = None) -> RunningGateway:
    """Load the config and listen; returns once the gateway accepts requests.

    With `sync` (the embedded Git agent) the config is `<state>/current/<path>`: served at once
    when a revision was published before (warm start), else not ready (503) until the first
    good sync publishes one; the file watcher reloads on every publish either way."""
    runtime = runtime or Runtime(fail_mode=settings.fail_mode)
    runtime.fail_mode = settings.fail_mode
    runtime.max_concurrency = settings.max_concurrency
    if settings.otlp_endpoint and runtime.tracer is None:  # imports OpenTelemetry only here
        from gateway.control.tracing import Tracer

        runtime.tracer = Tracer(settings.otlp_endpoint, version=VERSION)
        log.info("traces go to %s (OTLP/HTTP)", mask_url(settings.otlp_endpoint))
    state_dir = settings.state_dir or default_state_dir()
    agent = sync is not None and sync.supervisor_pid is None  # a worker serves only the webhook; its supervisor syncs
    if agent:
        sync.acquire()  # AgentLocked when another agent owns the state dir: before any state file is opened
    try:
        open_counters(runtime, settings, state_dir)
        if sync is not None:
            if agent:
                sync.handover.policy_state = runtime.policy_state  # the agent compiles what the reload swaps in
                sync.start()
            config_path = sync.config_path
        return await _start(settings, str(config_path), runtime, sync, state_dir)
    except BaseException:
        if agent:
            sync.stop()
        raise


def open_counters(runtime: Runtime, settings: GatewaySettings, state_dir: Path) -> None:
    """Give the runtime its counter backend (before the first config compiles against it)."""
    from gateway.control.state_backend import open_state_backend
    from policies import PolicyState

    runtime.state = open_state_backend(state_dir, settings.state_url, settings.state_password_file,
                                       settings.fail_mode)
    runtime.policy_state = PolicyState(runtime.state.local)
    runtime.state.resume()
    shown = runtime.state.describe()
    log.info("counters (spend, rates, sessions): %s %s", shown["backend"], shown["url"] or shown["path"])


async def _start(settings: GatewaySettings, config_path: str, runtime: Runtime,
                 sync: EmbeddedSync | None, state_dir: Path) -> RunningGateway:
    ops = Ops(runtime, config_path, state_dir=state_dir, version=VERSION, events_max_size=settings.events_max_size,
              watch=settings.watch_config or sync is not None,
              sync_state_dir=sync.settings.state_dir if sync is not None else None)
    if sync is not None and sync.supervisor_pid is None:
        ops.reloader.handover = sync.handover  # a publish of the bytes the agent compiled is not compiled again
    # Raises ConfigError unless a config may come later; registers the metrics and request-log observers.
    ops.load_initial(required=sync is None and not settings.wait_for_config)
    if runtime.snapshot is not None:
        log_config(runtime.snapshot)
    else:
        log.warning("no published config yet in %s: not ready until the first good sync", config_path)
    if settings.keys is None:
        log.warning("no --keys-file: the gateway is open, any client can use it without a key")
    else:
        log.info("gateway keys: %d accepted key(s)", len(settings.keys))
    routes = admin_routes(ops)
    if sync is not None:
        from gateway.control.gitsync import webhook_routes

        routes += webhook_routes(sync)
    app = make_app(runtime, settings, extra_routes=routes)  # ValueError: an unusable HTTPS_PROXY
    services = services_of(app.settings)
    proxy = services.upstream.proxy
    if proxy is not None:
        log.info("https upstreams go through the proxy %s (CONNECT)%s", proxy.shown,
                 f"; direct: loopback and NO_PROXY={proxy.no_proxy}" if proxy.no_proxy else "; direct: loopback")
    breakers = services.breakers.by_target
    ops.providers = lambda: {target_id: breaker.state for target_id, breaker in breakers.items()}
    # Bodies up to twice the limit are read and answered 413 with the envelope (by the handler); beyond
    # that the server answers 413 and closes without reading on (Content-Length) or drops the connection.
    limit = settings.max_body_size * 2 + 1024 * 1024
    server = HTTP1Server(Router(app, ROUTES), max_body_size=limit, idle_timeout=75,
                         client_timeout=settings.client_timeout, max_connections=settings.max_connections)
    log.info("client connections: at most %d at once (--max-connections), --client-timeout %g s; "
             "at most %d requests in flight (--max-concurrency), %d upstream connections",
             server.max_connections, settings.client_timeout, settings.max_concurrency,
             settings.max_upstream_connections)
    sockets = inherited_sockets() or bind_sockets(settings.port, settings.host or None, backlog=1024)
    await server.add_sockets(sockets)
    ops.connections = lambda: len(server.connections)
    ops.limits = lambda: (server.max_connections, server.refused)
    await ops.start()  # event store, forwarder, config watcher, SIGHUP
    directory, index = group.group_dir(), group.worker_index()
    publisher = None
    if directory is not None and index is not None:  # a worker of `--workers N`: publish for the group view
        publisher = group.GroupPublisher(directory, index, metrics.render, ops.worker_record)
        publisher.start()
    if sync is not None and sync.supervisor_pid is None:  # (a worker's SIGHUP comes from its supervisor)
        loop = asyncio.get_running_loop()
        # A publish flips `current`; the watcher would see it too, this only skips its debounce.
        sync.on_publish = lambda: loop.call_soon_threadsafe(ops.reloader.request, "sync")

        def on_sighup() -> None:  # sync now, and reload (one handler per signal on the loop)
            sync.trigger()
            ops.reloader.request("sighup")

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
    return RunningGateway(runtime, app, server, settings, sockets[0].getsockname()[1], ops, sync, publisher)


async def serve(settings: GatewaySettings, config_path: str | Path | None, sync: EmbeddedSync | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain; the exit code."""
    began = time.perf_counter()
    raise_open_file_limit()  # before start(): the default --max-connections follows from it
    gateway = await start(settings, config_path, sync=sync)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = settings.host or "0.0.0.0"
    log.info("listening on http://%s:%d (ready in %.2f s)", host, gateway.port, time.perf_counter() - began,
             extra={"host": host, "port": gateway.port})  # the bound port (--listen HOST:0 picks one)
    tune_gc()
    notifier = loop.create_task(tell_systemd(gateway))
    await stop.wait()
    log.info("signal received: draining (up to %.1f s)", settings.drain_timeout)
    notifier.cancel()
    sdnotify.stopping(f"draining (up to {settings.drain_timeout:g} s)")
    await gateway.drain()
    log.info("stopped")
    return 0


async def tell_systemd(gateway: RunningGateway) -> None:
    """sd_notify (a no-op without $NOTIFY_SOCKET): READY=1 with the revision once a config is loaded and
    the socket listens, then WATCHDOG=1 from the event loop (the reloader sends RELOADING=1/READY=1)."""
    runtime = gateway.runtime
    while runtime.snapshot is None:  # a gateway waiting for its first sync is not ready yet
        await asyncio.sleep(0.05)
    sdnotify.ready(gateway.ops.reloader.describe())
    interval = sdnotify.watchdog_interval()
    while interval:
        sdnotify.watchdog()
        await asyncio.sleep(interval)


def raise_open_file_limit(cap: int = 1 << 20) -> None:
    """Raise the soft open-file limit to the hard one (as Go programs and nginx's worker_rlimit_nofile do):
    a shell's default soft limit of 1024 would cap the gateway at a few hundred connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path's back (docs/gateway.md, "Requests and
    the garbage collector", rule 4; docs/benchmarks.md has the measurement)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (cheaper sockets and callbacks: more requests per core), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(settings: GatewaySettings, config_path: str | Path | None, sync: EmbeddedSync | None = None) -> int:
    """Blocking entry point for the CLI."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(serve(settings, config_path, sync))
