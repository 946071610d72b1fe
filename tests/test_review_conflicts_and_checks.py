"""Before the pull request: conflicts are a state a person can resolve, and the repository's checks decide.

Whole runs on the session's Prefect server, the real engine and real git; GitHub is the local stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, run_sisyphus
from github_stub import GitHubStub

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))
TASK = "Make widgets/core.py say who wrote it."


def writes(text: str, extra: str | None = None) -> list[str]:
    """An agent command that rewrites widgets/core.py (and adds one file of its own)."""
    script = f"printf '%s\\n' '{text}' > widgets/core.py"
    if extra:
        script += f" && printf 'mine\\n' > {extra}"
    return ["sh", "-c", script]


@pytest.fixture
def two_writers(prefect_api):
    """The oracle becomes a second writer (the saved agent-profiles block every run reads), for this test only."""
    from ultrawork.blocks import AgentProfiles, RoleSettings

    AgentProfiles(oracle=RoleSettings(workspace_mode="rw")).save("default", overwrite=True)
    try:
        yield
    finally:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            doc = client.read_block_document_by_name("default", block_type_slug="ultrawork-agent-profiles")
            client.delete_block_document(doc.id)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    return subprocess.run([ULTRAWORK, *args], capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)


def approve_all(rid: str) -> None:
    from ultrawork.cli.runs import run_status, submit_review

    submit_review(rid, [a.role for a in run_status(rid, with_state=False).agents], [])


def artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(           # by its key: the session's server holds many artifacts
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key])))
    return next(a.data for a in found if a.key == key)


def test_conflicting_writers_end_in_conflict_and_integrating_after_the_fix_finishes_once(
        prefect_api, two_writers, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"cf-{uuid.uuid4().hex[:6]}"
    result = run_sisyphus({"task": TASK, "repo": str(repo), "agents": ["explore", "oracle", "frontend"],
                           "run_id": run_id,
                           "agent_commands": {"frontend": writes("frontend wrote this", "frontend.txt"),
                                              "oracle": writes("oracle wrote this", "oracle.txt")}, "review_timeout": 300},
                          approve_all)
    integration = f"ultrawork/{run_id}/integration"
    # the roles merge in the run's order: oracle first, then frontend, whose core.py conflicts
    assert result.outcome == "conflict", result.message
    assert result.merged == ["explore", "oracle"] and result.left_out == {"frontend": ["widgets/core.py"]}
    assert "widgets/core.py" in result.message and f"ultrawork integrate {run_id}" in result.message
    assert git(repo, "show", f"{integration}:widgets/core.py") == "oracle wrote this"
    assert "frontend.txt" not in git(repo, "ls-tree", "--name-only", integration)
    # what the reviewer saw: each writer's diff as an artifact
    assert "+frontend wrote this" in artifact(f"diff-{run_id}-frontend")
    assert "+oracle wrote this" in artifact(f"diff-{run_id}-oracle")

    still = cli("integrate", run_id)                       # nothing resolved yet: the same conflict
    assert still.returncode == 4 and "conflict" in still.stdout, still.stdout + still.stderr

    # a person resolves it on the frontend's branch: merges the integration branch, keeps both lines
    fix = tmp_path / "fix"
    git(tmp_path, "clone", "-q", "-b", f"ultrawork/{run_id}/frontend", str(repo), str(fix))
    subprocess.run(["git", "merge", "-q", f"origin/{integration}"], cwd=fix, capture_output=True)
    (fix / "widgets" / "core.py").write_text("oracle wrote this\nfrontend wrote this\n")
    git(fix, "-c", "user.name=P", "-c", "user.email=p@example.invalid", "commit", "-qam", "resolve")
    git(fix, "push", "-q", "origin", f"HEAD:ultrawork/{run_id}/frontend")

    first = cli("integrate", run_id)
    assert first.returncode == 0 and first.stdout.startswith("integrated"), first.stdout + first.stderr
    head = git(repo, "rev-parse", integration)
    assert git(repo, "show", f"{integration}:widgets/core.py") == "oracle wrote this\nfrontend wrote this"
    assert {"frontend.txt", "oracle.txt"} <= set(git(repo, "ls-tree", "--name-only", integration).split())
    history = (uw_home / "runs" / run_id / "integration.json").read_text()
    assert json.loads(history)["merged"] == ["explore", "oracle", "frontend"]

    again = cli("integrate", run_id)
    assert again.returncode == 0 and again.stdout.startswith("integrated"), again.stdout + again.stderr
    assert git(repo, "rev-parse", integration) == head
    subjects = git(uw_home / "runs" / run_id, "log", "--format=%s").splitlines()
    assert sum(s.startswith("integration:") for s in subjects) == 2          # the conflict, then the fix


@pytest.mark.parametrize("passing", [False, True], ids=["failing-check", "passing-check"])
def test_a_failing_check_stops_the_pull_request_and_a_passing_one_opens_it(
        passing, prefect_api, uw_home, tmp_path, docker_client, monkeypatch):
    repo = make_target_repo(tmp_path / "widgets")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "push", "-q", str(remote), "main"], cwd=repo, check=True, capture_output=True)
    run_id = f"ck-{uuid.uuid4().hex[:6]}"
    # the check reads what the agent wrote: it passes only on the integration branch's content
    expected = "frontend wrote this" if passing else "something else"
    check = ["sh", "-c", f"echo checking core.py; grep -qx '{expected}' widgets/core.py"]
    with GitHubStub(repository="acme/widgets") as stub:
        monkeypatch.setenv("ULTRAWORK_GITHUB_REPOSITORY", "acme/widgets")
        monkeypatch.setenv("ULTRAWORK_GITHUB_TOKEN", stub.token)
        monkeypatch.setenv("ULTRAWORK_GITHUB_API_URL", stub.url)
        monkeypatch.setenv("ULTRAWORK_GITHUB_PUSH_URL", str(remote))
        result = run_sisyphus({"task": TASK, "repo": str(repo), "agents": ["frontend"], "run_id": run_id,
                               "agent_commands": {"frontend": writes("frontend wrote this")},
                               "check_command": check, "review_timeout": 300}, approve_all)
        assert result.check is not None and result.check.passed is passing
        assert "checking core.py" in result.check.output_tail
        if passing:
            assert result.outcome == "integrated", result.message
            assert len(stub.pulls) == 1 and "## Checks: passed" in stub.pulls[0]["body"]
            assert result.pull_request == stub.pulls[0]["html_url"]
        else:
            assert result.outcome == "check-failed", result.message
            assert stub.pulls == [] and not any(m == "POST" for m, _ in stub.requests)
            assert subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/ultrawork/{run_id}/integration"],
                                  cwd=remote, capture_output=True).returncode != 0     # nothing pushed
    # the check's sandbox is gone
    from ultrawork.sandbox import SandboxEngine

    assert SandboxEngine().list(run_id=run_id) == []
