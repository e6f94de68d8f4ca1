"""One sync: fetch -> export -> validate -> publish, recorded in status.json and metrics.

`SyncAgent.sync_once()` never raises for anything the outside world can cause (remote down,
bad credentials, invalid config, full disk); it returns a `SyncResult` and leaves `current`
on the last good revision. One agent per state directory, enforced by a lock file that the
kernel releases when the process dies (so kill -9 never leaves a stale lock).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from policies import Config, load_config
from sync import metrics, rewind
from sync.clock import parse_time, rfc3339
from sync.manifest import Tampered, verify, write_manifest
from sync.publish import (
    REVISIONS,
    Compile,
    check_config_path,
    cleanup,
    content_digest,
    current_dir,
    flip,
    install,
    new_tmp_dir,
    prune,
    validate,
)
from sync.repo import GitError, Mirror, Remote, UnsafeTree, ref_kind
from sync.signature import SignersError, TrustedSigners
from sync.status import read_status, write_status

log = logging.getLogger("kt.sync")
LOCK = ".lock"
PID = "sync.pid"
UNSAFE_CODE = "E110"  # finding: the commit cannot be published safely (a link leaving it)
GC_EVERY = 50  # publishes between `git gc` runs of the private clone (fetches never gc: gc.auto=0)


class AgentLocked(Exception):
    """Another agent (pid in the message when known) already owns this state directory."""


@dataclass(frozen=True)
class SyncSettings:
    """Everything one agent needs; validated once at start."""

    remote: Remote
    state_dir: Path
    path: str = "policy-config.yaml"
    timeout: float = 120.0  # per sync: a git command still running at the deadline is killed
    keep: int = 5
    verify_signers: str | None = None  # apply only commits signed by a key in this file (sync.signature)
    on_rewind: str | None = None  # follow | refuse a head that does not descend from the applied commit (sync.rewind);
    # None: refuse with verify_signers, follow without

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_rewind", rewind.policy(self.on_rewind, self.verify_signers))
        object.__setattr__(self, "path", check_config_path(self.path))
        object.__setattr__(self, "state_dir", Path(self.state_dir).absolute())
        if self.keep < 1:
            raise ValueError("--keep must be at least 1")
        if self.timeout <= 0:
            raise ValueError("--timeout must be positive")


@dataclass(frozen=True)
class SyncResult:
    """The outcome of one sync. `result`: success | noop | error | rejected."""

    result: str
    head: str | None = None
    applied: str | None = None
    error: str | None = None
    error_kind: str | None = None
    findings: tuple[dict, ...] = field(default_factory=tuple)
    duration: float = 0.0
    consecutive_failures: int = 0
    restored: bool = False  # the applied revision was put back (it had been tampered with)

    @property
    def ok(self) -> bool:
        return self.result in ("success", "noop")


def lock_is_held(state: Path) -> bool:
    """True while some agent process holds the lock of `state`."""
    try:
        fd = os.open(Path(state) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class SyncAgent:
    """Syncs one ref/path of one repository into one state directory."""

    def __init__(self, settings: SyncSettings, load: Compile = load_config) -> None:
        self.settings = settings
        self.load = load  # validates + compiles an export; the embedded gateway passes one that keeps the result
        self.state = settings.state_dir
        self.mirror = Mirror(self.state / "repo", self.state / ".askpass.sh")
        self._lock_fd: int | None = None
        self._rejected: str | None = None  # head already refused in this process: not re-exported
        self._published = 0
        # Loaded now, so a bad file is a startup error (SignersError); re-read when it changes.
        self._signers = TrustedSigners(settings.verify_signers) if settings.verify_signers else None
        self._verified: tuple[str, str] | None = None  # (head, signers digest) whose signature passed
        self._signer: dict | None = None  # who signed the commit in `_verified`
        self._restored = False  # set by the current run when it restored the applied revision

    @property
    def signers(self) -> TrustedSigners | None:
        """The trusted signers commits are verified against (None when verification is off)."""
        return self._signers

    def acquire(self) -> None:
        """Take the state-directory lock and write the pid file; AgentLocked if another agent runs.
        Taking it again while held does nothing."""
        if self._lock_fd is not None:
            return
        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = _read_pid(self.state)
            who = f" (pid {pid})" if pid else ""
            raise AgentLocked(f"another sync agent{who} is already running for {self.state}") from None
        self._lock_fd = fd
        (self.state / PID).write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        """Give the lock back (also happens when the process dies)."""
        if self._lock_fd is not None:
            (self.state / PID).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._signers is not None:
            self._signers.close()

    def sync_once(self) -> SyncResult:
        """Run one sync and record it; never raises for remote, config or disk problems."""
        started = time.monotonic()
        deadline = started + self.settings.timeout
        s = self.settings
        status = read_status(self.state) or {}
        if status.get("applied_revision"):  # a state dir of an older kt: applied from the ref of its last run
            status.setdefault("applied_ref", status.get("ref") or status.get("branch") or s.remote.ref)
            status.setdefault("applied_repo", status.get("repo") or s.remote.masked_url)
        status.update(repo=s.remote.masked_url, branch=s.remote.ref, ref=s.remote.ref, path=s.path,
                      verify_signers=self._signers.describe() if self._signers else {"enabled": False},
                      on_rewind=s.on_rewind)
        status.setdefault("applied_signer", None)
        status["last_attempt_at"] = rfc3339(time.time())
        self._restored = False
        try:
            result = self._sync(status, deadline)
        except GitError as exc:
            result = SyncResult("error", error=str(exc), error_kind=exc.kind)
        except SignersError as exc:
            result = SyncResult("error", error=str(exc), error_kind="verify")
        except OSError as exc:
            where = exc.filename or self.state
            result = SyncResult("error", error=f"cannot write the state directory ({where}): {exc.strerror}",
                                error_kind="publish")
        except Exception as exc:  # a bug must not stop the schedule
            log.exception("sync failed unexpectedly")
            result = SyncResult("error", error=f"internal error: {exc!r}", error_kind="internal")
        if self._restored:
            status["last_restored_at"] = rfc3339(time.time())  # a tampered publication was put back
            metrics.SYNC_RESTORES.inc()
        failures = 0 if result.ok else int(status.get("consecutive_failures") or 0) + 1
        status.update(last_result=result.result, consecutive_failures=failures)
        if result.ok:
            status.update(last_error=None, error_kind=None, findings=[], last_success_at=rfc3339(time.time()))
        else:
            status.update(last_error=result.error, error_kind=result.error_kind)
            if result.result == "rejected":
                status["findings"] = list(result.findings)
        try:
            write_status(self.state, status)
        except OSError as exc:
            log.error("cannot write %s/status.json: %s", self.state, exc.strerror)
        duration = time.monotonic() - started
        metrics.record(result.result, duration, parse_time(status.get("last_success_at")), failures)
        result = SyncResult(result.result, result.head, status.get("applied_revision"), result.error,
                            result.error_kind, result.findings, duration, failures, self._restored)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "sync %s head=%s applied=%s%s", result.result, (result.head or "-")[:12],
                (result.applied or "-")[:12], f" error={result.error}" if result.error else "")
        return result

    def _sync(self, status: dict, deadline: float) -> SyncResult:
        s = self.settings
        cleanup(self.state)
        # A tampered publication is put back first, whether or not the head is valid or the remote is up;
        # if its commit is not in the clone yet (re-clone, old state dir), it is tried again after the fetch.
        try:
            self._restored, missed = self._restore_applied(status, deadline), None
        except GitError as exc:
            missed = exc
        head = self._fetch(deadline)
        status.update(remote_head=head, ref_kind=ref_kind(self.mirror.source or s.remote.ref),
                      last_fetch_at=rfc3339(time.time()))
        if missed is not None:
            self._restored = self._restore_applied(status, deadline)
        if head == status.get("applied_revision"):
            # Checked once per process and signers file, so turning verification on (or removing a
            # key) also judges what already runs.
            refused = self._untrusted(head, status, deadline)
            if refused is None and self._signers is not None:
                status["applied_signer"] = self._signer
            return refused or SyncResult("success" if self._restored else "noop", head)
        if head == self._rejected and status.get("attempted_revision") == head:
            return SyncResult("rejected", head, error=status.get("last_error"), error_kind="rejected",
                              findings=tuple(status.get("findings") or ()))
        status["attempted_revision"] = head
        refused = self._untrusted(head, status, deadline) or self._rewound(head, status, deadline)
        if refused is not None:
            return refused
        tmp = new_tmp_dir(self.state, head)
        try:
            configs: dict[str, Config] = {}
            try:
                files = self._export(head, tmp, deadline)
                findings, configs = validate(tmp, s.path, self.load)
            except UnsafeTree as exc:
                findings = [{"file": s.path, "code": UNSAFE_CODE, "path": "",
                             "message": f"commit {head[:12]} cannot be published safely: {exc}",
                             "suggestion": "commit the config as plain files; symlinks may only point at files "
                                           "of the same commit", "line": None}]
            if findings:
                return self._refuse(head, findings)
            committed = self.mirror.committed_at(head, deadline - time.monotonic())  # for the deploy-time metric
            digest = content_digest(tmp, s.path)
            sha256, pack = _config_identity(configs.get(s.path))
            final = self._publish(head, tmp, files)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self._rejected = None
        status.update(applied_signer=self._signer if self._signers is not None else None)
        status.update(applied_ref=s.remote.ref, applied_repo=s.remote.masked_url)
        status.update(applied_revision=head, applied_at=rfc3339(time.time()), applied_digest=digest,
                      applied_sha256=sha256, applied_pack=pack, applied_dir=f"revisions/{final.name}",
                      applied_committed_at=rfc3339(committed) if committed is not None else None)
        removed = prune(self.state, s.keep)
        if removed:
            log.info("pruned old revisions: %s", ", ".join(r[:12] for r in removed))
        self._published += 1
        if self._published % GC_EVERY == 0:
            self.mirror.gc(max(deadline - time.monotonic(), 10))
        return SyncResult("success", head)

    def _publish(self, sha: str, tmp: Path, files: dict[str, str]) -> Path:
        """Record the manifest, install `tmp` as `revisions/<sha>`, flip `current`, keep its commit."""
        final = self.state / REVISIONS / sha
        write_manifest(final, sha, files)
        install(self.state, tmp, sha)
        flip(self.state, final)
        self.mirror.pin(sha)
        return final

    def _restore_applied(self, status: dict, deadline: float) -> bool:
        """Put the applied revision back when `current` or its files no longer match what was published:
        reuse the kept copy if it still verifies, else re-export it from its Git objects. True if restored."""
        applied = status.get("applied_revision")
        if not applied:
            return False
        live = current_dir(self.state)
        kept = self.state / REVISIONS / applied
        try:
            if live is None or live.resolve() != kept.resolve():
                raise Tampered("`current` does not point at the applied revision" if live else "`current` is missing")
            verify(live)
            return False
        except Tampered as exc:
            log.warning("published revision %s is not what was published (%s); restoring it from Git",
                        applied[:12], exc)
        try:
            verify(kept)
            flip(self.state, kept)
            return True
        except Tampered:
            pass
        self.mirror.ensure_commit(self.settings.remote, applied, max(deadline - time.monotonic(), 1))
        tmp = new_tmp_dir(self.state, applied)
        try:
            files = self.mirror.export(applied, self.settings.path, tmp, max(deadline - time.monotonic(), 1))
            self._publish(applied, tmp, files)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return True

    def _refuse(self, head: str, findings: list[dict]) -> SyncResult:
        """A refused head: invalid config or untrusted signature; the last good revision keeps serving."""
        self._rejected = head
        first = "; ".join(f"{f['file'] + ': ' if f.get('file') else ''}{f['code']} {f['message']}"
                          for f in findings[:3])
        more = f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""
        return SyncResult("rejected", head, error=f"revision {head[:12]} refused: {first}{more}",
                          error_kind="rejected", findings=tuple(findings))

    def _untrusted(self, head: str, status: dict, deadline: float) -> SyncResult | None:
        """None when `head` may be applied (verification off, or its own signature verifies); else its refusal."""
        signers = self._current_signers(status)
        if signers is None or self._verified == (head, signers.digest):
            return None
        verdict = signers.verify(self.mirror, head, max(deadline - time.monotonic(), 1.0))
        if not verdict.ok:
            log.warning("commit %s refused: %s", head[:12], verdict.reason)
            return self._refuse(head, [verdict.finding(str(signers.path))])
        self._verified = (head, signers.digest)
        self._signer = verdict.signer.as_dict() if verdict.signer else None
        return None

    def _rewound(self, head: str, status: dict, deadline: float) -> SyncResult | None:
        """The refusal of `head` when it does not descend from the applied commit and rewinds are refused.

        Judged between heads of the same --repo and --ref: a pinned SHA names its commit itself, and
        after the operator changes the repository or the ref, the first head is the new baseline."""
        s = self.settings
        applied = status.get("applied_revision")
        if (s.on_rewind != rewind.REFUSE or not applied or s.remote.pinned
                or (status.get("applied_ref"), status.get("applied_repo")) != (s.remote.ref, s.remote.masked_url)):
            return None
        if rewind.descends(self.mirror, s.remote, applied, head, deadline):
            return None
        log.warning("commit %s refused: it does not descend from the applied revision %s (a force-push or rewind)",
                    head[:12], applied[:12])
        return self._refuse(head, [rewind.finding(head, applied)])

    def _current_signers(self, status: dict) -> TrustedSigners | None:
        """The trusted signers, re-read when the file changed (a key rotation needs no restart)."""
        if self._signers is None:
            return None
        try:
            changed = TrustedSigners.digest_of(self._signers.path) != self._signers.digest
        except SignersError:
            changed = True
        if changed:
            fresh = TrustedSigners(self._signers.path)  # SignersError: this sync fails, nothing is applied
            self._signers.close()
            self._signers, self._rejected = fresh, None
            log.info("trusted signers reloaded from %s (%d keys)", fresh.path, len(fresh.keys))
        status["verify_signers"] = self._signers.describe()
        return self._signers

    def _fetch(self, deadline: float) -> str:
        rebuilt = self.mirror.ensure()
        if rebuilt:
            log.info("sync repository at %s (re)initialised", self.mirror.path)
        try:
            return self.mirror.fetch(self.settings.remote, deadline - time.monotonic())
        except GitError as exc:
            if rebuilt or exc.kind not in ("repo", "unreachable") or self.mirror.intact():
                raise
            log.warning("sync repository is damaged (%s); re-cloning", exc)
            self.mirror.reset()
            return self.mirror.fetch(self.settings.remote, deadline - time.monotonic())

    def _export(self, head: str, tmp: Path, deadline: float) -> dict[str, str]:
        path = self.settings.path
        try:
            return self.mirror.export(head, path, tmp, deadline - time.monotonic())
        except GitError as exc:
            if exc.kind == "timeout":
                raise
            log.warning("cannot export %s (%s); re-cloning", head[:12], exc)
            shutil.rmtree(tmp, ignore_errors=True)
            self.mirror.reset()
            if self.mirror.fetch(self.settings.remote, deadline - time.monotonic()) != head:
                raise GitError("repo", "the branch moved while the clone was repaired; next run retries") from None
            return self.mirror.export(head, path, tmp, deadline - time.monotonic())


def _config_identity(config: Config | None) -> tuple[str | None, dict | None]:
    """(sha256 of the config bytes, {name, version} of its pack) for a single-file config, from its validation."""
    if config is None:
        return None, None
    return config.sha256, {"name": config.pack.name, "version": config.pack.version}


def _read_pid(state: Path) -> int | None:
    try:
        return int((state / PID).read_text().strip())
    except (OSError, ValueError):
        return None
