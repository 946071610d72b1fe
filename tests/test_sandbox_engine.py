"""The sandbox engine on the real Docker engine: hardening, lifecycle, limits, reaping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ultrawork.sandbox import (
    ContainerGone,
    EngineUnavailable,
    ImageMissing,
    Limits,
    Mount,
    ResourceLimitExceeded,
    SandboxEngine,
    SandboxPolicy,
    SandboxSpec,
    SandboxTimeout,
)
from ultrawork.sandbox.output import OutputLog

pytestmark = pytest.mark.docker


def _workspace(root: Path, name: str = "ws") -> Path:
    ws = root / name
    ws.mkdir()
    (ws / "README.md").write_text("hello\n")
    os.chown(ws, 1000, 1000) if os.geteuid() == 0 else None
    return ws


def test_inside_the_sandbox_is_unprivileged_readonly_and_offline(engine, sandbox_root, run_id):
    ws_ro = _workspace(sandbox_root, "ro")
    sb = engine.create(SandboxSpec(role="explore", run_id=run_id, workspace=ws_ro, workspace_mode="ro"))
    try:
        assert engine.execute(sb, ["id", "-u"]).stdout.strip() not in ("", "0")
        root_write = engine.execute(sb, ["sh", "-c", "echo x > /evil"])
        assert root_write.exit_code != 0 and "Read-only file system" in root_write.stderr
        assert engine.execute(sb, ["sh", "-c", "echo x > /tmp/ok && cat /tmp/ok"]).stdout == "x\n"
        assert engine.execute(sb, ["sh", "-c", "echo x > $HOME/ok && cat $HOME/ok"]).stdout == "x\n"
        ro_write = engine.execute(sb, ["sh", "-c", "echo x > /workspace/new.txt"])
        assert ro_write.exit_code != 0 and "Read-only file system" in ro_write.stderr
        assert not (ws_ro / "new.txt").exists()
        assert engine.execute(sb, ["cat", "/workspace/README.md"]).stdout == "hello\n"
        # Only the loopback interface exists, and a routable address has no route
        # (192.0.2.1 is a documentation address: the connect fails before any packet leaves).
        assert engine.execute(sb, ["ls", "/sys/class/net"]).stdout.split() == ["lo"]
        probe = engine.execute(sb, ["python3", "-c", textwrap.dedent("""
            import socket
            try:
                socket.create_connection(("192.0.2.1", 80), timeout=3)
                print("connected")
            except OSError as e:
                print("refused", e.errno)
        """)])
        assert probe.stdout.startswith("refused"), probe
    finally:
        engine.cleanup(sb)


def test_read_write_workspace_is_seen_by_the_host(engine, sandbox_root, run_id):
    ws = _workspace(sandbox_root)
    sb = engine.create(SandboxSpec(role="frontend", run_id=run_id, workspace=ws, workspace_mode="rw"))
    try:
        res = engine.execute(sb, ["sh", "-c", "echo from-agent > /workspace/out.txt"])
        assert res.exit_code == 0, res.stderr
        assert (ws / "out.txt").read_text() == "from-agent\n"
    finally:
        engine.cleanup(sb)


def test_deploy_execute_stream_and_bounded_output(engine, sandbox_root, run_id):
    plan_dir = sandbox_root / "plan"
    plan_dir.mkdir()
    os.chown(plan_dir, 1000, 1000) if os.geteuid() == 0 else None
    sb = engine.create(SandboxSpec(role="oracle", run_id=run_id,
                                   mounts=[Mount(source=plan_dir, target="/plan", read_only=False)]))
    try:
        names = engine.deploy(sb, files={"agent.py": "print('agent ran'); open('/plan/Plan.md','a').write('found\\n')"})
        assert names == ["agent.py"]
        records: list[tuple[str, str]] = []
        res = engine.execute(sb, ["python3", "/agent/agent.py"],
                             output_log=OutputLog(lambda s, text: records.append((s, text))))
        assert res.exit_code == 0 and res.stdout == "agent ran\n"
        assert ("stdout", "agent ran") in records
        assert (plan_dir / "Plan.md").read_text() == "found\n"
        assert res.duration > 0
        big = engine.execute(sb, ["python3", "-c", "print('y' * 2_000_000)"])
        assert big.truncated and "bytes truncated" in big.stdout and len(big.stdout) < 400_000
        failing = engine.execute(sb, ["sh", "-c", "echo oops >&2; exit 3"])
        assert failing.exit_code == 3 and failing.stderr == "oops\n"
    finally:
        engine.cleanup(sb)


def test_timeout_kills_the_command_and_raises(engine, run_id):
    sb = engine.create(SandboxSpec(role="explore", run_id=run_id))
    try:
        started = time.monotonic()
        with pytest.raises(SandboxTimeout):
            engine.execute(sb, ["sh", "-c", "sleep 60 & sleep 60"], timeout=1)
        assert time.monotonic() - started < 10
        left = engine.execute(sb, ["sh", "-c", "ps -eo args | grep -c '^sleep 60' || true"])
        assert left.stdout.strip() == "0", "the timed-out command's process group must be gone"
    finally:
        engine.cleanup(sb)
    assert engine.list(run_id=run_id) == []


def test_fork_bomb_stops_at_the_pids_limit_and_host_stays_responsive(engine, run_id):
    sb = engine.create(SandboxSpec(role="explore", run_id=run_id, limits=Limits(pids=64)))
    try:
        with pytest.raises((ResourceLimitExceeded, SandboxTimeout)) as info:
            engine.execute(sb, ["sh", "-c", "f(){ f | f & }; f; sleep 5"], timeout=20)
        if isinstance(info.value, ResourceLimitExceeded):
            assert info.value.resource == "pids"
        started = time.monotonic()
        subprocess.run(["true"], check=True)
        assert time.monotonic() - started < 2, "the host must stay responsive"
        if engine.list(run_id=run_id)[0].status == "running":
            assert engine.stats(sb).pids <= 64
    finally:
        engine.cleanup(sb)
    assert engine.list(run_id=run_id) == []


def test_allocating_twice_the_memory_limit_raises(engine, run_id):
    sb = engine.create(SandboxSpec(role="explore", run_id=run_id, limits=Limits(memory_mb=64)))
    try:
        with pytest.raises(ResourceLimitExceeded) as info:
            engine.execute(sb, ["python3", "-c", "b = bytearray(128 * 1024 * 1024); print(len(b))"])
        assert info.value.resource == "memory"
    finally:
        engine.cleanup(sb)
    assert engine.list(run_id=run_id) == []


def test_stats_list_and_idempotent_cleanup(engine, run_id):
    sb = engine.create(SandboxSpec(role="librarian", run_id=run_id, limits=Limits(memory_mb=128, pids=100)))
    stats = engine.stats(sb)
    assert stats.memory_limit_bytes == 128 * 2**20 and stats.pids_limit == 100 and stats.pids >= 1
    listed = engine.list(run_id=run_id)
    assert [(i.run_id, i.role) for i in listed] == [(run_id, "librarian")]
    assert engine.cleanup(sb) is True
    assert engine.cleanup(sb) is False
    assert engine.list(run_id=run_id) == []
    with pytest.raises(ContainerGone):
        engine.execute(sb, ["true"])


def test_container_removed_from_outside_is_reported(engine, run_id, docker_client):
    sb = engine.create(SandboxSpec(role="explore", run_id=run_id))
    docker_client.api.remove_container(sb.id, force=True)     # like `docker rm -f`: its volume stays
    with pytest.raises(ContainerGone):
        engine.execute(sb, ["true"])
    # its /agent folder (a disk cap of its own) stays until the reaper finds its container gone
    from ultrawork.sandbox import disk
    from ultrawork.sandbox.reaper import SCRATCH_GRACE, reap_disk_caps

    cap = disk.record_for(disk.disk_dir() / "scratch" / next(
        c.path.name for c in disk.records() if c.key == sb.scratch))
    assert cap is not None and cap.kind == "scratch" and os.path.isdir(cap.path)
    assert cap.path not in reap_disk_caps(engine), "a container still being created keeps its folder"
    cap.created -= SCRATCH_GRACE + 1
    disk._save(cap)
    assert cap.path in reap_disk_caps(engine)
    assert not os.path.exists(cap.path) and disk.record_for(cap.path) is None
    assert cap.image is None or not cap.image.exists()


def test_reap_removes_the_sandbox_of_a_killed_process(engine, sandbox_root, run_id, tmp_path):
    live = engine.create(SandboxSpec(role="oracle", run_id=run_id))
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from ultrawork.sandbox import SandboxEngine, SandboxPolicy, SandboxSpec
        eng = SandboxEngine(SandboxPolicy(workspace_roots=[Path({str(sandbox_root)!r})]))
        sb = eng.create(SandboxSpec(role="explore", run_id={run_id!r}))
        print(sb.id, flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        orphan_id = proc.stdout.readline().strip()
        assert orphan_id
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    removed = engine.reap()
    assert orphan_id in [i.id for i in removed]
    assert live.id not in [i.id for i in removed], "a live process's sandbox is not reaped"
    assert [i.id for i in engine.list(run_id=run_id)] == [live.id]
    engine.cleanup(live)


def test_reap_older_than_and_all(engine, run_id):
    sb = engine.create(SandboxSpec(role="explore", run_id=run_id))
    assert engine.reap(older_than=3600) == []
    time.sleep(1.1)
    assert [i.id for i in engine.reap(older_than=0.5)] == [sb.id]


def test_unreachable_engine_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    with pytest.raises(EngineUnavailable) as info:
        SandboxEngine().create(SandboxSpec(role="explore", run_id="r1"))
    assert "DOCKER_HOST" in str(info.value) and "tcp://127.0.0.1:9" in str(info.value)


def test_missing_image_names_the_build_command(engine, run_id, docker_client):
    from conftest import managed_container_ids

    before = managed_container_ids(docker_client)
    with pytest.raises(ImageMissing) as info:
        engine.create(SandboxSpec(role="explore", run_id=run_id, image="ultrawork-sandbox:does-not-exist"))
    assert "ultrawork sandbox build" in str(info.value)
    assert managed_container_ids(docker_client) == before


def test_an_attached_sandbox_knows_its_agent_folder_and_passes_the_policy(engine, run_id):
    """Another process's view of a sandbox (``attach``): its /agent folder is the engine's own (named by
    its label), not a mount the policy would refuse, and removing the sandbox releases that folder."""
    from ultrawork.sandbox import disk, validate_spec

    made = engine.create(SandboxSpec(role="oracle", run_id=run_id))
    again = engine.attach(made.id)
    assert again.scratch == made.scratch and all(m.target != "/agent" for m in again.spec.mounts)
    validate_spec(again.spec, engine.policy)
    folder = next(c.path for c in disk.records() if c.key == made.scratch)
    assert engine.execute(again, ["sh", "-c", "echo x > /agent/x && cat /agent/x"]).stdout == "x\n"
    assert engine.cleanup(again) is True
    assert not os.path.exists(folder) and all(c.key != made.scratch for c in disk.records())
