"""`prefect deploy --all`, two process workers, and the nightly sweep started with `prefect deployment run`:
4 issues -> 4 Sisyphus runs spread over both workers -> each pauses for review -> the test reviews ->
every issue ends in the state its review decided; bad issues are skipped with the reason."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ultrawork.backlog import FileBacklog
from flowkit import git, make_target_repo
from workers import (Reviewer, SweepFailed, Worker, create_pool, deploy, edit_task, flow_run_state,
                     remove_deployments, run_sweep, worker_env)

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

# issue -> the review it gets (approve or reject the frontend agent) -> the state it must end in
DECISIONS = {"alpha": ("approve", "accepted"), "beta": ("reject", "define"),
             "gamma": ("approve", "accepted"), "delta": ("reject", "define")}


def make_backlog(root: Path, repo: Path) -> FileBacklog:
    root.mkdir()
    backlog = FileBacklog(root)
    for name in DECISIONS:
        backlog.create(name, title=f"Add {name}.txt", repo=str(repo), task=edit_task(f"{name}.txt", f"{name}\n"),
                       agents=["frontend"])
    backlog.apply(backlog.create("shaping", title="not ready", repo=str(repo), task="Think"), "start", actor="alice")
    backlog.create("no-repo", title="where?", task="Fix it")                  # the claim guard refuses it
    for name, text in {"broken": "title: [oops\n", "odd-state": "title: x\nstate: doing\n"}.items():
        (root / "issues" / name).mkdir(parents=True)
        (root / "issues" / name / "issue.yaml").write_text(text)
    return backlog


def test_sweep_cli_without_the_deployment_claims_nothing(prefect_api, uw_home, tmp_path):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            client.delete_deployment(client.read_deployment_by_name("sisyphus/sisyphus").id)
        except Exception:  # noqa: BLE001 - not deployed
            pass
    (tmp_path / "backlog").mkdir()
    backlog = FileBacklog(tmp_path / "backlog")
    backlog.create("one", title="x", repo=str(tmp_path), task="Fix it")
    before = backlog.path("one").read_bytes()
    done = subprocess.run([str(Path(sys.executable).with_name("ultrawork")), "sweep", "--backlog", str(backlog.root)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PREFECT_API_URL": prefect_api})
    assert done.returncode == 1
    assert "deployment 'sisyphus/sisyphus' does not exist" in done.stderr and "prefect deploy --all" in done.stderr
    assert backlog.path("one").read_bytes() == before, "nothing was claimed"


def test_nightly_sweep_deployment_runs_one_sisyphus_per_issue_on_two_workers(prefect_api, uw_home, tmp_path,
                                                                            docker_client):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, DeploymentFilter, FlowRunFilter

    from ultrawork.cli.runs import submit_review
    from ultrawork.tasks.sandboxes import engine

    env = worker_env(prefect_api, uw_home, os.environ.get("PREFECT_API_AUTH_STRING"))
    create_pool()
    workers = [Worker(name, uw_home, tmp_path / f"{name}.log", env).start() for name in ("worker-a", "worker-b")]
    try:
        deployed = deploy(env)
        compact = re.sub(r"[\s│]+", "", deployed)
        assert "Deployment'sisyphus/sisyphus'successfully" in compact, deployed
        assert "Deployment'backlog-sweep/nightly-backlog-sweep'successfully" in compact, deployed

        repo = make_target_repo(tmp_path / "widgets")
        backlog = make_backlog(tmp_path / "backlog", repo)
        sweep_id = run_sweep(env, backlog.root, concurrency=4, poll_seconds=1, review_timeout=600)

        # The reviewer: whenever an issue reaches review, decide its run as planned.
        def decide(issue_id: str, run_id: str) -> None:
            verdict = DECISIONS[issue_id][0]
            submit_review(run_id, approve=["frontend"] if verdict == "approve" else [],
                          reject=["frontend"] if verdict == "reject" else [], comment="sweep test")

        reviewer = Reviewer(backlog, decide, set(DECISIONS))
        try:
            reviewer.run(lambda: flow_run_state(sweep_id).is_final(), timeout=600)
        except SweepFailed as exc:
            pytest.fail(f"{exc}; workers: {({w.name: w.text()[-3000:] for w in workers})}")
        decided = reviewer.reviewed
        assert flow_run_state(sweep_id).is_completed(), flow_run_state(sweep_id)

        # Every issue ended where its review sent it, through the events of the machine.
        issues = {i.id: i for i in backlog.scan()[0]}
        for name, (verdict, final) in DECISIONS.items():
            issue = issues[name]
            assert issue.state == final, (name, [(e.trigger, e.data) for e in issue.history])
            outcome = "integrated" if verdict == "approve" else "rejected"
            assert [e.trigger for e in issue.history] == ["claim", "run_started", "review_requested", outcome]
            assert issue.history[-1].data["run_id"] == decided[name]
        for name in ("alpha", "gamma"):
            branch = f"ultrawork/{decided[name]}/integration"
            assert git(repo, "show", f"{branch}:{name}.txt") == name
        assert issues["shaping"].state == "define" and issues["shaping"].version == 1, "not eligible: untouched"
        assert issues["no-repo"].version == 0, "the guard refused the claim: nothing written"

        # Four Sisyphus runs from the deployment, children of the sweep, spread over both workers.
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("sisyphus/sisyphus")
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}),
                                         flow_run_filter=FlowRunFilter(tags={"all_": ["backlog-sweep"]}))
            ours = [r for r in runs if r.parameters.get("run_id") in decided.values()]
            assert len(ours) == 4 and all(r.state.is_completed() for r in ours)
            parents = {client.read_task_run(r.parent_task_run_id).flow_run_id for r in ours}
            assert parents == {uuid.UUID(sweep_id)}
            artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key={"any_": ["backlog-sweep"]}),
                                             flow_run_filter=FlowRunFilter(id={"any_": [uuid.UUID(sweep_id)]}))[0]
        ran_on = {w.name: w.submitted(r.id for r in ours) for w in workers}
        assert all(ran_on.values()), f"both workers ran Sisyphus runs: {ran_on}"
        assert set.union(*ran_on.values()) == {str(r.id) for r in ours}

        # The summary lists what was swept and what was skipped, with the reason.
        rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        by_issue = {r["issue"]: r for r in rows}
        assert {by_issue[n]["outcome"] for n in ("alpha", "gamma")} == {"integrated"}
        assert {by_issue[n]["outcome"] for n in ("beta", "delta")} == {"nothing-approved"}
        assert "no repo" in by_issue["no-repo"]["note"]
        notes = " ".join(r["note"] for r in rows)
        assert "broken/issue.yaml" in notes and "not valid YAML" in notes
        assert "odd-state/issue.yaml" in notes and "unknown state 'doing'" in notes
        assert all(engine().list(run_id=rid) == [] for rid in decided.values()), "no sandbox left"
    finally:
        for worker in workers:
            worker.stop()
        remove_deployments()     # the session's server: no nightly schedule left behind
