"""A hostile sandbox and a hostile MCP client against the host side: real Docker, real sandboxes.

A sandbox with a writable workspace races the host: it flips a link between a
folder and ``/`` while sandboxes are created from it, or swaps a folder for a
link to a host secret while it is deployed. An MCP client tries to reach other
sessions' sandboxes, another run's files and NUL-byte arguments. The reaper of
one home meets another home's containers and checkouts.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest_git import make_repo

pytestmark = pytest.mark.docker

# Runs inside a sandbox: flips /workspace/<name> between a real folder and a link to TARGET until DEADLINE.
FLIPPER = r"""
import os, sys, time
name, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.chdir("/workspace")
os.makedirs(name, exist_ok=True)
flips, ends = 0, time.monotonic() + seconds
while time.monotonic() < ends:
    os.rename(name, name + ".real")
    os.symlink(target, name)
    time.sleep(0.002)               # each state lasts a moment: a folder, then a link
    os.unlink(name)
    os.rename(name + ".real", name)
    time.sleep(0.002)
    flips += 1
print("flips", flips)
"""


def _flip_in_background(engine, sandbox, name: str, target: str, seconds: float):
    """Run the flipper in ``sandbox`` for ``seconds`` in a thread; returns (thread, result box)."""
    box: dict = {}

    def run() -> None:
        box["result"] = engine.execute(sandbox, ["python3", "-c", FLIPPER, name, target, str(seconds)],
                                       timeout=seconds + 30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _writable_workspace(engine, run_id: str, folder: Path):
    from ultrawork.sandbox import SandboxSpec
    from ultrawork.sandbox.access import grant_sandbox_access

    folder.mkdir(parents=True, exist_ok=True)
    grant_sandbox_access(folder)
    return engine.create(SandboxSpec(role="explore", run_id=run_id, workspace=folder, workspace_mode="rw"))


def _bind_sources(client, run: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": ["ultrawork.managed=true", f"ultrawork.run={run}"]},
                                  ignore_removed=True)   # one removed between the list and its inspect is gone
    return [m["Source"] for c in found for m in c.attrs.get("Mounts") or [] if m.get("Type") == "bind"]


def test_a_link_flipped_during_create_sandbox_never_mounts_outside_the_roots(engine, run_id, sandbox_root,
                                                                             docker_client, uw_home):
    from ultrawork.sandbox import SandboxPolicyError
    from ultrawork.sandbox.mcp_session import McpSession

    ws = sandbox_root / "ws"
    flipper = _writable_workspace(engine, run_id, ws)
    (ws / "steady").mkdir()
    session = McpSession(engine)
    outcomes = []
    try:
        with pytest.raises(SandboxPolicyError, match="ws is writable by the sandbox user"):
            session.create(role="frontend", workspace=str(ws / "steady"))  # a folder the sandbox could swap
        thread, box = _flip_in_background(engine, flipper, "flip", "/", seconds=6)
        time.sleep(0.5)
        for _ in range(40):
            try:
                made = session.create(role="frontend", workspace=str(ws / "flip"), workspace_mode="rw")
                outcomes.append(("created", made.workspace))
            except SandboxPolicyError as exc:
                outcomes.append(("refused", str(exc)))
        thread.join(40)
        assert box["result"].stdout.startswith("flips "), box["result"].stderr
        assert int(box["result"].stdout.split()[1]) > 100, "the sandbox really flipped the link"
        sources = _bind_sources(docker_client, session.run_id)
    finally:
        session.close()
        engine.cleanup(flipper)
    root = str(sandbox_root.resolve())
    assert all(s.startswith(root + "/") for s in sources), f"a sandbox got a mount outside the roots: {sources}"
    assert [kind for kind, _ in outcomes] == ["refused"] * 40, [o for o in outcomes if o[0] != "refused"][:3]
    assert all(text.startswith("sandbox policy rejects workspace: ") for _, text in outcomes)


def test_a_folder_swapped_for_a_link_during_deploy_never_copies_the_hosts_files(engine, run_id, sandbox_root,
                                                                                tmp_path, uw_home):
    from ultrawork.sandbox.mcp_session import McpSession

    secret_dir = tmp_path / "host-secrets"
    secret_dir.mkdir()
    marker = f"host-secret-{secrets.token_hex(8)}"
    (secret_dir / "shadow").write_text(marker + "\n")
    src = sandbox_root / "agent-src"
    attacker = _writable_workspace(engine, run_id, src)
    (src / "run.py").write_text("print('agent')\n")
    for i in range(300):                                     # copied before sub/: time for the swap to land
        (src / f"a{i:03}.txt").write_text("filler\n")
    (src / "sub").mkdir()
    (src / "sub" / "shadow").write_text("decoy\n")           # the same name as the host secret
    session = McpSession(engine)
    try:
        target = session.create(role="frontend")
        thread, box = _flip_in_background(engine, attacker, "sub", str(secret_dir), seconds=20)
        time.sleep(0.3)
        deployed, leaked = [], []
        for _ in range(30):                                  # a later deploy overwrites: look after each one
            deployed += session.deploy(target.sandbox_id, directory=str(src)).files
            found = session.execute(target.sandbox_id, ["grep", "-r", "-l", marker, "/agent"])
            if found.exit_code != 1:
                leaked.append(found.stdout)
                break
        thread.join(40)
        assert int(box["result"].stdout.split()[1]) > 100, box["result"]
        listed = session.execute(target.sandbox_id, ["cat", "/agent/run.py"])
    finally:
        session.close()
        engine.cleanup(attacker)
    assert "sub/shadow" in deployed and "run.py" in deployed, "the deploys did run"
    assert leaked == [], f"the host secret reached the sandbox: {leaked}"
    assert listed.stdout == "print('agent')\n"


def test_deploy_bounds_are_named_errors(sandbox_root):
    import io
    import tarfile

    from ultrawork.sandbox import SandboxPolicyError
    from ultrawork.sandbox.deploy_files import add_directory

    src = sandbox_root / "many"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}.txt").write_text("x" * 100)
    with tarfile.open(fileobj=io.BytesIO(), mode="w") as tar:
        with pytest.raises(SandboxPolicyError, match="more than the 10 files") as many:
            add_directory(tar, src, max_files=10)
        with pytest.raises(SandboxPolicyError, match="MiB a deploy copies") as big:
            add_directory(tar, src, max_bytes=500)
    assert many.value.field == big.value.field == "directory"


def test_an_unbound_session_sees_and_touches_only_its_own_sandboxes(engine, sandbox_root, uw_home, tmp_path,
                                                                    docker_client):
    from ultrawork.sandbox import SandboxEngine, SandboxPolicy, SandboxPolicyError
    from ultrawork.sandbox.mcp_session import McpSession
    from ultrawork.workspace import RunSuperproject

    run = RunSuperproject.create("victim-run", make_repo(tmp_path / "target"), "task\n")
    ws = run.add_agent("explore")
    # the default roots: $ULTRAWORK_HOME/runs and the extra workspace roots
    wide = SandboxEngine(SandboxPolicy(workspace_roots=[uw_home / "runs", sandbox_root]), client=docker_client)
    first, second = McpSession(wide), McpSession(wide)
    try:
        theirs = first.create(role="explore")
        assert theirs.sandbox_id not in [s.sandbox_id for s in second.list().sandboxes]
        with pytest.raises(SandboxPolicyError, match="lists only the sandboxes it created"):
            second.list(run=first.run_id)
        with pytest.raises(SandboxPolicyError, match="no sandbox .* in this MCP session"):
            second.execute(theirs.sandbox_id, ["true"])
        for path in (ws.path, run.path / "plans", run.path):
            with pytest.raises(SandboxPolicyError, match="workspace: .* ultrawork's home"):
                second.create(role="explore", workspace=str(path))
        with pytest.raises(SandboxPolicyError, match="directory: .* ultrawork's home"):
            first.deploy(theirs.sandbox_id, directory=str(ws.path))
        assert not [s for s in docker_client.containers.list(
            all=True, filters={"label": f"ultrawork.run={second.run_id}"})], "nothing was created"
    finally:
        first.close()
        second.close()


def test_nul_bytes_in_tool_arguments_are_named_errors(docker_client, sandbox_root, tmp_path):
    from test_mcp_server import McpClient, containers, server_env

    client = McpClient(server_env(tmp_path / "home", sandbox_root))
    try:
        run = client.ok("list_sandboxes")["run"]
        cases = [
            ("create_sandbox", {"role": "explore", "workspace": f"{sandbox_root}/ws\x00/etc"}, "workspace"),
            ("create_sandbox", {"role": "expl\x00ore"}, "role"),
            ("execute_in_sandbox", {"sandbox_id": "0" * 64, "argv": ["echo", "a\x00b"]}, "argv[1]"),
            ("deploy_agent_to_sandbox", {"sandbox_id": "0" * 64, "files": {"a\x00.py": "x"}}, "files['a\\x00.py']"),
            ("list_sandboxes", {"run": "r\x00"}, "run"),
        ]
        for tool, arguments, field in cases:
            message = client.error(tool, **arguments)
            assert f"SandboxPolicyError: sandbox policy rejects {field}" in message and "NUL byte" in message, \
                (tool, message)
        assert containers(docker_client, run) == []
    finally:
        client.close()


# -- the reaper stays in its own home ---------------------------------------------------------
def test_the_reaper_leaves_another_homes_checkouts_alone(tmp_path, monkeypatch):
    from ultrawork.sandbox.reaper import reap
    from ultrawork.workspace.integration import checkout_prefix

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))   # only this test's checkouts are looked at
    monkeypatch.setenv("ULTRAWORK_HOME", str(tmp_path / "home-b"))
    theirs = Path(tempfile.mkdtemp(prefix=checkout_prefix("20250101-000000-beef")))
    monkeypatch.setenv("ULTRAWORK_HOME", str(tmp_path / "home-a"))
    mine = Path(tempfile.mkdtemp(prefix=checkout_prefix("20250101-000000-cafe")))
    unknown = Path(tempfile.mkdtemp(prefix="ultrawork-integrate-20250101-000000-f00d-"))  # a run this home lacks
    report = reap(None)
    assert report.checkouts == [mine] and not mine.exists()
    assert theirs.is_dir() and unknown.is_dir()


def test_the_reaper_leaves_another_homes_and_a_live_bound_sessions_sandboxes_alone(docker_client, tmp_path,
                                                                                   monkeypatch):
    from ultrawork.sandbox import SandboxEngine, SandboxPolicy, SandboxSpec
    from ultrawork.sandbox.mcp_session import McpSession
    from ultrawork.sandbox.reaper import reap
    from ultrawork.workspace import RunSuperproject

    run_id = f"t{secrets.token_hex(5)}"
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    made = []
    try:
        monkeypatch.setenv("ULTRAWORK_HOME", str(home_b))
        engine_b = SandboxEngine(SandboxPolicy(workspace_roots=[home_b / "runs"]), client=docker_client)
        made.append(theirs := engine_b.create(SandboxSpec(role="explore", run_id=run_id)))
        monkeypatch.setenv("ULTRAWORK_HOME", str(home_a))
        run = RunSuperproject.create(run_id, make_repo(tmp_path / "target"), "task\n")
        run.add_agent("frontend")
        engine_a = SandboxEngine(SandboxPolicy(workspace_roots=[home_a / "runs"]), client=docker_client)
        made.append(stale := engine_a.create(SandboxSpec(role="oracle", run_id=run_id)))
        bound = McpSession.open(run_id, "frontend", engine=engine_a)
        kept = bound.create(role="frontend")
        made.append(kept.sandbox_id)
        report = reap(engine_a, all=True)                      # even --all stays in its own home
        alive = {c.id for c in docker_client.containers.list(all=True, filters={"label": f"ultrawork.run={run_id}"})}
        bound.close()
    finally:
        for sandbox in made:
            SandboxEngine(client=docker_client).cleanup(sandbox)
    assert [i.id for i in report.containers] == [stale.id]
    assert alive == {theirs.id, kept.sandbox_id}
