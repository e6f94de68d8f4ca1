"""The Git sync agent embedded in the gateway process, and `POST /keeptrusts/sync/webhook`.

The agent publishes into its state directory exactly as `kt sync run` does; the gateway loads
`<state>/current/<path>` and reloads through its file watcher when `current` flips, so there is
one reload path either way. The config the agent compiled to validate a commit is handed to that
reload (`gateway.control.handover`), which swaps it in when the published bytes are the same.
The webhook only triggers a sync (the payload is a hint; the agent fetches the branch itself);
a missing or wrong signature gets 401; a replayed delivery (same `X-GitHub-Delivery` /
`X-Gitlab-Event-UUID`) is answered 200 and triggers nothing; bursts are debounced by the
scheduler (`SyncScheduler.trigger`).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import tornado.web

from gateway.control.handover import Handover
from gateway.proxy.errors import envelope
from sync import webhook
from sync.agent import SyncAgent, SyncResult, SyncSettings
from sync.metrics import WEBHOOKS
from sync.scheduler import SyncScheduler

log = logging.getLogger("kt.gateway.sync")
WEBHOOK_PATH = "/keeptrusts/sync/webhook"


class EmbeddedSync:
    """One agent + scheduler running in background threads of the gateway process."""

    def __init__(self, settings: SyncSettings, interval: float = 60.0, webhook_secret: bytes | None = None,
                 max_failures: int | None = None) -> None:
        self.settings = settings
        self.handover = Handover()  # what the agent compiled, for the gateway's reload (no second compile)
        self.agent = SyncAgent(settings, load=self.handover.load)
        self.scheduler = SyncScheduler(self.agent, interval=interval, max_failures=max_failures,
                                       on_result=self._on_result)
        self.webhook_secret = webhook_secret
        self.deliveries = webhook.RecentDeliveries()  # replayed deliveries are answered, never acted on
        self.on_publish: Callable[[], None] | None = None  # the gateway nudges its reloader (no wait for the watcher)
        self.supervisor_pid: int | None = None  # a worker of --workers N: the agent runs in this process instead

    @property
    def config_path(self) -> Path:
        """Where the gateway reads its config: `<state>/current/<path>`."""
        return self.settings.state_dir / "current" / self.settings.path

    def acquire(self) -> None:
        """Take the state-dir lock (AgentLocked if another agent owns it); a gateway does so before it
        opens any state file, so a second one exits without touching the first one's files."""
        self.agent.acquire()

    def start(self) -> None:
        """Take the state-dir lock (unless taken; AgentLocked if another agent owns it) and start syncing now."""
        self.agent.acquire()
        self.scheduler.start()

    def stop(self) -> None:
        """Stop scheduling (a running sync finishes in its thread) and release the lock."""
        self.scheduler.stop(wait=False)
        self.agent.release()

    def trigger(self) -> None:
        """Sync as soon as possible (webhook, SIGHUP); bursts collapse into one run. In a worker the
        supervisor's agent is asked (SIGHUP: it syncs, and every worker reloads)."""
        if self.supervisor_pid is not None:
            os.kill(self.supervisor_pid, signal.SIGHUP)
            return
        self.scheduler.trigger()

    def _on_result(self, result: SyncResult) -> None:
        if (result.result == "success" or result.restored) and self.on_publish is not None:
            self.on_publish()


class SyncWebhook(tornado.web.RequestHandler):
    """GitHub (`X-Hub-Signature-256`) or GitLab (`X-Gitlab-Token`) push hook -> trigger a sync."""

    sync: EmbeddedSync

    def initialize(self, sync: EmbeddedSync) -> None:
        self.sync = sync

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(orjson.dumps(body))

    def _error(self, status: int, code: str, message: str) -> None:
        type_ = "authentication_error" if status == 401 else "invalid_request_error"
        self._answer(status, envelope(type_, code, message))

    def post(self) -> None:
        secret = self.sync.webhook_secret
        if secret is None:
            WEBHOOKS.labels(result="refused").inc()
            self._error(404, "webhook_disabled",
                        "no webhook secret configured (--webhook-secret-file or KEEPTRUSTS_WEBHOOK_SECRET)")
            return
        headers = dict(self.request.headers.get_all())
        if not webhook.verify(secret, headers, self.request.body):
            WEBHOOKS.labels(result="refused").inc()
            log.warning("webhook refused: missing or wrong signature", extra={"remote": self.request.remote_ip})
            self._error(401, "invalid_signature", "missing or wrong X-Hub-Signature-256 / X-Gitlab-Token")
            return
        delivery = webhook.delivery_id(headers)
        if delivery is not None and not self.sync.deliveries.first_time(delivery):
            WEBHOOKS.labels(result="duplicate").inc()
            log.info("webhook delivery replayed; ignored", extra={"delivery": delivery})
            self._answer(200, {"triggered": False, "duplicate": True, "reason": "duplicate delivery"})
            return
        if self.request.headers.get("X-GitHub-Event") == "ping":
            WEBHOOKS.labels(result="ignored").inc()
            self._answer(200, {"triggered": False, "reason": "ping"})
            return
        if not webhook.concerns_branch(self.request.body, self.sync.settings.remote.ref):
            WEBHOOKS.labels(result="ignored").inc()
            self._answer(202, {"triggered": False, "reason": "push to another branch"})
            return
        WEBHOOKS.labels(result="accepted").inc()
        self.sync.trigger()
        self._answer(202, {"triggered": True})


def webhook_routes(sync: EmbeddedSync) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    """Routes to add to the gateway application when the agent is embedded."""
    return [(WEBHOOK_PATH, SyncWebhook, {"sync": sync})]
