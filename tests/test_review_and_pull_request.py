"""Review from the CLI and the API, and the pull request against a local GitHub stand-in."""

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

TASK = """Document make_widget.

```ultrawork-edit
[{"path": "docs/guide.md", "append": "make_widget(name) returns a dict.\\n"}]
```
"""
ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ULTRAWORK, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=120)


def flow_run_state(uw_home: Path, run_id: str) -> str:
    from ultrawork.cli.runs import flow_run_state as state

    fr = json.loads((uw_home / "runs" / run_id / "orchestration.json").read_text())["flow_run_id"]
    return state(fr)


def test_review_from_cli_rejects_bad_input_and_keeps_the_run_paused(prefect_api, uw_home, tmp_path, docker_client):
    import uuid as _uuid

    from prefect.flow_runs import resume_flow_run

    from ultrawork.cli.runs import run_status, wait_for_review_form

    repo = make_target_repo(tmp_path / "widgets")
    base = git(repo, "rev-parse", "HEAD")
    run_id = f"rv-{uuid.uuid4().hex[:6]}"
    seen = {}

    def review(rid: str) -> None:
        fr = run_status(rid, with_state=False).flow_run_id
        wait_for_review_form(fr)
        bad = cli("review", rid, "--approve", "explore,wizard", "--reject", "frontend")
        seen["bad_cli"] = (bad.returncode, bad.stderr)
        incomplete = cli("review", rid, "--approve", "explore")
        seen["incomplete_cli"] = (incomplete.returncode, incomplete.stderr)
        try:  # the server itself refuses input that does not fit the form
            resume_flow_run(_uuid.UUID(fr), run_input={"explore": "approve", "intruder": "approve"})
            seen["api"] = "accepted"
        except RuntimeError as exc:
            seen["api"] = str(exc)
        seen["state_after_bad"] = flow_run_state(uw_home, rid)
        ok = cli("review", rid, "--approve", "frontend", "--reject", "explore", "--comment", "LGTM")
        seen["ok_cli"] = (ok.returncode, ok.stdout + ok.stderr)

    result = run_sisyphus({"task": TASK, "repo": str(repo), "agents": ["explore", "frontend"], "run_id": run_id},
                          review)
    assert seen["bad_cli"][0] != 0 and "wizard" in seen["bad_cli"][1] and "did not run" in seen["bad_cli"][1]
    assert seen["incomplete_cli"][0] != 0 and "frontend neither approved nor rejected" in seen["incomplete_cli"][1]
    assert seen["api"] != "accepted" and "Cannot resume" in seen["api"]
    assert seen["state_after_bad"] == "Paused"
    assert seen["ok_cli"][0] == 0, seen["ok_cli"]
    assert result.outcome == "integrated"
    assert [(v.role, v.approved, v.comment) for v in result.verdicts] == [
        ("explore", False, "LGTM"), ("frontend", True, "LGTM")]
    integration = f"ultrawork/{run_id}/integration"
    assert git(repo, "rev-list", "--no-merges", f"{base}..{integration}").split() == \
        git(repo, "rev-list", f"{base}..ultrawork/{run_id}/frontend").split()
    status = json.loads(cli("status", run_id, "--json").stdout)
    assert status["state"] == "Completed" and status["review"] == "decided" and status["integration"] == "merged"
    assert [a["outcome"] for a in status["agents"]] == ["succeeded", "succeeded"]


def test_pull_request_is_opened_once_and_the_token_stays_on_the_host(prefect_api, uw_home, tmp_path,
                                                                     docker_client, monkeypatch):
    from ultrawork.cli.runs import submit_review
    from ultrawork.workspace.github import github_target_from_env
    from ultrawork.workspace.integration import integrate, publish_pull_request, AgentBranch

    repo = make_target_repo(tmp_path / "widgets")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "push", "-q", str(remote), "main"], cwd=repo, check=True)
    run_id = f"pr-{uuid.uuid4().hex[:6]}"
    with GitHubStub(repository="acme/widgets") as stub:
        monkeypatch.setenv("ULTRAWORK_GITHUB_REPOSITORY", "acme/widgets")
        monkeypatch.setenv("ULTRAWORK_GITHUB_TOKEN", stub.token)
        monkeypatch.setenv("ULTRAWORK_GITHUB_API_URL", stub.url)
        monkeypatch.setenv("ULTRAWORK_GITHUB_PUSH_URL", str(remote))
        dump_env = ["sh", "-c", "env | sort >> /plan/Plan.md; "
                    "exec python3 /agent/builtin_agent.py explore"]
        result = run_sisyphus({"task": TASK, "repo": str(repo), "agents": ["explore", "frontend"],
                               "run_id": run_id, "agent_commands": {"explore": dump_env}},
                              lambda rid: submit_review(rid, approve=["explore", "frontend"], reject=[]))
        assert result.outcome == "integrated", result.message
        assert len(stub.pulls) == 1
        pr = stub.pulls[0]
        assert pr["head"]["ref"] == f"ultrawork/{run_id}/integration" and pr["base"]["ref"] == "main"
        assert result.pull_request == pr["html_url"]
        assert "explore" in pr["body"] and "frontend" in pr["body"]
        pushed = git(remote, "rev-parse", f"refs/heads/ultrawork/{run_id}/integration")
        assert pushed == git(repo, "rev-parse", f"ultrawork/{run_id}/integration")

        # A second integration attempt finds the same merge and the same pull request.
        from ultrawork.workspace.superproject import RunSuperproject

        run = RunSuperproject.open(run_id)
        again = integrate(run.target.path, run_id, run.base_sha,
                          [AgentBranch(r, f"ultrawork/{run_id}/{r}", run.target.path) for r in ("explore", "frontend")],
                          when=run.meta["created_at"])
        assert again.head == pushed
        ref = publish_pull_request(run.target.path, again, github_target_from_env(), "again", "again")
        assert ref.created is False and ref.number == pr["number"]
        assert len(stub.pulls) == 1

        # The token reached the stand-in (the only place it belongs) ...
        assert any(method == "POST" for method, _ in stub.requests)
        token = stub.token
    # ... and never a sandbox, a Plan.md, the run's files or the run's logs.
    env_dump = (uw_home / "runs" / run_id / "plans" / "explore" / "Plan.md").read_text()   # only Plan.md stays
    assert "HOME=/home/agent" in env_dump and token not in env_dump and "GITHUB" not in env_dump
    for path in (uw_home / "runs" / run_id).rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"token leaked into {path}"
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    seen = 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(log_filter=LogFilter(), limit=200, offset=seen)
            assert all(token not in log.message for log in page)
            seen += len(page)
            if len(page) < 200:
                break
    assert seen > 20, "the run's logs were read"
