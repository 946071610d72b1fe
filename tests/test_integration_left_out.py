"""An approved agent whose branch cannot be integrated, for any reason, is left out and named;
the other approved agents are integrated (as they are when a branch conflicts)."""

from __future__ import annotations

from conftest_git import git, make_repo

from ultrawork.workspace.integration import AgentBranch, integrate, integration_branch

pytest_plugins = ["conftest_git"]


def test_a_missing_and_an_unrelated_branch_are_left_out_named_and_the_others_merged(tmp_path, ultrawork_home):
    target = make_repo(tmp_path / "target")
    base = git(target, "rev-parse", "HEAD")
    git(target, "checkout", "-q", "-b", "ultrawork/r1/frontend")
    (target / "src" / "page.py").write_text("print('page')\n")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "page")
    git(target, "checkout", "-q", "--orphan", "ultrawork/r1/oracle")    # unrelated history: git refuses it
    git(target, "rm", "-rq", "--cached", ".")
    (target / "other.txt").write_text("x\n")
    git(target, "add", "other.txt")
    git(target, "commit", "-q", "-m", "unrelated")
    git(target, "checkout", "-q", "-f", "main")

    approved = [AgentBranch("explore", "ultrawork/r1/explore", target),          # no such branch
                AgentBranch("oracle", "ultrawork/r1/oracle", target),
                AgentBranch("frontend", "ultrawork/r1/frontend", target),
                AgentBranch("librarian", "ultrawork/r1/librarian", tmp_path / "gone")]   # its source is gone
    result = integrate(target, "r1", base, approved, "2026-12-07T12:00:00+00:00")

    assert result.merged == ["frontend"]
    assert result.outcome == "conflict" and result.head
    assert set(result.unmergeable) == {"explore", "oracle", "librarian"}, result.unmergeable
    assert "unrelated histories" in result.unmergeable["oracle"]
    assert all(why and len(why) <= 300 for why in result.unmergeable.values())
    merged_files = git(target, "ls-tree", "-r", "--name-only", integration_branch("r1"))
    assert "src/page.py" in merged_files and "other.txt" not in merged_files
