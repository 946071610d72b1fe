"""Isolation: agent-written hooks, config, symlinks and host files never reach host-side git."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest_git import craft_index_with_path, git

from workspace import StepRecord, WorkspaceEscapeError
from workspace.repo_guard import read_regular_file

pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo, run

STEP = StepRecord(["bash", "-c", "agent does things"], 0, 1.0, stdout="ok\n")


def _script(path: Path, canary: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ntouch {canary}\n")
    path.chmod(0o755)
    return path


def test_agent_hooks_and_fsmonitor_never_run_host_side(run, tmp_path):
    ws = run.add_agent("frontend")
    hook_canary, fsm_canary, filter_canary = (tmp_path / n for n in ("HOOK_RAN", "FSMONITOR_RAN", "FILTER_RAN"))
    ws.before_step(STEP.argv)
    # what a malicious agent does inside its container
    _script(ws.path / ".git" / "hooks" / "post-commit", hook_canary)
    _script(ws.path / ".git" / "hooks" / "pre-commit", hook_canary)
    fsmonitor = _script(ws.path / "fsmonitor.sh", fsm_canary)
    filter_script = _script(ws.path / "clean.sh", filter_canary)
    git(ws.path, "config", "core.fsmonitor", str(fsmonitor))
    git(ws.path, "config", "filter.evil.clean", str(filter_script))
    git(ws.path, "config", "core.worktree", "/")
    (ws.path / ".gitattributes").write_text("* filter=evil\n")
    (ws.path / "src" / "app.py").write_text("print('changed')\n")

    with pytest.raises(WorkspaceEscapeError) as info:
        ws.record_step(STEP)
    findings = "\n".join(info.value.findings)
    assert ".git/hooks/post-commit was created" in findings
    assert "core.fsmonitor" in findings
    assert "filter.evil.clean" in findings
    assert "core.worktree" in findings
    plan = ws.plan.text()
    assert "Safety findings (step stopped)" in plan and "core.fsmonitor" in plan
    assert run.history()[-1] == "frontend: step 1 (exit 0) - stopped by safety hook"

    new = ws.commit_changes()
    ws.diffstat(), ws.commits()
    run.publish_branch("frontend")
    assert len(new) == 1
    assert not hook_canary.exists() and not fsm_canary.exists() and not filter_canary.exists()
    assert git(ws.path, "show", "HEAD:src/app.py") == "print('changed')"  # committed as written
    # the clone's git metadata is back at the host baseline
    assert read_regular_file(ws.path / ".git" / "config") == \
        read_regular_file(ws.state_dir / "git-config.baseline")
    assert not (ws.path / ".git" / "hooks").exists()
    assert "host reset agent-written git metadata" in ws.plan.text()
    assert ws.isolation_findings() == []


def test_symlinks_out_of_the_workspace_are_reported_and_never_followed(run, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("TOPSECRET\n")
    ws = run.add_agent("explore")
    ws.before_step(STEP.argv)
    os.symlink("/", ws.path / "root-link")
    os.symlink(str(secret), ws.path / "secret-link")
    os.symlink("../../../..", ws.path / "src" / "up-link")
    os.symlink("src/app.py", ws.path / "inside-link")  # fine: stays inside
    with pytest.raises(WorkspaceEscapeError) as info:
        ws.record_step(STEP)
    findings = info.value.findings
    assert any("root-link -> /" in f for f in findings)
    assert any("secret-link" in f for f in findings)
    assert any("up-link" in f for f in findings)
    assert not any("inside-link" in f for f in findings)
    assert "`secret-link`" in ws.plan.text()  # listed as a changed file, not read

    ws.commit_changes()
    for name, target in (("root-link", "/"), ("secret-link", str(secret)), ("inside-link", "src/app.py")):
        mode = git(ws.path, "ls-tree", "HEAD", "--", name).split()[0]
        assert mode == "120000", f"{name} was not stored as a symlink"
        assert git(ws.path, "cat-file", "-p", f"HEAD:{name}") == target
    assert "TOPSECRET" not in git(ws.path, "log", "-p", "--all")
    assert secret.read_text() == "TOPSECRET\n"


def test_symlink_chain_through_in_tree_links_is_caught(run):
    ws = run.add_agent("explore")
    os.symlink(".", ws.path / "c")
    os.symlink("c/c/c/../../../..", ws.path / "sneaky")
    assert any("sneaky" in f for f in ws.isolation_findings())


def test_git_dir_replaced_by_symlink_is_refused(run, tmp_path):
    ws = run.add_agent("oracle")
    host_config = tmp_path / "host-config"
    host_config.write_text("[core]\n\tbare = false\n")
    (ws.path / ".git" / "config").unlink()
    os.symlink(host_config, ws.path / ".git" / "config")
    assert any("symlink inside .git" in f for f in ws.isolation_findings())
    with pytest.raises(WorkspaceEscapeError):
        ws.commit_changes()
    assert host_config.read_text() == "[core]\n\tbare = false\n"


def test_writing_into_the_target_repository_is_an_escape(run, target_repo, tmp_path):
    ws = run.add_agent("frontend")
    ws.before_step(STEP.argv)
    _script(target_repo / ".git" / "hooks" / "pre-commit", tmp_path / "X")
    with pytest.raises(WorkspaceEscapeError) as info:
        ws.record_step(STEP)
    assert any("pre-commit" in f and "host file" in f for f in info.value.findings)


def test_writing_superproject_config_is_an_escape(run):
    ws = run.add_agent("frontend")
    ws.before_step(STEP.argv)
    git(run.path, "config", "core.fsmonitor", "/tmp/evil")
    with pytest.raises(WorkspaceEscapeError) as info:
        ws.record_step(STEP)
    assert any("superproject" in f and "core.fsmonitor" in f for f in info.value.findings)


def test_plan_md_replaced_by_symlink_is_not_written_through(run, tmp_path):
    ws = run.add_agent("librarian")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    ws.before_step(STEP.argv)
    ws.plan_path.unlink()
    os.symlink(victim, ws.plan_path)
    with pytest.raises(WorkspaceEscapeError):
        ws.record_step(STEP)
    assert victim.read_text() == "untouched\n"
    assert not ws.plan_path.is_symlink()
    assert "recreated by the host" in ws.plan.text() and "### Step 1" in ws.plan.text()


def test_crafted_index_cannot_make_the_host_read_outside(run, tmp_path):
    ws = run.add_agent("oracle")
    (tmp_path / "outside.txt").write_text("OUTSIDE\n")
    blob = git(ws.path, "hash-object", "-w", "--stdin")
    rel = os.path.relpath(tmp_path / "outside.txt", ws.path)
    craft_index_with_path(ws.path, rel, blob)
    assert rel in git(ws.path, "ls-files")  # the agent's index now points outside the tree
    (ws.path / "ok.txt").write_text("ok\n")
    ws.commit_changes()
    assert "OUTSIDE" not in git(ws.path, "log", "-p", "--all")
    assert git(ws.path, "ls-tree", "-r", "--name-only", "HEAD").splitlines() == ["README.md", "ok.txt", "src/app.py"]
    assert git(ws.path, "ls-files").splitlines() == ["README.md", "ok.txt", "src/app.py"]  # index rebuilt


def test_clean_step_has_no_findings_and_lists_changed_files(run):
    ws = run.add_agent("frontend")
    ws.before_step(["python", "edit.py"])
    (ws.path / "src" / "new.py").write_text("x = 1\n")
    (ws.path / "README.md").unlink()
    git(ws.path, "config", "user.name", "Agent")  # allowed config change
    report = ws.record_step(StepRecord(["python", "edit.py"], 0, 0.3))
    assert report.ok and report.ran == ["isolation-checker", "plan-updater"]
    assert "- Files changed (2): `README.md`, `src/new.py`" in ws.plan.text()


def test_repository_planted_in_the_plan_directory_is_reported_and_inert(run, tmp_path):
    ws = run.add_agent("librarian")
    plan_dir = ws.plan_path.parent
    git(plan_dir, "init", "-q")
    canary = tmp_path / "PLAN_FSMONITOR_RAN"
    git(plan_dir, "config", "core.fsmonitor", str(_script(plan_dir / "fsm.sh", canary)))
    with pytest.raises(WorkspaceEscapeError) as info:
        ws.record_step(STEP)
    assert "plan directory holds a repository: plans/librarian/.git" in info.value.findings
    assert not canary.exists()
    assert git(run.path, "ls-files", "plans").splitlines() == ["plans/librarian/Plan.md"]


@pytest.mark.timeout(60)
def test_fifos_cannot_hang_host_side_git(run):
    ws = run.add_agent("explore")
    os.mkfifo(ws.path / ".gitignore")
    (ws.path / "sub").mkdir()
    os.mkfifo(ws.path / "sub" / ".gitattributes")
    (ws.path / "sub" / "real.txt").write_text("kept\n")
    assert len(ws.commit_changes()) == 1
    assert git(ws.path, "ls-tree", "-r", "--name-only", "HEAD").splitlines() == [
        "README.md", "src/app.py", "sub/real.txt"]
    assert "special file .gitignore" in ws.plan.text()
