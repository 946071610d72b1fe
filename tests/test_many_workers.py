"""Three process workers on PostgreSQL, each with its own ULTRAWORK_HOME, sharing nothing but the
Prefect server and a ``file://`` git remote: the nightly sweep of 12 issues claims each issue once,
the runs spread over the three workers, a fourth home approves each with ``ultrawork review
--approve-all``, and every agent and integration branch ends on the remote."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from pg import postgres_database, prefect_pg_api, prefect_pg_server  # noqa: F401 (fixtures)

from flowkit import make_target_repo
from test_hostile_output import sandbox_settings
from workers import (Reviewer, SweepFailed, cli_review, create_pool, deploy, edit_task, flow_run_state,
                     remove_deployments, remove_sandboxes, run_sweep, start_workers, stop_workers, worker_env)

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

ISSUES = [f"issue-{i:02d}" for i in range(1, 13)]
WORKERS = 3


def bare_remote(where: Path) -> Path:
    """A bare repository made from a fresh target repository: the remote every worker clones and pushes to."""
    source = make_target_repo(where / "widgets")
    remote = where / "widgets.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(remote)], check=True, capture_output=True)
    return remote


def remote_file(remote: Path, branch: str, path: str) -> str | None:
    done = subprocess.run(["git", "--git-dir", str(remote), "show", f"refs/heads/{branch}:{path}"],
                          capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def sandboxes_of(docker_client, run_ids) -> list[str]:
    return [c.name for rid in run_ids
            for c in docker_client.containers.list(all=True, filters={"label": [f"ultrawork.run={rid}"]})]


@pytest.fixture
def small_sandboxes(prefect_pg_api):
    """The runs' sandboxes on this server are small (the settings every run loads at its start)."""
    with sandbox_settings(memory_mb=256, cpus=0.5, pids=128):
        yield


def test_three_workers_with_their_own_homes_sweep_twelve_issues(prefect_pg_api, small_sandboxes, tmp_path,
                                                                docker_client):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter

    from ultrawork.backlog import FileBacklog

    remote = bare_remote(tmp_path)
    url = remote.as_uri()
    (tmp_path / "backlog").mkdir()
    backlog = FileBacklog(tmp_path / "backlog")
    for name in ISSUES:
        backlog.create(name, title=f"Add {name}.txt", repo=url, task=edit_task(f"{name}.txt", f"{name}\n"),
                       agents=["frontend"])
    reviewer_home = tmp_path / "reviewer-home"
    reviewer_home.mkdir()
    reviewer_env = worker_env(prefect_pg_api, reviewer_home)

    create_pool(prefect_pg_api)
    started = time.monotonic()
    workers = start_workers(prefect_pg_api, tmp_path / "workers", WORKERS, limit=3)
    try:
        deploy(reviewer_env)
        sweep_id = run_sweep(reviewer_env, backlog.root, concurrency=6, limit=len(ISSUES), poll_seconds=1,
                             review_timeout=900)

        def approve(issue_id: str, run_id: str) -> None:    # from a home that holds no run
            done = cli_review(run_id, reviewer_env, "--approve-all", "--comment", "many workers")
            assert done.returncode == 0, f"{issue_id}: {done.stdout}{done.stderr}"

        reviewer = Reviewer(backlog, approve, set(ISSUES))
        try:
            reviewer.run(lambda: flow_run_state(sweep_id, prefect_pg_api).is_final(), timeout=420)
        except SweepFailed as exc:
            pytest.fail(f"{exc}; workers: {({w.name: w.text()[-2000:] for w in workers})}")
        assert flow_run_state(sweep_id, prefect_pg_api).is_completed(), flow_run_state(sweep_id, prefect_pg_api)
        elapsed = time.monotonic() - started

        # Every issue was claimed once, ran once, was reviewed and integrated.
        issues = {i.id: i for i in backlog.scan()[0]}
        for name in ISSUES:
            history = [e.trigger for e in issues[name].history]
            assert history == ["claim", "run_started", "review_requested", "integrated"], (name, history)
            assert issues[name].state == "accepted"
        run_ids = {name: issues[name].history[-1].data["run_id"] for name in ISSUES}
        assert run_ids == reviewer.reviewed and len(set(run_ids.values())) == len(ISSUES)

        # Each Sisyphus run went to one worker; all three workers ran some.
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("sisyphus/sisyphus")
            flow_runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}),
                                              flow_run_filter=FlowRunFilter(tags={"all_": ["backlog-sweep"]}))
        ours = {str(r.id): r.parameters["run_id"] for r in flow_runs if r.parameters.get("run_id") in run_ids.values()}
        assert len(ours) == len(ISSUES), ours
        ran_on = {w.name: w.submitted(ours) for w in workers}
        assert all(ran_on.values()), f"every worker ran Sisyphus runs: {ran_on}"
        assert sorted(i for ids in ran_on.values() for i in ids) == sorted(ours), f"each run on one worker: {ran_on}"

        # Every branch is on the remote, holding the issue's file.
        for name, run_id in run_ids.items():
            for branch in (f"ultrawork/{run_id}/frontend", f"ultrawork/{run_id}/integration"):
                assert remote_file(remote, branch, f"{name}.txt") == f"{name}\n", (name, branch)

        # Nothing left: no sandbox of these runs; each home holds its own worker's runs and no other's.
        assert sandboxes_of(docker_client, run_ids.values()) == []
        for worker in workers:
            assert worker.runs() == {ours[i] for i in ran_on[worker.name]}, worker.name
            assert {p.name for p in worker.home.iterdir()} <= {"runs", "repos", "disk"}, worker.name
            caps = worker.home / "disk" / "caps"          # every run's disk caps were released with it
            assert not caps.is_dir() or not any(caps.iterdir()), (worker.name, sorted(caps.iterdir()))
            caches = {p.name for p in (worker.home / "repos").iterdir() if p.suffix == ".git"}
            assert len(caches) == 1 and caches.pop().startswith("widgets-"), "one cache clone: the remote's"
        assert not (reviewer_home / "runs").exists() or not any((reviewer_home / "runs").iterdir())
        print(f"\n{len(ISSUES)} issues on {WORKERS} workers: {elapsed:.0f} s; "
              + ", ".join(f"{n} {len(ids)}" for n, ids in ran_on.items()))
    finally:
        stop_workers(workers)
        remove_deployments(prefect_pg_api)
        remove_sandboxes(docker_client, [w.home for w in workers])     # after a failure: what the runs left
