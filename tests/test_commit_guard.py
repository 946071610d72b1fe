"""What of an agent's work tree the host commits: caps and refusals, decided before git reads it."""

from __future__ import annotations

import os

import pytest

from conftest_git import git

from ultrawork.workspace.commit_guard import scan_worktree
from ultrawork.workspace.errors import DiskLimitExceeded

pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo, run

MiB = 1 << 20


def _sparse(path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)


def test_a_workspace_over_its_cap_commits_nothing_and_names_the_largest_files(run):
    ws = run.add_agent("frontend")
    ws.workspace_limit_mb, ws.file_limit_mb = 8, 4
    for n in range(3):
        _sparse(ws.path / f"part{n}.bin", 3 * MiB)     # each under the per-file cap, 9 MiB in all
    (ws.path / "src" / "app.py").write_text("print('changed')\n")
    with pytest.raises(DiskLimitExceeded) as info:
        ws.commit_changes()
    assert "over its 8.0 MiB cap" in str(info.value) and "part" in str(info.value)
    assert git(ws.path, "rev-parse", "HEAD") == run.base_sha            # nothing was committed


def test_nested_repositories_and_oversized_files_stay_out_and_are_named(run, tmp_path):
    ws = run.add_agent("frontend")
    ws.file_limit_mb = 1
    nested = ws.path / "vendor" / "lib"
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    (nested / "x.py").write_text("x = 1\n")
    _sparse(ws.path / "big.bin", 2 * MiB)
    (ws.path / "ok.txt").write_text("ok\n")
    ws.commit_changes()
    tree = git(ws.path, "ls-tree", "-r", "--name-only", "HEAD").splitlines()
    assert "ok.txt" in tree and "big.bin" not in tree
    assert not any(n.startswith("vendor") for n in tree)
    assert any("vendor/lib (a nested git repository)" in r for r in ws.refused)
    assert any(r.startswith("not committed: big.bin (2.0 MiB, over the 1.0 MiB per-file cap") for r in ws.refused)


def test_too_many_entries_is_refused(tmp_path):
    for n in range(30):
        (tmp_path / f"f{n}").write_text("")
    with pytest.raises(DiskLimitExceeded, match="more than 20 files"):
        scan_worktree(tmp_path, file_limit=MiB, total_limit=MiB, max_entries=20)
    os.unlink(tmp_path / "f0")
    assert scan_worktree(tmp_path, file_limit=MiB, total_limit=MiB).entries == 29


def test_the_integration_push_runs_none_of_the_target_repositorys_hooks(run, target_repo, tmp_path):
    """Pushing the integration branch into the target used to run the target's receive hooks
    as the orchestrating user; the target's side of the push now runs with hooks off."""
    from ultrawork.workspace.integration import AgentBranch, integrate

    ws = run.add_agent("frontend")
    (ws.path / "ok.txt").write_text("ok\n")
    ws.commit_changes()
    run.publish_branch("frontend")
    marker = tmp_path / "TARGET_HOOK_RAN"
    for hook in ("pre-receive", "update", "post-receive", "post-update", "reference-transaction"):
        path = target_repo / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        path.chmod(0o755)
    result = integrate(target_repo, run.run_id, run.base_sha,
                       [AgentBranch("frontend", ws.branch, target_repo)], when=run.meta["created_at"])
    assert result.outcome == "merged"
    assert git(target_repo, "rev-parse", result.branch) == result.head
    assert not marker.exists(), marker.read_text()


def test_a_conflicting_branch_is_left_out_and_integrating_again_after_a_fix_finishes(run, target_repo):
    """Conflicts are a state: the other approved branches are merged, the conflicting one is named
    with its files; once a person resolved it on the agent's branch, integrating again fast-forwards
    the integration branch, and a further call changes nothing."""
    from ultrawork.workspace.integration import AgentBranch, integrate

    one, two = run.add_agent("frontend"), run.add_agent("oracle")
    for ws, text in ((one, "print('one')\n"), (two, "print('two')\n")):
        (ws.path / "src" / "app.py").write_text(text)
        (ws.path / f"{ws.role}.txt").write_text("mine\n")
        ws.commit_changes()
        run.publish_branch(ws.role)
    branches = [AgentBranch(ws.role, ws.branch, target_repo) for ws in (one, two)]
    first = integrate(target_repo, run.run_id, run.base_sha, branches, when=run.meta["created_at"])
    assert first.outcome == "conflict" and first.merged == ["frontend"]
    assert first.left_out == {"oracle": ["src/app.py"]}
    assert git(target_repo, "show", f"{first.branch}:src/app.py") == "print('one')"
    assert "oracle.txt" not in git(target_repo, "ls-tree", "--name-only", first.branch)

    # a person resolves it on the oracle's branch: merges the integration branch, keeps both lines
    fix = target_repo.parent / "fix"
    git(target_repo.parent, "clone", "-q", "-b", two.branch, str(target_repo), str(fix))
    git(fix, "merge", "-q", "origin/" + first.branch, check=False)
    (fix / "src" / "app.py").write_text("print('one')\nprint('two')\n")
    git(fix, "commit", "-qam", "resolve the conflict with frontend")
    git(fix, "push", "-q", "origin", f"HEAD:{two.branch}")

    second = integrate(target_repo, run.run_id, run.base_sha, branches, when=run.meta["created_at"])
    assert second.outcome == "merged" and second.merged == ["frontend", "oracle"] and not second.left_out
    assert git(target_repo, "merge-base", "--is-ancestor", first.head, second.head, check=False) == ""
    assert git(target_repo, "show", f"{second.branch}:src/app.py") == "print('one')\nprint('two')"
    third = integrate(target_repo, run.run_id, run.base_sha, branches, when=run.meta["created_at"])
    assert third.head == second.head == git(target_repo, "rev-parse", second.branch)


@pytest.mark.docker
def test_the_repositorys_check_runs_on_the_integration_head_in_a_sandbox(run, target_repo, docker_client):
    """A failing check is a failed result (exit code and output tail); a passing one passes; the
    check's container and clone are gone afterwards either way."""
    from ultrawork.sandbox import SandboxEngine
    from ultrawork.sandbox.checks import run_check
    from ultrawork.workspace.integration import AgentBranch, integrate

    ws = run.add_agent("frontend")
    (ws.path / "ok.txt").write_text("ok\n")
    ws.commit_changes()
    run.publish_branch("frontend")
    head = integrate(target_repo, run.run_id, run.base_sha, [AgentBranch("frontend", ws.branch, target_repo)],
                     when=run.meta["created_at"]).head
    engine = SandboxEngine(client=docker_client)
    passed = run_check(engine, run, head, ["sh", "-c", "test -f ok.txt && echo checked ok.txt"], timeout=60)
    failed = run_check(engine, run, head, ["sh", "-c", "echo missing >&2; test -f missing.txt"], timeout=60)
    assert passed.passed and passed.exit_code == 0 and "checked ok.txt" in passed.output_tail
    assert not failed.passed and failed.exit_code == 1 and "missing" in failed.output_tail
    assert engine.list(run_id=run.run_id) == []
    assert not (run.path / "checks").exists()


def test_build_and_cache_outputs_stay_out_named_in_plan_and_not_counted(run):
    ws = run.add_agent("frontend")
    ws.workspace_limit_mb = 1
    for folder in ("src/__pycache__", ".pytest_cache/v", "web/node_modules/.cache/x", ".mypy_cache"):
        (ws.path / folder).mkdir(parents=True)
    _sparse(ws.path / "src/__pycache__/app.cpython-311.pyc", 3 * MiB)     # over the caps, but left out
    (ws.path / ".pytest_cache/v/lastfailed").write_text("{}")
    (ws.path / "web/node_modules/.cache/x/blob").write_text("cache")
    (ws.path / "web/node_modules/lib.js").write_text("kept\n")
    (ws.path / "old.pyc").write_bytes(b"\x00")
    (ws.path / "src" / "app.py").write_text("print('changed')\n")
    ws.commit_changes()
    tree = git(ws.path, "ls-tree", "-r", "--name-only", "HEAD").splitlines()
    assert "src/app.py" in tree and "web/node_modules/lib.js" in tree
    assert not [p for p in tree if p.endswith(".pyc") or "cache" in p], tree
    assert ws.refused == []
    plan = ws.plan_path.read_text()
    for name in ("src/__pycache__/", ".pytest_cache/", "web/node_modules/.cache/", ".mypy_cache/", "old.pyc"):
        assert name in ws.left_out and name in plan


@pytest.mark.docker
@pytest.mark.parametrize("backend", ["loop", "monitor"])
def test_a_check_that_floods_its_workspace_fails_at_its_cap(backend, run, target_repo, docker_client, monkeypatch):
    """The repository's check runs code the agents wrote: its clone is capped like an agent's work
    tree, a flood fails the check with DiskLimitExceeded, and the mount and image are gone after."""
    from ultrawork.sandbox import SandboxEngine, disk
    from ultrawork.sandbox.checks import run_check
    from ultrawork.sandbox.spec import Limits

    if backend == "monitor":
        monkeypatch.setenv(disk.BACKEND_ENV, "monitor")
    elif disk.disk_backend().kind != "loop":
        pytest.skip(disk.disk_backend().sentence())
    engine = SandboxEngine(client=docker_client)
    flood = ["sh", "-c", "dd if=/dev/zero of=/workspace/flood bs=1M count=3072 2>&1 | tail -1; true"]
    result = run_check(engine, run, run.base_sha, flood, timeout=120, limits=Limits(workspace_mb=64))
    assert not result.passed and "DiskLimitExceeded: /workspace" in result.output_tail, result.output_tail
    assert disk.record_for(run.path / "checks") is None and not os.path.ismount(run.path / "checks")
    assert engine.list(run_id=run.run_id) == []
