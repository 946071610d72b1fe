"""A run on a repository given by URL: the worker's cache clone, branches pushed back with a lease,
and bad URLs refused before anything is created."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, run_sisyphus

TASK = ("Add the changelog.\n\n```ultrawork-edit\n"
        + json.dumps([{"path": "CHANGELOG.md", "write": "# Changes\n\n- from a remote\n"}]) + "\n```\n")


def bare_remote(tmp_path: Path) -> tuple[Path, str]:
    work = make_target_repo(tmp_path / "widgets")
    remote = tmp_path / "widgets.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(remote)], check=True)
    return remote, f"file://{remote}"


def commit_on(remote: Path, tmp_path: Path, branch: str, name: str) -> str:
    """Someone else pushes a commit to ``branch`` of the remote."""
    other = tmp_path / f"other-{uuid.uuid4().hex[:6]}"
    subprocess.run(["git", "clone", "-q", str(remote), str(other)], check=True)
    git(other, "checkout", "-q", "-B", branch)
    (other / name).write_text(name + "\n")
    git(other, "add", name)
    git(other, "-c", "user.name=Someone", "-c", "user.email=someone@example.invalid", "commit", "-q", "-m", name)
    git(other, "push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}")
    return git(other, "rev-parse", "HEAD")


@pytest.mark.parametrize("url, says", [
    ("https://user:hunter2@git.example.invalid/acme/widgets.git", "carries credentials"),
    ("https://ghp_secret@git.example.invalid/acme/widgets.git", "carries credentials"),
    ("ftp://git.example.invalid/widgets.git", "scheme 'ftp'"),
    ("http://me:hunter2@git.example.invalid/widgets.git", "carries credentials"),
    ("file://relative/widgets.git", "file:///absolute/path"),
    ("ssh://-oProxyCommand=touch${IFS}/tmp/uw-ssh-pwned/x/widgets.git", "read as an ssh option"),
    ("ssh://-oProxyCommand=touch${IFS}/tmp/uw-ssh-pwned@host/widgets.git", "read as an ssh option"),
])
def test_a_bad_repository_url_is_refused_before_anything_is_made(uw_home, url, says):
    from ultrawork.cli.request import check_request
    from ultrawork.workspace.remote import RepositoryURLError

    with pytest.raises(RepositoryURLError, match=says) as caught:
        check_request("Fix it", url, ["frontend"], "HEAD", None)
    assert "hunter2" not in str(caught.value) and "ghp_secret" not in str(caught.value)
    assert not Path("/tmp/uw-ssh-pwned").exists(), "an ssh option smuggled in the URL ran"
    assert not (uw_home / "repos").exists() or not any((uw_home / "repos").iterdir())


def test_an_unreachable_repository_url_leaves_no_cache(uw_home, tmp_path):
    from ultrawork.workspace.remote import RepositoryURLError, sync_cache

    with pytest.raises(RepositoryURLError, match="could not fetch"):
        sync_cache(f"file://{tmp_path}/nowhere.git")
    assert [p.name for p in (uw_home / "repos").iterdir() if not p.name.endswith(".lock")] == []


def test_the_cache_clone_is_made_once_then_fetched(uw_home, tmp_path):
    from ultrawork.workspace.remote import cache_path, sync_cache

    remote, url = bare_remote(tmp_path)
    cache = sync_cache(url)
    assert cache == cache_path(url) and cache.parent == uw_home / "repos"
    first = git(cache, "rev-parse", "main")
    newer = commit_on(remote, tmp_path, "main", "later.txt")
    assert newer != first
    assert sync_cache(url) == cache and git(cache, "rev-parse", "main") == newer


def test_a_branch_someone_else_moved_is_never_overwritten(uw_home, tmp_path):
    from ultrawork.workspace.integration import PushRejected
    from ultrawork.workspace.remote import LeasedPush, sync_cache

    remote, url = bare_remote(tmp_path)
    cache = sync_cache(url)
    branch = "ultrawork/lease-1/frontend"
    main = git(cache, "rev-parse", "main")
    with LeasedPush(cache, url, branch):
        git(cache, "update-ref", f"refs/heads/{branch}", main)
    assert git(remote, "rev-parse", branch) == main

    theirs = commit_on(remote, tmp_path, branch, "theirs.txt")        # moved on the remote meanwhile
    mine = git(cache, "commit-tree", "-p", main, "-m", "mine", git(cache, "rev-parse", "main^{tree}"))
    with pytest.raises(PushRejected, match="moved since this worker last saw it"):
        with LeasedPush(cache, url, branch):
            git(cache, "update-ref", f"refs/heads/{branch}", mine)
    assert git(remote, "rev-parse", branch) == theirs, "their commit is still there"
    assert git(cache, "rev-parse", branch) == main, "the cache is back to what it knew"


def test_a_run_on_a_file_url_pushes_its_branches_to_the_remote(prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.cli.runs import submit_review
    from ultrawork.workspace.remote import cache_path

    remote, url = bare_remote(tmp_path)
    run_id = f"remote-{uuid.uuid4().hex[:6]}"
    result = run_sisyphus({"task": TASK, "repo": url, "agents": ["frontend"], "run_id": run_id},
                          lambda rid: submit_review(rid, approve=["frontend"], reject=[]))
    assert result.outcome == "integrated", result.message
    assert result.target_repo == url and url in result.message
    for branch in (f"ultrawork/{run_id}/frontend", f"ultrawork/{run_id}/integration"):
        assert git(remote, "show", f"{branch}:CHANGELOG.md") == "# Changes\n\n- from a remote"
    run = json.loads((uw_home / "runs" / run_id / "run.json").read_text())
    assert run["remote"] == url and run["target_repo"] == str(cache_path(url))
    assert git(remote, "rev-parse", "main") == git(cache_path(url), "rev-parse", "main"), "main untouched"
