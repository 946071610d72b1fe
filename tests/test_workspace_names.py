"""Name validation: bad branch names, roles, run ids and base refs create nothing."""

from __future__ import annotations

import os

import pytest

from conftest_git import git, refs

from ultrawork.workspace import (BranchNameError, GitError, RunSuperproject, WorkspaceError, agent_branch,
                       validate_branch_name, validate_role, validate_run_id)
from ultrawork.workspace.names import resolve_base_ref, validate_agent_branch

pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo, run

BAD_BRANCH_NAMES = ["a..b", "-x", "a;rm -rf ~", "x.lock", "a@{b}", "a b", "a\x07b", "", "a/", "a.", "/a",
                    "a//b", "a/.hidden", "x" * 201, "a~1", "a^", "a:b", "a?b", "a*b", "a[b", "a\\b", "@", "HEAD"]


@pytest.mark.parametrize("name", BAD_BRANCH_NAMES)
def test_bad_branch_names_are_rejected(name):
    with pytest.raises(BranchNameError):
        validate_branch_name(name)


def test_bad_branch_name_creates_no_ref_and_no_directory(run, target_repo):
    refs_before, history_before = refs(target_repo), run.history()
    for name in ["a..b", "-x", "a;rm -rf ~", "x.lock", "a@{b}", "a b", "a\x07b", ""]:
        for branch in (name, f"ultrawork/run-1/{name}"):
            with pytest.raises(BranchNameError):
                run.add_agent("frontend", branch=branch)
            assert refs(target_repo) == refs_before, branch
            assert not (run.path / "agents").exists() or not os.listdir(run.path / "agents"), branch
            assert not (run.path / "plans").exists(), branch
            assert not (run.private_dir / "agents").exists(), branch
    assert run.history() == history_before
    assert git(run.path, "status", "--porcelain") == ""


def test_good_branch_names_pass():
    assert validate_branch_name("ultrawork/run-1/frontend") == "ultrawork/run-1/frontend"
    assert agent_branch("2024-05-01.nightly_3", "oracle") == "ultrawork/2024-05-01.nightly_3/oracle"


def test_agent_branches_must_stay_in_the_ultrawork_namespace(run):
    with pytest.raises(BranchNameError):
        validate_agent_branch("main")
    with pytest.raises(BranchNameError):
        run.add_agent("frontend", branch="feature/x")


@pytest.mark.parametrize("role", ["", "Frontend", "../x", "a b", "-x", "x" * 33, "a/b", "1abc", "a;b", None, 3])
def test_bad_roles(role):
    with pytest.raises(WorkspaceError):
        validate_role(role)


def test_bad_role_in_add_agent_creates_nothing(run, target_repo):
    before = run.history()
    for role in ["Frontend", "../x", "a b", "", "-rf"]:
        with pytest.raises(WorkspaceError):
            run.add_agent(role)
        assert not (run.path / "agents").exists(), role
        assert not (run.path / "plans").exists(), role
    assert run.history() == before


def test_bad_run_ids_create_no_run_directory(ultrawork_home, target_repo):
    for run_id in ["", "-x", "a/b", "../x", ".hidden", "a b", "a..b", "x.lock", "r" * 65, "a@{b}", None]:
        with pytest.raises(WorkspaceError):  # BranchNameError is a WorkspaceError
            RunSuperproject.create(run_id, target_repo, "task")
        assert not (ultrawork_home / "runs").exists() or not os.listdir(ultrawork_home / "runs"), run_id


def test_run_id_accepts_dates_and_dots():
    assert validate_run_id("2024-05-01.nightly_3") == "2024-05-01.nightly_3"


def test_bad_base_ref_creates_nothing(ultrawork_home, target_repo):
    for base in ["nonexistent", "-rf", "HEAD;ls", "main..other", "$(id)", "", "HEAD@{0}", "--output=/tmp/x"]:
        with pytest.raises(WorkspaceError):
            RunSuperproject.create("run-b", target_repo, "task", base=base)
        assert not (ultrawork_home / "runs" / "run-b").exists(), base


def test_base_ref_resolves_to_commit(target_repo):
    head = git(target_repo, "rev-parse", "HEAD")
    assert resolve_base_ref(target_repo, "HEAD") == head
    assert resolve_base_ref(target_repo, "main") == head
    tree = git(target_repo, "rev-parse", "HEAD^{tree}")
    with pytest.raises(WorkspaceError):
        resolve_base_ref(target_repo, tree)


def test_git_error_carries_argv_and_stderr(tmp_path):
    from ultrawork.workspace import run_git
    with pytest.raises(GitError) as info:
        run_git(["rev-parse", "--verify", "nope"], cwd=tmp_path)
    assert info.value.argv[0] == "git" and "rev-parse" in info.value.argv
    assert "not a git repository" in info.value.stderr
