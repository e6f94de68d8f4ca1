"""Hot reload: load a config path into a `Snapshot` off the request path and swap it atomically.

Triggers (all funnel into `Reloader.request`, which debounces bursts): watchfiles on the
directories along the config path, reacting only to the config file and the symlinks on its
path (edit in place, rename over it, a flip of `<state>/current`), SIGHUP, and `POST /keeptrusts/config/reload` (which
awaits `Reloader.reload`). Parsing, validation and compilation run in a thread; an invalid
config is refused whole and the old snapshot keeps serving. Unchanged content is a no-op, and
a watch event that finds the very bytes already refused is not counted again. With the embedded
sync agent, bytes that passed the revision's digest check and are the ones the agent compiled
are not compiled again: the agent's `Config` is swapped in (`gateway.control.handover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from gateway.control import metrics, sdnotify
from gateway.control.handover import Handover
from gateway.control.runtime import Runtime, Snapshot
from policies import Config, ConfigError, Finding, PolicyState, load_config_bytes
from sync import manifest

log = logging.getLogger("kt.gateway.reload")
STOP_WAIT_S = 2.0  # how long `Reloader.stop` waits for the worker and the watcher to end
_REVISION_DIR = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def _published(path: str | Path) -> tuple[Path, str] | None:
    """(state dir, sha) when `path` resolves inside `<state>/revisions/<sha>/`."""
    parts = Path(os.path.realpath(path)).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i - 1] == "revisions" and _REVISION_DIR.match(parts[i]):
            return Path(*parts[: i - 1]), parts[i]
    return None


def revision_of(path: str | Path, sha256: str) -> tuple[str, str]:
    """(revision, source): the Git sha when `path` resolves inside `<state>/revisions/<sha>/`, else the file hash."""
    published = _published(path)
    return (published[1], "git") if published else (sha256, "file")


def sync_state_of(path: str | Path) -> Path | None:
    """The sync agent's state dir when `path` resolves inside `<state>/revisions/<sha>/`."""
    published = _published(path)
    return published[0] if published else None


def _current_link(path: str | Path) -> Path | None:
    """The `<state>/current` symlink on the (unresolved) config path, when it is read through a sync state dir."""
    p = Path(os.path.abspath(path))
    for anc in p.parents:
        if anc.name == "current" and anc.is_symlink() and (anc.parent / "revisions").is_dir():
            return anc
    return None


def resolve_config(path: str | Path) -> tuple[str, str | None]:
    """(file to read, sha256 it must have): for a config read through `<state>/current`, the file inside
    the published revision, checked against the digest the agent recorded; else the real path and None.

    Refused with `ConfigError`: `current` not pointing at `<state>/revisions/<sha>` or the config's real
    path leaving that revision (E110), a revision that no longer matches its digest (E111)."""
    link = _current_link(path)
    if link is None:
        real = os.path.realpath(path)
        published = _published(real)  # reached through some other link: still a published revision, still checked
        if published is None:
            return real, None
        rev = str(published[0] / "revisions" / published[1])
        inside = os.path.relpath(real, rev)
    else:
        revisions = os.path.realpath(link.parent / "revisions")
        rev = os.path.realpath(link)  # resolved once: a flip while loading cannot mix two revisions
        if os.path.dirname(rev) != revisions or not _REVISION_DIR.match(os.path.basename(rev)):
            raise ConfigError(str(path), [Finding("E110", "", f"{link} points at {rev}, not at a revision "
                                                  f"published in {revisions}")])
        inside = os.path.relpath(os.path.abspath(path), link)
    try:
        real = os.path.realpath(os.path.join(rev, inside), strict=True)
    except OSError as exc:
        raise ConfigError(str(path), [Finding("E100", "", f"cannot read file: {exc.strerror or exc}")]) from exc
    if not real.startswith(rev + os.sep):
        raise ConfigError(str(path), [Finding("E110", "", f"{path} resolves to {real}, outside the published "
                                              f"revision {os.path.basename(rev)[:12]}")])
    try:
        recorded = manifest.verify(Path(rev))
    except manifest.Tampered as exc:
        raise ConfigError(str(path), [Finding("E111", "", f"published revision refused: {exc}")]) from None
    return real, recorded.get(os.path.relpath(real, rev))


class Verified(NamedTuple):
    """A config read once from disk: its real path, bytes, their sha256, and the digest the agent recorded."""

    real: str
    data: bytes
    sha256: str
    published: str | None  # sha256 from the revision's `<sha>.digest` (equal to `sha256`); None for a plain file


def read_verified(path: str | Path) -> Verified:
    """The config at `path`, read once and checked as `resolve_config` says."""
    real, expected = resolve_config(path)
    data, sha = read_config(real)
    if expected is not None and sha != expected:
        raise ConfigError(str(path), [Finding("E111", "", f"{real} changed after it was published "
                                              f"(sha256 {sha[:12]}, recorded {expected[:12]})")])
    return Verified(real, data, sha, expected)


def read_config(path: str | Path) -> tuple[bytes, str]:
    """The config bytes and their sha256; `ConfigError` when unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [Finding("E100", "", f"cannot read file: {exc.strerror or exc}")]) from exc
    return data, hashlib.sha256(data).hexdigest()


def load_snapshot(path: str | Path, state: PolicyState | None = None, handover: Handover | None = None) -> Snapshot:
    """Read, validate and compile the config at `path` into a new `Snapshot` (blocking); the
    embedded agent's compile of the same published bytes is taken instead when `handover` holds it."""
    read = read_verified(path)  # `<state>/current` resolved once: bytes and revision from one tree
    config = handed_over(handover, read, state, str(path)) or load_config_bytes(read.data, str(path), state)
    revision, source = revision_of(read.real, read.sha256)
    return Snapshot(config=config, revision=revision, source=source, path=str(path))


def handed_over(handover: Handover | None, read: Verified, state: PolicyState | None, path: str) -> Config | None:
    """The sync agent's compile of exactly these bytes, when `read` passed the published digest check
    (never for a plain file: only a revision's `<sha>.digest` vouches that the bytes are what was validated)."""
    if handover is None or state is None or read.published is None or read.published != read.sha256:
        return None
    config = handover.take(read.sha256, state)
    if config is None:
        return None
    log.debug("config compiled by the sync agent taken over (no second compile)",
              extra={"sha256": read.sha256, "path": path})
    return dataclasses.replace(config, source=path)


@dataclass(frozen=True)
class ReloadResult:
    """What one reload attempt did."""

    result: str  # ok | noop | error
    trigger: str
    revision: str | None = None
    error: str | None = None
    findings: tuple[Finding, ...] = ()
    at: float = field(default_factory=time.time)
    sha256: str | None = None  # of the bytes this attempt read (None when unreadable)

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "trigger": self.trigger,
            "revision": self.revision,
            "error": self.error,
            "findings": [f.as_dict() for f in self.findings],
        }


def watch_names(path: str | Path) -> set[str]:
    """The absolute names whose change can change what `path` resolves to or contains.

    The path itself, every symlink met while resolving it (e.g. `<state>/current`, a ConfigMap's
    `..data`), the path as rewritten through each link, and its real target. Anything else in
    their directories (a log file, `status.json`, an editor's swap file) is not the config.
    """
    names: set[str] = set()
    pending = [os.path.abspath(path)]
    seen: set[str] = set()
    while pending:
        current = pending.pop()
        if current in seen or len(seen) > 40:
            continue
        seen.add(current)
        names.add(current)
        prefix = Path(current).anchor
        for part in Path(current).parts[1:]:
            prefix = os.path.join(prefix, part)
            if os.path.islink(prefix):
                names.add(prefix)
                target = os.path.join(os.path.dirname(prefix), os.readlink(prefix))
                rest = os.path.relpath(current, prefix)
                pending.append(os.path.normpath(os.path.join(target, rest)))
                break
    names.add(os.path.realpath(path))
    return names


def watch_dirs(path: str | Path) -> set[str]:
    """Directories to watch for `path`: those holding one of its `watch_names`."""
    return {d for d in map(os.path.dirname, watch_names(path)) if os.path.isdir(d)}


class Reloader:
    """Owns the swap of `runtime.snapshot` for one config path, and the last reload's outcome."""

    def __init__(self, runtime: Runtime, path: str | Path, debounce: float = 0.05) -> None:
        self.runtime = runtime
        self.path = str(path)
        self.debounce = debounce
        self.last: ReloadResult | None = None
        self.confirmed_at: float | None = None  # last time the file was seen to match what runs
        self.handover: Handover | None = None  # the embedded sync agent's compiled config (gateway.control.handover)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._triggers: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()  # ends the watcher from inside (see `stop`)
        self.on_sighup: list[Callable[[], None]] = []  # also run on SIGHUP (e.g. an embedded sync agent's trigger)
        # run on the loop when a reload moves a serving gateway to another revision (not on the first load)
        self.on_new_revision: list[Callable[[Snapshot], None]] = []

    def load_initial(self) -> Snapshot:
        """Load the first snapshot synchronously (before serving); raises `ConfigError`."""
        snap = load_snapshot(self.path, self.runtime.policy_state, self.handover)
        self.runtime.snapshot = snap
        self.confirmed_at = snap.loaded_at
        self.last = ReloadResult("ok", "start", snap.revision)
        metrics.RELOADS.labels("ok").inc()
        log.info("config loaded", extra=self._fields(snap, "start"))
        return snap

    async def reload(self, trigger: str) -> ReloadResult:
        """Reload now (serialized with other reloads) and return what happened."""
        async with self._lock:
            sdnotify.reloading(f"reloading config ({trigger})")
            before = self.runtime.snapshot
            result = await self._reload(trigger)
            last = self.last
            if (trigger == "watch" and result.result == "error" and last is not None and last.result == "error"
                    and (last.sha256, last.error) == (result.sha256, result.error)):
                sdnotify.ready(self.describe())
                return last  # the same refused bytes seen again (a re-watch): one bad edit is one error
            self.last = result
            metrics.RELOADS.labels(result.result).inc()
            sdnotify.ready(self.describe())
            now = self.runtime.snapshot
            if result.result == "ok" and before is not None and now is not None and now.revision != before.revision:
                for hook in self.on_new_revision:
                    hook(now)
        return result

    def describe(self) -> str:
        """One line for `systemctl status`: what runs, and a refused reload if any."""
        snap = self.runtime.snapshot
        running = f"serving {snap.config.pack.name}@{snap.config.pack.version} revision {snap.revision[:12]}" \
            if snap else "no config loaded"
        refused = self.last is not None and self.last.result == "error"
        return running + ("; last reload refused (see /keeptrusts/status)" if refused else "")

    async def _reload(self, trigger: str) -> ReloadResult:
        loop = asyncio.get_running_loop()
        current = self.runtime.snapshot
        sha: str | None = None
        try:
            # Resolve `<state>/current` once: a publish flipping it between reading the bytes and naming
            # the revision would otherwise label the old config with the new revision.
            read = await loop.run_in_executor(None, read_verified, self.path)
            sha = read.sha256
            revision, source = revision_of(read.real, sha)
            if current is not None and current.sha256 == sha:
                self.confirmed_at = time.time()
                if current.revision == revision and current.path == self.path:
                    log.debug("config unchanged", extra={"trigger": trigger, "revision": revision})
                    return ReloadResult("noop", trigger, revision)
                # Same bytes under a new commit: keep the compiled config, move the revision.
                snap = dataclasses.replace(current, revision=revision, source=source, path=self.path,
                                           loaded_at=time.time())
            else:
                state = self.runtime.policy_state
                config = handed_over(self.handover, read, state, self.path) or \
                    await loop.run_in_executor(None, load_config_bytes, read.data, self.path, state)
                snap = Snapshot(config=config, revision=revision, source=source, path=self.path)
                self.confirmed_at = snap.loaded_at
        except ConfigError as exc:
            log.error("config reload refused; the previous config keeps serving",
                      extra={"trigger": trigger, "path": self.path, "error": str(exc),
                             "findings": [f.as_dict() for f in exc.findings],
                             "revision": current.revision if current else None})
            return ReloadResult("error", trigger, current.revision if current else None, str(exc),
                                tuple(exc.findings), sha256=sha)
        except Exception as exc:  # a bug in a policy constructor must not kill the watcher
            log.exception("config reload failed", extra={"trigger": trigger, "path": self.path})
            return ReloadResult("error", trigger, current.revision if current else None,
                                f"{type(exc).__name__}: {exc}", sha256=sha)
        self.runtime.snapshot = snap
        log.info("config reloaded", extra=self._fields(snap, trigger))
        return ReloadResult("ok", trigger, snap.revision)

    @staticmethod
    def _fields(snap: Snapshot, trigger: str) -> dict[str, Any]:
        pack = snap.config.pack
        return {"trigger": trigger, "revision": snap.revision, "sha256": snap.sha256, "source": snap.source,
                "path": snap.path, "pack": pack.name, "pack_version": pack.version}

    def request(self, trigger: str) -> None:
        """Ask for a reload soon; bursts of requests collapse into one. Loop thread only."""
        self._triggers.add(trigger)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.debounce)  # let a burst settle (e.g. write + rename)
            self._wake.clear()
            triggers, self._triggers = self._triggers, set()
            await self.reload("+".join(sorted(triggers)) or "watch")

    async def _watch(self, force_polling: bool | None = None) -> None:
        import watchfiles

        while not self._stopping.is_set():
            names = watch_names(self.path)
            dirs = {d for d in map(os.path.dirname, names) if os.path.isdir(d)}
            if not dirs:  # nothing to watch yet (e.g. state dir not created): look again later
                await asyncio.sleep(1.0)
                continue
            first = True  # the first timeout tick means the watches are in place: check once for a missed change
            try:
                async for changes in watchfiles.awatch(*sorted(dirs), recursive=False, debounce=400, step=30,
                                                       force_polling=force_polling, rust_timeout=500,
                                                       yield_on_timeout=True, stop_event=self._stopping):
                    if first or any(changed in names for _, changed in changes):
                        self.request("watch")
                    first = False
                    if watch_names(self.path) != names:  # a symlink moved or a directory appeared: re-watch
                        break
            except (FileNotFoundError, RuntimeError, OSError) as exc:
                log.warning("config watcher restarting", extra={"error": str(exc), "path": self.path})
                await asyncio.sleep(0.5)

    def start(self, watch: bool = True, sighup: bool = True) -> None:
        """Start the reload worker, the file watcher and the SIGHUP handler on the running loop."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run()))
        if watch:
            self._tasks.append(loop.create_task(self._watch()))
        if sighup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, self._sighup)

    def _sighup(self) -> None:
        self.request("sighup")
        for hook in self.on_sighup:
            hook()

    async def stop(self) -> None:
        """End the watcher through its stop event and cancel the worker; waits at most `STOP_WAIT_S`.

        The watcher is not cancelled: a cancel that reaches it inside watchfiles' thread call
        (an anyio shielded scope) can be swallowed, and awaiting it then hung a draining gateway
        until it was killed. Its stop event ends it within one `step` (30 ms)."""
        self._stopping.set()
        if self._tasks:
            self._tasks[0].cancel()  # the worker (`start` puts it first)
            done, pending = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            for task in pending:  # never seen; left behind rather than awaited for ever
                task.cancel()
                log.warning("config watcher did not stop in %.0f s", STOP_WAIT_S)
            for task in done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        self._tasks.clear()
