"""A review that frees the worker: a run from a deployment suspends for its review, its process ends,
and after the review any worker finishes it from the run's ledger -- without running an agent again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, review_state

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "ultrawork-process"
TASK = """Add a note.

```ultrawork-edit
[{"path": "NOTE.md", "write": "reviewed later\\n"}]
```
"""


def flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def children(pid: int) -> list[str]:
    """The processes ``pid`` started that still run (a process worker starts one per flow run)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return found


def wait_for(what: str, check, timeout: float, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
            pytest.fail(f"{what} did not happen within {timeout:.0f}s\n{tails}")
        time.sleep(0.5)
    return found


def test_a_deployment_run_suspended_for_review_is_finished_by_another_worker(prefect_api, uw_home, tmp_path,
                                                                           docker_client):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectAlreadyExists

    from workers import start_worker, stop_worker

    from ultrawork.cli.runs import submit_review

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"sp-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ULTRAWORK_GITHUB", "PREFECT_LOGGING"))}
    env.update({"PREFECT_API_URL": prefect_api, "ULTRAWORK_HOME": str(uw_home), "PWD": str(ROOT),
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "400"})
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass
    deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "sisyphus"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    first = start_worker("worker-a", env, logs[0])
    second = None
    try:
        run = run_deployment("sisyphus/sisyphus", timeout=0, parameters={
            "task": TASK, "repo": str(repo), "agents": ["explore", "frontend"], "run_id": run_id,
            "review_timeout": 600})
        wait_for("the review request", lambda: review_state(run_id) == "requested", 240, logs)
        state = wait_for("the suspension", lambda: (s := flow_run(run.id).state) and s.name == "Suspended" and s,
                         60, logs)
        assert state.is_paused()
        # the worker is free: the run's process has ended while the run waits for its review
        wait_for("the run's process to end", lambda: not children(first.pid), 60, logs)
        stop_worker(first)

        submit_review(run_id, ["explore", "frontend"], [], "reviewed with no worker running")
        assert flow_run(run.id).state.name != "Completed"
        second = start_worker("worker-b", env, logs[1])
        done = wait_for("the run to complete", lambda: (s := flow_run(run.id).state) and s.is_final() and s, 240, logs)
        assert done.name == "Completed", done.message
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_worker(proc)

    # the second worker finished it: the integration branch holds the approved work
    integration = f"ultrawork/{run_id}/integration"
    assert git(repo, "show", f"{integration}:NOTE.md") == "reviewed later"
    assert str(run.id) in logs[1].read_text()
    run_dir = uw_home / "runs" / run_id
    assert json.loads((run_dir / "integration.json").read_text())["merged"] == ["explore", "frontend"]
    # no agent ran again: one subflow and one sandbox per agent, one step in each Plan.md
    with get_client(sync_client=True) as client:
        agents = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{run_id}"])))
    assert sorted(r.name for r in agents if r.id != run.id) == [f"{run_id}-explore", f"{run_id}-frontend"]
    for role in ("explore", "frontend"):
        outcome = json.loads((run_dir / "outcomes" / f"{role}.json").read_text())
        assert outcome["sandboxes_created"] == 1 and outcome["round"] == 1
        assert (run_dir / "plans" / role / "Plan.md").read_text().count("### Step ") == 1
    history = git(run_dir, "log", "--format=%s").splitlines()
    assert sum(s.startswith("frontend: outcome recorded") for s in history) == 1
    assert sum(s == "review requested" for s in history) == 1
