"""The run superproject: layout, stages, parallel agents, bad repositories, publishing."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest_git import git, make_repo, refs

from ultrawork.workspace import RunSuperproject, StepRecord, WorkspaceError

pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo, run


def test_create_records_task_and_run_metadata(run, target_repo, ultrawork_home):
    assert run.path == ultrawork_home / "runs" / "run-1"
    assert (run.path / "task.md").read_text() == "Make the app say hello.\n"
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["base_sha"] == git(target_repo, "rev-parse", "HEAD")
    assert meta["target_repo"] == str(target_repo.resolve())
    assert run.history() == ["run created"]
    assert git(run.path, "status", "--porcelain") == ""
    with pytest.raises(WorkspaceError):
        RunSuperproject.create("run-1", target_repo, "again")


def test_home_defaults_to_dot_ultrawork(monkeypatch, tmp_path):
    from ultrawork.workspace import ultrawork_home as home
    monkeypatch.delenv("ULTRAWORK_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home() == (tmp_path / ".ultrawork").resolve()


def test_agent_workspace_layout(run, target_repo):
    ws = run.add_agent("frontend", checklist=["app prints hello"])
    assert ws.path == run.path / "agents" / "frontend"
    assert ws.plan_path == run.path / "plans" / "frontend" / "Plan.md"
    assert ws.branch == "ultrawork/run-1/frontend"
    # the git directory is host-owned and outside the work tree (the sandbox mounts only the
    # work tree writable); the work tree's .git file points there, as git's own submodules do
    assert ws.git_dir == run.path / ".git" / "modules" / "frontend" and ws.git_dir.is_dir()
    assert (ws.path / ".git").read_text() == "gitdir: ../../.git/modules/frontend\n"
    assert not (ws.git_dir.stat().st_mode & 0o022)
    assert git(ws.path, "symbolic-ref", "HEAD") == "refs/heads/ultrawork/run-1/frontend"
    assert git(ws.path, "rev-parse", "HEAD") == run.base_sha
    assert (ws.path / "src" / "app.py").read_text() == "print('hi')\n"
    assert git(run.path, "config", "--file", ".gitmodules", "submodule.frontend.branch") == ws.branch
    assert git(run.path, "config", "--file", ".gitmodules", "submodule.frontend.path") == "agents/frontend"
    assert git(run.path, "config", "--file", ".gitmodules", "submodule.frontend.url") == str(target_repo.resolve())
    assert run.history() == ["run created", "frontend: workspace created", "frontend: plan created"]
    assert git(run.path, "status", "--porcelain") == ""
    # a submodule as `git submodule add` makes it: its commit pinned, initialized, on its branch
    assert git(run.path, "ls-tree", "HEAD", "agents/frontend").split()[:3] == ["160000", "commit", run.base_sha]
    assert git(run.path, "submodule", "status").startswith(f" {run.base_sha} agents/frontend ")  # " ": initialized
    # the branch lives in the clone only until it is published
    assert "refs/heads/ultrawork/run-1/frontend" not in refs(target_repo)
    # objects are copied, never hard-linked with the user's repository
    obj = next(p for p in (ws.git_dir / "objects").rglob("*") if p.is_file() and len(p.parent.name) == 2)
    assert obj.stat().st_nlink == 1


def test_open_and_agent_reopen(run):
    run.add_agent("oracle")
    again = RunSuperproject.open("run-1")
    assert again.roles() == ["oracle"]
    ws = again.agent("oracle")
    assert ws.branch == "ultrawork/run-1/oracle"
    with pytest.raises(WorkspaceError):
        again.agent("nobody")
    with pytest.raises(WorkspaceError):
        RunSuperproject.open("no-such-run")
    with pytest.raises(WorkspaceError):
        again.add_agent("oracle")


def test_twenty_agents_in_parallel(run):
    roles = [f"agent{i:02d}" for i in range(20)]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        workspaces = list(pool.map(lambda role: run.add_agent(role, checklist=["done"]), roles))
    elapsed = time.monotonic() - start
    status = git(run.path, "submodule", "status").splitlines()
    listed = sorted(line.split()[1] for line in status)
    assert listed == [f"agents/{r}" for r in roles]
    assert all(line.startswith(" ") for line in status)  # initialised and at the recorded commit
    branches = {git(ws.path, "symbolic-ref", "--short", "HEAD") for ws in workspaces}
    assert branches == {f"ultrawork/run-1/{r}" for r in roles}
    history = run.history()
    assert len(history) == 1 + 2 * 20
    assert sorted(h for h in history if h.endswith("workspace created")) == \
        sorted(f"{r}: workspace created" for r in roles)
    assert git(run.path, "status", "--porcelain") == ""
    assert git(run.path, "fsck", "--no-progress") == ""
    print(f"20 agents in {elapsed:.2f}s")


def test_parallel_agents_full_lifecycle_keeps_one_consistent_history(run):
    roles = [f"agent{i}" for i in range(6)]

    def lifecycle(role):
        ws = run.add_agent(role)
        for n in range(2):
            ws.before_step(["python", "work.py"])
            (ws.path / f"{role}-{n}.txt").write_text(f"{role} {n}\n")
            ws.record_step(StepRecord(["python", "work.py"], 0, 0.1))
        ws.commit_changes()
        ws.finalize("succeeded")
        return ws
    with ThreadPoolExecutor(max_workers=6) as pool:
        workspaces = list(pool.map(lifecycle, roles))
    history = run.history()
    assert len(history) == 1 + 6 * 6
    for ws in workspaces:
        own = [h for h in history if h.startswith(f"{ws.role}:")]
        assert own == [f"{ws.role}: workspace created", f"{ws.role}: plan created", f"{ws.role}: step 1 (exit 0)",
                       f"{ws.role}: step 2 (exit 0)", f"{ws.role}: changes committed (1 new commit(s))",
                       f"{ws.role}: finalized (succeeded)"]
        assert run.recorded_commit(ws.role) == git(ws.path, "rev-parse", "HEAD")
        assert git(run.path, "show", f"HEAD:plans/{ws.role}/Plan.md") == ws.plan.text().rstrip("\n")
        assert ws.plan.summary().steps == 2
    assert git(run.path, "status", "--porcelain") == ""


def test_not_a_git_repository(ultrawork_home, tmp_path, target_repo):
    plain = tmp_path / "plain"
    plain.mkdir()
    for repo in (plain, tmp_path / "missing", target_repo / "src"):
        with pytest.raises(WorkspaceError):
            RunSuperproject.create("r", repo, "task")
    assert not (ultrawork_home / "runs" / "r").exists()


@pytest.mark.parametrize("gitmodules", [
    '[submodule "../../evil"]\n\tpath = lib\n\turl = https://example.invalid/lib.git\n',
    '[submodule "lib"]\n\tpath = ../outside\n\turl = https://example.invalid/lib.git\n',
    '[submodule "lib"]\n\tpath = /etc\n\turl = https://example.invalid/lib.git\n',
    '[submodule "lib"]\n\tpath = -x\n\turl = https://example.invalid/lib.git\n',
    '[submodule "lib"]\n\tpath = lib\n\turl = --upload-pack=touch /tmp/pwned\n',
    '[submodule "lib"]\n\tpath = lib\n\turl = ext::sh -c touch% /tmp/pwned\n',
    '[submodule "lib"]\n\tpath = lib\n\turl = ssh://-oProxyCommand=touch/x\n',
    '[submodule "lib"]\n\tpath = lib/.git/hooks\n\turl = https://example.invalid/lib.git\n',
    '[submodule "lib"]\n\tpath = lib\n\turl = https://example.invalid/lib.git\n\tupdate = !touch /tmp/pwned\n',
])
def test_malicious_gitmodules_refused(ultrawork_home, tmp_path, gitmodules):
    repo = make_repo(tmp_path / "evil", {"README.md": "x\n", ".gitmodules": gitmodules})
    with pytest.raises(WorkspaceError, match="gitmodules"):
        RunSuperproject.create("r", repo, "task")
    assert not (ultrawork_home / "runs" / "r").exists()


def test_ordinary_gitmodules_accepted(ultrawork_home, tmp_path):
    repo = make_repo(tmp_path / "ok", {"README.md": "x\n", ".gitmodules":
                                       '[submodule "lib"]\n\tpath = vendor/lib\n\turl = ../lib.git\n'})
    run = RunSuperproject.create("r", repo, "task")
    assert run.add_agent("explore").path.is_dir()


def test_publish_branch_into_target(run, target_repo):
    canary = target_repo.parent / "REFTX_CANARY"
    hook = target_repo / ".git" / "hooks" / "reference-transaction"
    hook.write_text(f"#!/bin/sh\ntouch {canary}\n")
    hook.chmod(0o755)
    ws = run.add_agent("frontend")
    (ws.path / "src" / "app.py").write_text("print('hello')\n")
    ws.record_step(StepRecord(["python", "edit.py"], 0, 0.1))
    new = ws.commit_changes()
    sha = run.publish_branch("frontend")
    assert sha == new[-1]
    assert git(target_repo, "rev-parse", "refs/heads/ultrawork/run-1/frontend") == sha
    assert git(target_repo, "show", f"{sha}:src/app.py") == "print('hello')"
    assert not canary.exists(), "host-side fetch ran a hook of the target repository"
    # idempotent, and a later commit moves the published branch
    (ws.path / "NOTES.md").write_text("more\n")
    second = ws.commit_changes()
    assert run.publish_branch("frontend") == second[-1]


def test_stage_commits_for_a_whole_agent_lifecycle(run):
    ws = run.add_agent("librarian")
    for n in range(2):
        ws.before_step(["python", f"step{n}.py"])
        (ws.path / f"out{n}.txt").write_text(f"{n}\n")
        ws.record_step(StepRecord(["python", f"step{n}.py"], n, 0.2, stdout=f"step {n}\n"))
    commits = ws.commit_changes()
    ws.finalize("succeeded", errors=["step 1 exited 1"], recoveries=["retried step 1"])
    assert run.history() == [
        "run created", "librarian: workspace created", "librarian: plan created",
        "librarian: step 1 (exit 0)", "librarian: step 2 (exit 1)",
        "librarian: changes committed (1 new commit(s))", "librarian: finalized (succeeded)"]
    pinned = run.recorded_commit("librarian")
    assert pinned == commits[-1] == git(ws.path, "rev-parse", "HEAD")
    author = git(ws.path, "log", "-1", "--format=%an <%ae>")
    assert author == "ultrawork-librarian <librarian@run-1.ultrawork.invalid>"
    assert git(ws.path, "status", "--porcelain") == ""
    assert [c.sha for c in ws.commits()] == commits
    assert "out0.txt" in ws.diffstat() and "out1.txt" in ws.diffstat()
    assert git(run.path, "status", "--porcelain") == ""


def test_commit_changes_keeps_agent_commits_and_detached_heads(run):
    ws = run.add_agent("oracle")
    (ws.path / "a.txt").write_text("a\n")
    git(ws.path, "add", "a.txt")
    git(ws.path, "commit", "-q", "-m", "agent commit")
    git(ws.path, "checkout", "-q", "--detach")
    (ws.path / "b.txt").write_text("b\n")
    new = ws.commit_changes()
    assert len(new) == 2
    assert git(ws.path, "symbolic-ref", "HEAD") == f"refs/heads/{ws.branch}"
    assert [c.subject for c in ws.commits()][0] == "agent commit"
    assert ws.commit_changes() == []  # nothing new


def test_setup_failure_cleans_up(run, monkeypatch):
    from ultrawork.workspace import clones

    def broken_clone(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr("ultrawork.workspace.builtin_hooks.clone_on_branch", broken_clone)
    with pytest.raises(Exception, match="disk full"):
        run.add_agent("explore")
    assert not (run.path / "agents" / "explore").exists()
    assert not (run.path / "plans" / "explore").exists()
    monkeypatch.setattr("ultrawork.workspace.builtin_hooks.clone_on_branch", clones.clone_on_branch)
    assert run.add_agent("explore").path.is_dir()
    assert os.listdir(run.path / "agents") == ["explore"]


def test_bare_target_repository(ultrawork_home, tmp_path, target_repo):
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(target_repo), str(bare))
    run = RunSuperproject.create("bare-run", bare, "task")
    ws = run.add_agent("explore")
    (ws.path / "x").write_text("x\n")
    ws.commit_changes()
    assert run.publish_branch("explore") == git(bare, "rev-parse", "refs/heads/ultrawork/bare-run/explore")


def test_paths_are_strings_or_paths(ultrawork_home, target_repo):
    run = RunSuperproject.create("str-path", str(target_repo), "task")
    assert isinstance(run.target.path, Path)


def test_failed_submodule_commit_leaves_the_shared_index_clean(run, monkeypatch):
    from ultrawork.workspace import GitError
    run.add_agent("oracle")
    original = type(run)._git

    def failing(self, args, **kwargs):
        if args[:1] == ["commit"] and "explore: workspace created" in args:
            raise GitError(["git", *args], 1, "simulated failure")
        return original(self, args, **kwargs)
    monkeypatch.setattr(type(run), "_git", failing)
    with pytest.raises(GitError, match="simulated"):
        run.add_agent("explore")
    monkeypatch.setattr(type(run), "_git", original)
    assert git(run.path, "status", "--porcelain") == ""
    assert run.roles() == ["oracle"]
    assert not (run.path / "agents" / "explore").exists()
    run.add_agent("explore")
    assert run.roles() == ["explore", "oracle"]
    assert git(run.path, "status", "--porcelain") == ""


def _committed_paths(repo: Path) -> list[str]:
    return sorted(git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", "HEAD").splitlines())


def test_each_stage_commit_holds_exactly_its_paths(run):
    ws = run.add_agent("explore")
    ws.plan.append_note("first note", kind="recovery")
    (run.path / "task.md").write_text("edited by hand\n")          # tracked, changed, not part of the stage
    run.commit_stage("explore: noted", [ws.plan_path])
    assert run.history()[-1] == "explore: noted"
    assert _committed_paths(run.path) == ["plans/explore/Plan.md"]
    ws.plan.append_note("second note", kind="recovery")             # the same path again (tracked now)
    run.commit_stage("explore: noted again", [ws.plan_path])
    assert _committed_paths(run.path) == ["plans/explore/Plan.md"]
    assert "second note" in git(run.path, "show", "HEAD:plans/explore/Plan.md")
    assert git(run.path, "status", "--porcelain", "--ignore-submodules=all") == " M task.md"

    new = run.path / "stages" / "extra.json"                        # a new file is staged, then committed
    new.parent.mkdir()
    new.write_text("{}\n")
    run.commit_stage("extra recorded", [new])
    assert _committed_paths(run.path) == ["stages/extra.json"]
    new.unlink()                                                    # a removal is a stage too
    run.commit_stage("extra removed", [new])
    assert _committed_paths(run.path) == ["stages/extra.json"]
    assert "stages/extra.json" not in git(run.path, "ls-tree", "-r", "--name-only", "HEAD").splitlines()


def test_a_stage_commit_of_a_path_git_no_longer_tracks_still_lands(run):
    ws = run.add_agent("oracle")
    run.commit_stage("oracle: noted", [ws.plan_path])                # this process now knows the path
    git(run.path, "rm", "-q", "--cached", "plans/oracle/Plan.md")     # ...which git stops tracking
    git(run.path, "commit", "-q", "-m", "untracked by hand")
    ws.plan.append_note("after the hand edit", kind="recovery")
    run.commit_stage("oracle: noted again", [ws.plan_path])
    assert run.history()[-1] == "oracle: noted again"
    assert "after the hand edit" in git(run.path, "show", "HEAD:plans/oracle/Plan.md")


def test_submodules_of_a_repository_whose_path_needs_quoting(ultrawork_home, tmp_path):
    target = make_repo(tmp_path / 'we"ird \\ dir #;x\tend')
    run = RunSuperproject.create("odd-path", target, "task")
    for role in ("explore", "oracle"):
        run.add_agent(role)
    assert run.roles() == ["explore", "oracle"]
    assert RunSuperproject.open("odd-path").agent("oracle").branch == "ultrawork/odd-path/oracle"
    for role in ("explore", "oracle"):
        assert git(run.path, "config", "--file", ".gitmodules", f"submodule.{role}.url") == str(target.resolve())
        assert git(run.path, "config", f"submodule.{role}.url") == str(target.resolve())
    assert git(run.path, "status", "--porcelain") == ""
    assert git(run.path, "submodule", "status").count(" agents/") == 2
