"""The host touches agent-writable trees by descriptor only: attacks with a racer in a real sandbox.

The racer is a hostile agent's process inside a sandbox that has its Plan.md folder
mounted at /plan: it swaps an entry between a plain file and a symlink to a host file
(``renameat2(RENAME_EXCHANGE)``, atomic) as fast as it can, and a folder between a real
folder and a link to a host tree, while the host grants, walks and removes. The canary
host files must keep ``root:root 0600`` and their content.
"""

from __future__ import annotations

import ast
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from ultrawork.sandbox import agent_tree

ROOT = Path(__file__).resolve().parents[1]

# swaps /plan/<name> with /plan/.<name>-link (a symlink to the host canary), as fast as it can
RACER = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
pairs = []
for name, target in zip(sys.argv[1::2], sys.argv[2::2]):
    a, b = f"/plan/{name}", f"/plan/.{name}-link"
    if name.endswith("dir"):
        os.makedirs(a, exist_ok=True)
        for i in range(20):
            open(f"{a}/f{i}", "w").write("x")
    else:
        open(a, "w").write("decoy\n")
    os.symlink(target, b)
    pairs.append((a.encode(), b.encode()))
deadline, swaps = time.time() + float(os.environ.get("RACE_SECONDS", "12")), 0
while time.time() < deadline and not os.path.exists("/plan/.stop"):
    for a, b in pairs:
        if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0:
            swaps += 1
print("swaps", swaps, flush=True)
'''


def _canary(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("host secret\n")
    os.chown(path, 0, 0)
    os.chmod(path, 0o600)
    return path


def _unchanged(path: Path) -> bool:
    st = os.lstat(path)
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600) and path.read_text() == "host secret\n"


@pytest.fixture
def plan_sandbox(engine, sandbox_root, run_id):
    """A sandbox with a writable /plan folder (as every agent gets), and that folder."""
    from ultrawork.sandbox.spec import DEFAULT_IMAGE, Limits, Mount, SandboxSpec

    plan = agent_tree.prepare_folder(sandbox_root / "plans" / "explore", writable=True)
    spec = SandboxSpec(image=DEFAULT_IMAGE, role="explore", run_id=run_id, workspace=None, workspace_mode="ro",
                       limits=Limits(), network="none", exec_timeout=120,
                       mounts=[Mount(source=plan, target="/plan", read_only=False)])
    sandbox = engine.create(spec)
    try:
        yield sandbox, plan
    finally:
        engine.cleanup(sandbox)


def _race(engine, sandbox, targets: dict[str, str], seconds: float = 12) -> tuple[threading.Thread, dict]:
    box: dict = {}
    argv = ["python3", "-c", RACER] + [x for pair in targets.items() for x in pair]

    def run() -> None:
        box["result"] = engine.execute(sandbox, argv, seconds + 60, env={"RACE_SECONDS": str(seconds)})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.docker
def test_grants_walks_and_removals_under_a_swap_race_never_touch_host_files(engine, plan_sandbox, tmp_path):
    sandbox, plan = plan_sandbox
    canary = _canary(tmp_path / "host", "shadow")
    tree = tmp_path / "host" / "tree"
    tree_canary = _canary(tree, "inner")
    thread, box = _race(engine, sandbox, {"Plan.md": str(canary), "notes-dir": str(tree)})
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and not os.path.lexists(plan / ".notes-dir-link"):
        time.sleep(0.05)
    calls = 0
    seen_paths: set[str] = set()
    while thread.is_alive():
        agent_tree.grant(plan)
        seen_paths |= {e.rel for e in agent_tree.walk(plan)}
        agent_tree.remove_special_files(plan)
        got = agent_tree.read_bytes(plan, "Plan.md", 1024)
        assert got is None or got[0] in (b"decoy\n", b""), got
        calls += 1
    thread.join()
    swaps = int(box["result"].stdout.split()[1])
    assert swaps > 200 and calls > 10, (swaps, calls)
    assert _unchanged(canary), oct(os.lstat(canary).st_mode)
    assert _unchanged(tree_canary)
    assert not any(p.startswith("notes-dir/inner") or p.endswith("/inner") for p in seen_paths), \
        "the walk entered the host tree through a swapped folder link"


@pytest.mark.docker
def test_an_mcp_server_bound_to_the_agent_creates_sandboxes_under_the_race_without_a_grant(
        engine, sandbox_root, monkeypatch, tmp_path, run_id):
    """The attack of record: create_sandbox in a bound session while /plan entries are swapped."""
    from conftest_git import make_repo
    from ultrawork.sandbox.mcp_session import McpSession
    from ultrawork.workspace import RunSuperproject

    uw_home = sandbox_root / "uwhome"            # its runs lie in the engine's workspace roots
    (uw_home / "runs").mkdir(parents=True)
    monkeypatch.setenv("ULTRAWORK_HOME", str(uw_home))
    repo = make_repo(tmp_path / "target")
    run = RunSuperproject.create(run_id, repo, "task\n")
    ws = run.add_agent("explore")
    from ultrawork.sandbox.access import agent_sandbox_spec
    from ultrawork.sandbox.spec import DEFAULT_IMAGE, Limits

    spec = agent_sandbox_spec(ws, image=DEFAULT_IMAGE, workspace_mode="ro", network="none", limits=Limits(),
                              exec_timeout=120)
    spec.mounts = [m for m in spec.mounts if m.target == "/plan"]
    agent = engine.create(spec)
    canary = _canary(tmp_path / "host", "shadow")
    session = McpSession(engine, run, "explore")
    try:
        thread, box = _race(engine, agent, {"Plan.md": str(canary)}, seconds=120)
        time.sleep(0.5)
        created = 0
        for _ in range(3):                       # each create while the racer swaps
            made = session.create(role="explore")
            session.cleanup(made.sandbox_id)
            created += 1
        (ws.plan_path.parent / ".stop").write_text("")
        thread.join()
    finally:
        session.close()
        engine.cleanup(agent)
    assert box["result"].stdout.startswith("swaps"), box["result"]
    assert int(box["result"].stdout.split()[1]) > 100 and created == 3, (box["result"].stdout, created)
    assert _unchanged(canary), oct(os.lstat(canary).st_mode)


def test_walks_are_bounded_in_entries_and_depth_and_never_follow_links(tmp_path):
    root = tmp_path / "tree"
    deep = root
    for i in range(10):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    for i in range(30):
        (root / f"f{i}").write_text("x")
    with pytest.raises(agent_tree.TreeLimitExceeded, match="deeper than 5"):
        list(agent_tree.walk(root, max_depth=5))
    with pytest.raises(agent_tree.TreeLimitExceeded, match="more than 20"):
        list(agent_tree.walk(root, max_entries=20))
    entries = {e.rel: e for e in agent_tree.walk(root)}
    assert entries["link"].is_link and entries["link"].link == str(tmp_path)
    assert not any(rel.startswith("link/") for rel in entries)
    (root / "big").write_bytes(b"y" * 5000)
    data, more = agent_tree.read_bytes(root, "big", 100)
    assert data == b"y" * 100 and more
    assert agent_tree.read_bytes(root, "link", 100) is None
    with pytest.raises(ValueError):
        agent_tree.read_bytes(root, "../x", 10)


# -- nothing else touches an agent-writable tree by path ----------------------------------------
# Calls that walk, list, change owners or modes of, or remove a tree by path. Each place outside
# sandbox/agent_tree.py that makes one acts on a host-only tree, or runs inside a sandbox: say which.
PATH_CALLS = {"walk", "scandir", "listdir", "chown", "lchown", "chmod", "lchmod", "iterdir", "rglob", "glob",
              "rmtree", "copytree"}
HOST_ONLY = {
    "sandbox/agent_tree.py": "the one module that acts on agent-writable trees (by descriptor)",
    "sandbox/access.py:agent_file_mounts": "the agent's inbox, host-owned, each file mounted read-only",
    "ultrawork/backlog/store.py": "the backlog's own folder",
    "ultrawork/evaluation/taskset.py": "a task set's folders, copied before any run (no sandbox writes them)",
    "sandbox/disk.py:disk_dir": "$ULTRAWORK_HOME/disk, host-private",
    "sandbox/disk.py:_try_mount": "the backend probe's own scratch folder",
    "sandbox/disk.py:records": "the caps' records, host-private",
    "sandbox/disk.py:_empty_dir": "whether a host-made folder is empty before it is capped (one entry read)",
    "sandbox/disk.py:cap_folder": "the root of a capped folder the host has just mounted, before any sandbox",
    "sandbox/disk.py:move_into_cap": "a resumed agent's files moved into a new cap before its sandbox starts",
    "sandbox/image.py": "the image build's own root file system",
    "sandbox/agent_image.py": "the agent image's build context",
    "sandbox/procs.py": "/proc",
    "sandbox/mcp_bridge.py": "the bridge's own folder, mounted read-only",
    "sandbox/reaper.py:release_clones": "the host-owned git directory (the work tree goes through agent_tree)",
    "sandbox/reaper.py:reap": "runs/ and the temporary checkouts of finished runs, host-owned",
    "sandbox/reaper.py:reap_gateway_dirs": "gateway config folders, host-owned",
    "sandbox/reaper.py:_holds_anything": "agents/ itself, host-owned (each clone is read through agent_tree)",
    "sandbox/checks.py:_remove": "the check clone's host-owned git directory",
    "ultrawork/workspace/locks.py": "/proc",
    "ultrawork/workspace/clones.py": "the clone's host-owned git directory",
    "ultrawork/workspace/integration.py": "the integration's host-owned scratch clone",
    "ultrawork/workspace/remote.py": "the host-owned cache clone",
    "ultrawork/workspace/superproject.py:create": "a run folder that failed to be created (no agent yet)",
    "ultrawork/workspace/superproject.py:_discard_partial_agent": "the host-owned git and state directories",
    "ultrawork/workspace/builtin_hooks.py": "the host-owned git directory",
    "ultrawork/workspace/repo_guard.py": "the host-owned git directory (never mounted writable)",
    "ultrawork/workspace/isolation.py:host_anchor_paths": "host git directories",
    "ultrawork/workspace/isolation.py:git_metadata_snapshot": "the host-owned git directory",
    "ultrawork/gateway/gateway.py": "the gateway's config folder, host-owned",
    "ultrawork/gateway/ca.py": "the home's gateway CA folder, host-owned, mounted read-only into gateways only",
    "ultrawork/local_server": "the local server's home",
    "ultrawork/cli/runs.py": "runs/, host-owned",
    "ultrawork/model_agent/in_sandbox.py": "runs inside the sandbox",
    "ultrawork/agents/builtin_agent.py": "runs inside the sandbox",
}


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    scopes: list[tuple[int, int, str]] = [(n.lineno, n.end_lineno, n.name) for n in ast.walk(tree)
                                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PATH_CALLS \
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "agent_tree"):
            inner = [s for s in scopes if s[0] <= node.lineno <= s[1]]
            func = min(inner, key=lambda s: s[1] - s[0])[2] if inner else "<module>"
            yield node.lineno, node.func.attr, func


def test_no_module_but_agent_tree_walks_changes_or_removes_trees_by_path():
    offending = []
    for top in ("sandbox", "tasks", "flows", "blocks", "ultrawork"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, call, func in _calls(path):
                allowed = [k for k in HOST_ONLY if k == rel or k == f"{rel}:{func}" or rel.startswith(k + "/")]
                if not allowed:
                    offending.append(f"{rel}:{line} {func}() calls .{call}()")
    assert not offending, ("act on agent-writable trees through ultrawork.sandbox.agent_tree, or add the place to "
                           "HOST_ONLY saying why it is host-only:\n" + "\n".join(offending))
