"""Hot reload in-process: revision detection, swap, refusal, no-op, and every watch trigger."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from gateway.control.reload import Reloader, load_snapshot, revision_of, watch_dirs
from gateway.control.runtime import Runtime
from tests.reloading import INVALID, config, started
from tests.state_dir import publish
from tests.waiting import async_wait_for

SHA_A = "a" * 40
SHA_B = "b" * 40


def test_revision_is_the_git_sha_inside_a_state_dir_else_the_file_hash(tmp_path):
    publish(tmp_path, SHA_A, config("1.0.0"))
    assert revision_of(tmp_path / "current" / "policy-config.yaml", "x") == (SHA_A, "git")
    plain = tmp_path / "plain.yaml"
    plain.write_text(config("1.0.0"))
    snap = load_snapshot(plain)
    assert (snap.revision, snap.source) == (snap.sha256, "file")


def test_watch_dirs_cover_every_symlink_along_the_path(tmp_path):
    publish(tmp_path, SHA_A, config("1.0.0"))
    dirs = watch_dirs(tmp_path / "current" / "policy-config.yaml")
    assert str(tmp_path) in dirs  # where `current` is flipped
    assert str(tmp_path / "revisions" / SHA_A) in dirs


def test_reload_swaps_refuses_invalid_and_skips_unchanged(tmp_path):
    path = tmp_path / "policy-config.yaml"
    path.write_text(config("1.0.0"))

    async def main():
        runtime = Runtime()
        reloader = Reloader(runtime, path)
        first = reloader.load_initial()
        taken = runtime.snapshot  # a request in flight keeps this object
        assert (await reloader.reload("test")).result == "noop"
        path.write_text(config("2.0.0"))
        assert (await reloader.reload("test")).result == "ok"
        assert runtime.snapshot.config.pack.version == "2.0.0" and runtime.snapshot.revision != first.revision
        assert taken.config.pack.version == "1.0.0"
        good = runtime.snapshot
        path.write_text(INVALID)
        refused = await reloader.reload("test")
        assert refused.result == "error" and refused.findings and "no-such-kind" in refused.error
        assert runtime.snapshot is good
        path.unlink()
        assert (await reloader.reload("test")).result == "error"
        assert runtime.snapshot is good

    asyncio.run(main())


@pytest.mark.parametrize("how", ["in_place", "rename", "symlink_flip", "sighup"])
def test_each_trigger_reloads(tmp_path, how):
    state = tmp_path / "state"
    if how == "symlink_flip":
        publish(state, SHA_A, config("1.0.0"))
        path = state / "current" / "policy-config.yaml"
    else:
        state.mkdir()
        path = state / "policy-config.yaml"
        path.write_text(config("1.0.0"))

    async def main():
        async with started(path, watch=how != "sighup", sighup=how == "sighup") as (runtime, _):
            if how == "in_place":
                with open(path, "r+") as fh:
                    fh.truncate(0)
                    fh.write(config("2.0.0"))
            elif how == "rename":
                (state / "tmp.yaml").write_text(config("2.0.0"))
                os.replace(state / "tmp.yaml", path)
            elif how == "symlink_flip":
                publish(state, SHA_B, config("2.0.0"))
            else:
                path.write_text(config("2.0.0"))
                os.kill(os.getpid(), signal.SIGHUP)
            await async_wait_for(lambda: runtime.snapshot.config.pack.version == "2.0.0", timeout=20)
            if how == "symlink_flip":
                assert (runtime.snapshot.revision, runtime.snapshot.source) == (SHA_B, "git")
                publish(state, "c" * 40, config("2.0.0"))  # same bytes, new commit: revision moves
                await async_wait_for(lambda: runtime.snapshot.revision == "c" * 40, timeout=20)

    asyncio.run(main())


def test_a_reload_tells_systemd_reloading_then_ready(tmp_path, monkeypatch):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    path = tmp_path / "policy-config.yaml"
    path.write_text(config("1.0.0"))

    async def main():
        reloader = Reloader(Runtime(), path)
        reloader.load_initial()
        path.write_text(INVALID)
        await reloader.reload("sighup")

    asyncio.run(main())
    first, second = sock.recv(4096).decode(), sock.recv(4096).decode()
    sock.close()
    assert first.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert second.startswith("READY=1\nSTATUS=serving reload-pack@1.0.0") and "last reload refused" in second


def test_a_gateway_may_start_before_its_first_config_and_becomes_ready_when_it_appears(tmp_path):
    from gateway.control.ops import Ops

    state = tmp_path / "state"  # nothing yet: the embedded agent's first sync is pending

    async def main():
        ops = Ops(Runtime(), str(state / "current" / "policy-config.yaml"), state_dir=tmp_path / "events")
        assert ops.load_initial(required=False) is None and not ops.runtime.ready
        assert ops.status()["reload"]["last_result"] == "error"
        await ops.start()
        try:
            publish(state, SHA_A, config("1.0.0"))
            await async_wait_for(lambda: ops.runtime.ready, timeout=20)
            assert ops.runtime.snapshot.revision == SHA_A and ops.status()["reload"]["last_result"] == "ok"
        finally:
            await ops.stop()

    asyncio.run(main())


def test_a_publish_during_a_reload_never_labels_old_bytes_with_the_new_revision(tmp_path, monkeypatch):
    import gateway.control.reload as reload_mod

    state = tmp_path / "state"
    path = state / "current" / "policy-config.yaml"
    publish(state, SHA_A, config("1.0.0"))
    real_read = reload_mod.read_config
    next_publish = [(SHA_B, "2.0.0")]

    def read_then_publish(p):  # the sync agent flips `current` right after the bytes were read
        data = real_read(p)
        if next_publish:
            sha, version = next_publish.pop()
            publish(state, sha, config(version))
        return data

    monkeypatch.setattr(reload_mod, "read_config", read_then_publish)
    snap = load_snapshot(path)  # read A, then B is published
    assert (snap.revision, snap.config.pack.version) == (SHA_A, "1.0.0")

    runtime = Runtime(snapshot=snap)
    next_publish.append(("c" * 40, "3.0.0"))
    result = asyncio.run(Reloader(runtime, path).reload("test"))  # reads B, then C is published
    assert result.result == "ok" and runtime.snapshot is not None
    assert (runtime.snapshot.revision, runtime.snapshot.config.pack.version) == (SHA_B, "2.0.0")


def _reloads(result: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("keeptrusts_config_reloads_total", {"result": result}) or 0.0


async def _write_beside(path, seconds: float = 1.5) -> None:
    """Load, not synchronisation: append to `path` every 10 ms for a while (a busy log file)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    with open(path, "a") as fh:
        while loop.time() < end:
            fh.write("log line\n")
            fh.flush()
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("layout", ["plain", "state_dir"])
def test_writes_beside_the_config_never_reload_and_a_bad_edit_is_one_error(tmp_path, layout):
    state = tmp_path / "state"
    if layout == "state_dir":
        publish(state, SHA_A, config("1.0.0"))
        path = state / "current" / "policy-config.yaml"
        beside = state / "agent.log"  # beside `current`, where the agent also rewrites status.json
    else:
        state.mkdir()
        path = state / "policy-config.yaml"
        path.write_text(config("1.0.0"))
        beside = state / "gateway.log"

    async def main():
        async with started(path, first_tick=True) as (runtime, reloader):
            before = {r: _reloads(r) for r in ("ok", "noop", "error")}
            await _write_beside(beside)
            if layout == "state_dir":
                publish(state, SHA_B, config("2.0.0"))  # a flip of `current` still reloads
            else:
                path.write_text(config("2.0.0"))
            await async_wait_for(lambda: runtime.snapshot.config.pack.version == "2.0.0", timeout=20)
            assert {r: _reloads(r) - before[r] for r in before} == {"ok": 1, "noop": 0, "error": 0}

            if layout == "state_dir":
                publish(state, "c" * 40, INVALID)  # what a hand-moved `current` could show
            else:
                path.write_text(INVALID)
            await async_wait_for(lambda: reloader.last.result == "error", timeout=20)
            await _write_beside(beside)
            if layout == "state_dir":
                publish(state, "d" * 40, config("3.0.0"))
            else:
                path.write_text(config("3.0.0"))
            await async_wait_for(lambda: runtime.snapshot.config.pack.version == "3.0.0", timeout=20)
            assert {r: _reloads(r) - before[r] for r in before} == {"ok": 2, "noop": 0, "error": 1}

    asyncio.run(main())


def test_a_configmap_style_data_link_flip_reloads_and_its_neighbours_do_not(tmp_path):
    """Kubernetes mounts a ConfigMap as `file -> ..data/file`, `..data -> ..<timestamp>`; an update
    writes a new `..<timestamp>` directory and renames a new `..data` link over the old one."""
    mount = tmp_path / "mount"
    (mount / "..2026_01").mkdir(parents=True)
    (mount / "..2026_01" / "policy-config.yaml").write_text(config("1.0.0"))
    os.symlink("..2026_01", mount / "..data")
    os.symlink("..data/policy-config.yaml", mount / "policy-config.yaml")
    path = mount / "policy-config.yaml"

    async def main():
        async with started(path, first_tick=True) as (runtime, _):
            before = _reloads("noop")
            await _write_beside(mount / "..2026_01" / "other-key.yaml", seconds=1.0)
            (mount / "..2026_02").mkdir()
            (mount / "..2026_02" / "policy-config.yaml").write_text(config("2.0.0"))
            os.symlink("..2026_02", mount / "..data_tmp")
            os.replace(mount / "..data_tmp", mount / "..data")
            await async_wait_for(lambda: runtime.snapshot.config.pack.version == "2.0.0", timeout=20)
            assert _reloads("noop") == before

    asyncio.run(main())
