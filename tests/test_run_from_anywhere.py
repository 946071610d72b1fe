"""status, diff and review of a run from another home (another machine) that reaches the same Prefect
server: the run's superproject is not there, so everything is read through Prefect."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flowkit import FlowThread, git, make_target_repo, review_state

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))
ADDED = "written by the frontend agent"
TASK = (f"Add notes/hello.txt.\n\n```ultrawork-edit\n"
        f"{json.dumps([{'path': 'notes/hello.txt', 'write': ADDED + chr(10)}])}\n```\n")


def elsewhere(home: Path, api: str, *args: str) -> subprocess.CompletedProcess:
    """The real command in another home: nothing of the run on its disk, only the Prefect server."""
    env = {**os.environ, "ULTRAWORK_HOME": str(home), "PREFECT_API_URL": api, "TERM": "dumb"}
    return subprocess.run([ULTRAWORK, *args], capture_output=True, text=True, env=env, timeout=180)


def test_a_run_is_watched_diffed_and_reviewed_from_another_home(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"fa-{uuid.uuid4().hex[:6]}"
    other = tmp_path / "other-home"
    other.mkdir()
    flow = FlowThread({"task": TASK, "repo": str(repo), "agents": ["explore", "frontend"], "run_id": run_id,
                       "review_timeout": 300})
    flow.start()
    try:
        flow_run_id = flow.wait_for_review()

        shown = elsewhere(other, prefect_api, "status", run_id, "--json")
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert status["run_id"] == run_id and status["flow_run_id"] == flow_run_id
        assert status["state"] == "Paused" and status["review"] == "requested"
        assert "another machine" in status["path"] and status["task"] == "Add notes/hello.txt."
        assert {a["role"]: a["outcome"] for a in status["agents"]} == {"explore": "succeeded",
                                                                      "frontend": "succeeded"}

        diff = elsewhere(other, prefect_api, "diff", run_id)
        assert diff.returncode == 0, diff.stderr
        assert f"+{ADDED}" in diff.stdout and "notes/hello.txt" in diff.stdout
        assert f"explore: no change on ultrawork/{run_id}/explore; its findings:" in diff.stdout
        here = elsewhere(uw_home, prefect_api, "diff", run_id)        # the run's own home reads its superproject
        assert f"+{ADDED}" in here.stdout and "its findings:" in here.stdout and "no Plan.md" not in here.stdout
        one = elsewhere(other, prefect_api, "diff", run_id, "frontend")
        assert f"+{ADDED}" in one.stdout and "explore" not in one.stdout

        resume = elsewhere(other, prefect_api, "resume", run_id)       # its records are in home A only
        assert resume.returncode == 1 and "Traceback" not in resume.stderr, resume.stderr
        assert f"run {run_id} is waiting for its review (Paused)" in resume.stderr, resume.stderr

        review = elsewhere(other, prefect_api, "review", run_id, "--approve-all")
        assert review.returncode == 0, review.stderr
        assert f"run {run_id} resumed: approved explore, frontend" in review.stdout
    finally:
        if flow.is_alive() and review_state(run_id) == "requested":   # not reviewed from elsewhere: end it here
            from ultrawork.cli.runs import submit_review

            try:
                submit_review(run_id, [], ["explore", "frontend"], wait=5)
            except Exception:  # noqa: BLE001 - the run was reviewed after all
                pass
        result = flow.wait(240)
    assert result.outcome == "integrated", result.message
    assert git(repo, "show", f"ultrawork/{run_id}/integration:notes/hello.txt") == ADDED
    assert not (other / "runs").exists()          # nothing of the run was made in the other home

    done = json.loads(elsewhere(other, prefect_api, "status", run_id, "--json").stdout)
    assert (done["state"], done["review"], done["integration"]) == ("Completed", "decided", "integrated")
    resume = elsewhere(other, prefect_api, "resume", run_id)
    assert resume.returncode == 1 and f"run {run_id} is finished (integrated:" in resume.stderr, resume.stderr


def test_a_deployment_run_suspended_on_a_worker_is_reviewed_from_another_home(prefect_api, tmp_path, docker_client):
    """The worker has its own home; the reviewer's home has nothing of the run: the review form's
    suspension is seen, the diff read and the review sent through Prefect, and the worker finishes the run."""
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled

    from workers import PREFECT, ROOT, api_client, create_pool, remove_sandboxes, start_worker, stop_worker, worker_env

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"fd-{uuid.uuid4().hex[:6]}"
    worker_home, other = tmp_path / "worker-home", tmp_path / "other-home"
    worker_home.mkdir()
    other.mkdir()
    env = worker_env(prefect_api, worker_home, os.environ["PREFECT_API_AUTH_STRING"])
    create_pool()
    deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "sisyphus"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    worker = start_worker("anywhere-worker", env, tmp_path / "worker.log", limit=1)
    flow_run = None
    try:
        flow_run = run_deployment("sisyphus/sisyphus", timeout=0, parameters={
            "task": TASK, "repo": str(repo), "agents": ["explore", "frontend"], "run_id": run_id,
            "review_timeout": 600})
        deadline = time.monotonic() + 240
        while (status := elsewhere(other, prefect_api, "status", run_id, "--json")).returncode != 0 or \
                json.loads(status.stdout)["state"] != "Suspended":
            assert time.monotonic() < deadline, (status.stdout, status.stderr,
                                                 (tmp_path / "worker.log").read_text()[-3000:])
            time.sleep(1)
        shown = json.loads(status.stdout)
        assert shown["flow_run_id"] == str(flow_run.id) and shown["review"] == "requested"
        assert {a["role"]: a["outcome"] for a in shown["agents"]} == {"explore": "succeeded", "frontend": "succeeded"}
        assert f"+{ADDED}" in elsewhere(other, prefect_api, "diff", run_id, "frontend").stdout

        resume = elsewhere(other, prefect_api, "resume", run_id)       # the worker's home holds its records
        assert resume.returncode == 1 and f"run {run_id} is waiting for its review (Suspended)" in resume.stderr, \
            resume.stderr

        review = elsewhere(other, prefect_api, "review", run_id, "--approve", "frontend", "--reject", "explore")
        assert review.returncode == 0, review.stderr
        deadline = time.monotonic() + 240
        with api_client() as client:
            while not (state := client.read_flow_run(flow_run.id).state).is_final():
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(1)
        assert state.name == "Completed", state.message
    finally:
        stop_worker(worker)
        if flow_run is not None:
            with api_client() as client:
                if not client.read_flow_run(flow_run.id).state.is_final():
                    client.set_flow_run_state(flow_run.id, Cancelled(message="the test ended"), force=True)
                client.delete_deployment(client.read_deployment_by_name("sisyphus/sisyphus").id)
        remove_sandboxes(docker_client, [worker_home])
    assert git(repo, "show", f"ultrawork/{run_id}/integration:notes/hello.txt") == ADDED
    assert (worker_home / "runs" / run_id).is_dir() and not (other / "runs").exists()
    done = json.loads(elsewhere(other, prefect_api, "status", run_id, "--json").stdout)
    assert (done["state"], done["review"], done["integration"]) == ("Completed", "decided", "integrated")
    resume = elsewhere(other, prefect_api, "resume", run_id)
    assert resume.returncode == 1 and f"run {run_id} is finished (integrated:" in resume.stderr, resume.stderr


def test_a_run_nowhere_is_a_clear_error(prefect_api, tmp_path):
    other = tmp_path / "other-home"
    other.mkdir()
    for args in (["status", "nope-123"], ["diff", "nope-123"], ["review", "nope-123", "--approve-all"],
                 ["resume", "nope-123"]):
        shown = elsewhere(other, prefect_api, *args)
        assert shown.returncode == 1, (args, shown.stdout, shown.stderr)
        assert f"no run 'nope-123' here ({other / 'runs'}) nor on the Prefect server {prefect_api}" in shown.stderr
        assert "Traceback" not in shown.stderr + shown.stdout


def test_a_crashed_run_of_another_machine_is_resumed_there(prefect_api, tmp_path):
    """Its records are in the home of the machine that ran it: the command says so and changes nothing."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    @flow(name="sisyphus")
    def sisyphus_elsewhere() -> None:
        pass

    run_id = f"gone-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(sisyphus_elsewhere, name=run_id, tags=[f"run:{run_id}"])
        client.set_flow_run_state(flow_run.id, Crashed(message="its worker died"), force=True)
    other = tmp_path / "other-home"
    other.mkdir()
    shown = elsewhere(other, prefect_api, "resume", run_id)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr, shown.stderr
    assert f"run {run_id} ran on another machine" in shown.stderr and "resume it there (state now: Crashed)" \
        in shown.stderr, shown.stderr
    assert not (other / "runs").exists()


def test_a_stopped_deployment_run_is_started_again_from_another_home(prefect_api, tmp_path):
    """``resume --again``: the task runs again from the start as a new run of the same deployment."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.states import Crashed

    @flow(name="sisyphus")
    def sisyphus_elsewhere(task: str, repo: str, run_id: str | None = None, resume: bool = False) -> None:
        pass

    run_id = f"died-{uuid.uuid4().hex[:6]}"
    url = (tmp_path / "widgets.git").as_uri()
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(flow_id=client.create_flow(sisyphus_elsewhere),
                                                 name=f"again-{run_id}")
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"task": "Fix it", "repo": url, "run_id": run_id}, name=run_id,
            tags=["ultrawork", f"run:{run_id}"])
        client.set_flow_run_state(flow_run.id, Crashed(message="its worker died"), force=True)
    other = tmp_path / "other-home"
    other.mkdir()
    try:
        told = elsewhere(other, prefect_api, "resume", run_id)
        assert told.returncode == 1 and f"ultrawork resume {run_id} --again" in told.stderr, told.stderr
        again = elsewhere(other, prefect_api, "resume", run_id, "--again")
        assert again.returncode == 0, again.stderr
        new_id = re.search(r"started again from the start as run (\S+)", again.stdout).group(1)
        with get_client(sync_client=True) as client:
            (new,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": [new_id]}))
            assert new.deployment_id == deployment_id and new.state.is_scheduled()
            assert new.parameters == {"task": "Fix it", "repo": url, "run_id": new_id, "resume": False}
            assert "ultrawork" in new.tags and f"run:{run_id}" not in new.tags
        assert not (other / "runs").exists()
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
