"""Isolation: agent-written hooks, config, symlinks and host files never reach host-side git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest_git import craft_index_with_path, git

from ultrawork.workspace import StepRecord, WorkspaceEscapeError
from ultrawork.workspace.repo_guard import read_regular_file

pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo, run

STEP = StepRecord(["bash", "-c", "agent does things"], 0, 1.0, stdout="ok\n")


def _script(path: Path, canary: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ntouch {canary}\n")
    path.chmod(0o755)
    return path


def _agent_git_dir(ws, canaries: dict[str, Path]) -> Path:
    """What a hostile agent can build in its work tree: its own .git directory whose config
    names hooks, fsmonitor, a clean filter, a textconv and a signing program, all payloads."""
    evil = ws.path / ".git.evil"
    subprocess.run(["git", "init", "-q", str(evil)], check=True, env={"PATH": os.environ["PATH"],
                                                                    "GIT_CONFIG_NOSYSTEM": "1",
                                                                    "GIT_CONFIG_GLOBAL": "/dev/null"})
    gitdir = evil / ".git"
    scripts = {name: _script(ws.path / f"{name}.sh", canary) for name, canary in canaries.items()}
    for hook in ("pre-commit", "post-commit", "post-checkout", "reference-transaction"):
        _script(gitdir / "hooks" / hook, canaries["hook"])
    with open(gitdir / "config", "a") as fh:
        fh.write(f"[core]\n\tfsmonitor = {scripts['fsmonitor']}\n\thooksPath = {gitdir / 'hooks'}\n"
                 f"\tworktree = /\n[filter \"evil\"]\n\tclean = {scripts['filter']}\n"
                 f"\tsmudge = {scripts['filter']}\n[diff \"evil\"]\n\ttextconv = {scripts['textconv']}\n"
                 f"[gpg]\n\tprogram = {scripts['gpg']}\n[commit]\n\tgpgSign = true\n")
    return gitdir


def test_agent_written_git_directory_never_runs_host_side(run, tmp_path):
    """The .git takeover: the agent replaces its work tree's .git with a git directory of
    its own, with filters, fsmonitor, hooks, textconv and a signing program; attributes
    name the filter. Host git never reads it: no payload runs, the work is committed as
    written, and the .git file is put back."""
    ws = run.add_agent("frontend")
    canaries = {n: tmp_path / f"{n.upper()}_RAN" for n in ("hook", "fsmonitor", "filter", "textconv", "gpg")}
    ws.before_step(STEP.argv)
    evil = _agent_git_dir(ws, canaries)
    (ws.path / ".git").unlink()
    os.rename(evil, ws.path / ".git")
    (ws.path / ".git.evil").rmdir()
    (ws.path / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (ws.path / "src" / "app.py").write_text("print('changed')\n")

    with pytest.raises(WorkspaceEscapeError) as info:
        ws.record_step(STEP)
    assert any("agents/frontend/.git was replaced" in f for f in info.value.findings)
    assert "Safety findings (step stopped)" in ws.plan.text()

    new = ws.commit_changes()
    ws.diffstat(), ws.commits()
    run.publish_branch("frontend")
    assert len(new) == 1
    ran = [name for name, canary in canaries.items() if canary.exists()]
    assert ran == [], f"agent payloads ran on the host: {ran}"
    assert git(run.target.path, "show", f"{ws.branch}:src/app.py") == "print('changed')"  # as written
    assert (ws.path / ".git").read_text() == "gitdir: ../../.git/modules/frontend\n"  # put back
    assert ".git in the work tree" in ws.plan.text()
    names = git(run.target.path, "ls-tree", "-r", "--name-only", ws.branch).splitlines()
    assert not any(n.startswith(".git/") or n.endswith(".sh") and "hooks" in n for n in names)
    assert ws.isolation_findings() == []


def test_symlinks_out_of_the_workspace_are_reported_and_never_committed(run, tmp_path):
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
    tree = git(ws.path, "ls-tree", "-r", "HEAD").splitlines()
    assert [line.split("\t")[1] for line in tree if line.startswith("120000")] == ["inside-link"]
    assert git(ws.path, "cat-file", "-p", "HEAD:inside-link") == "src/app.py"
    assert sorted(ws.refused) == sorted(f"not committed: {p} (symlink to {t!r} outside the workspace)"
                                        for p, t in (("root-link", "/"), ("secret-link", str(secret)),
                                                     ("src/up-link", "../../../..")))
    assert "not committed: secret-link" in ws.plan.text()
    assert "TOPSECRET" not in git(ws.path, "log", "-p", "--all")
    assert secret.read_text() == "TOPSECRET\n"


def test_symlink_chain_through_in_tree_links_is_caught(run):
    ws = run.add_agent("explore")
    os.symlink(".", ws.path / "c")
    os.symlink("c/c/c/../../../..", ws.path / "sneaky")
    assert any("sneaky" in f for f in ws.isolation_findings())


def test_git_directory_changed_on_the_host_is_refused(run, tmp_path):
    """The git directory is host-owned; a symlink found in it means the host itself was
    reached: host git refuses to run there, and the target of the link is untouched."""
    ws = run.add_agent("oracle")
    host_config = tmp_path / "host-config"
    host_config.write_text("[core]\n\tbare = false\n")
    (ws.git_dir / "config").unlink()
    os.symlink(host_config, ws.git_dir / "config")
    assert any("symlink inside the git directory" in f for f in ws.isolation_findings())
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
    craft_index_with_path(ws.path, rel, blob, index=ws.git_dir / "index")
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
