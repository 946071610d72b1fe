"""`prefect deploy --all`, two process workers, and the nightly sweep started with `prefect deployment run`:
4 issues -> 4 Sisyphus runs spread over both workers -> each pauses for review -> the test reviews ->
every issue ends in the state its review decided; bad issues are skipped with the reason."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ultrawork.backlog import FileBacklog
from flowkit import git, make_target_repo

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "ultrawork-process"


def edit_task(path: str, text: str) -> str:
    return (f"Add {path}.\n\n```ultrawork-edit\n"
            f"{json.dumps([{'path': path, 'write': text}])}\n```\n")


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


def start_worker(name: str, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", name,
                                 "--limit", "3", "--prefetch-seconds", "5"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGINT, then SIGKILL: the worker and anything it started (its own process group)."""
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            os.killpg(proc.pid, signal.SIGKILL)     # children that outlived the worker
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def read_flow_run(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(flow_run_id))


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
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import ArtifactFilter, DeploymentFilter, FlowRunFilter
    from prefect.exceptions import ObjectAlreadyExists

    from ultrawork.cli.runs import submit_review
    from ultrawork.tasks.sandboxes import engine

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ULTRAWORK_GITHUB", "PREFECT_LOGGING"))}
    env.update({"PREFECT_API_URL": prefect_api, "ULTRAWORK_HOME": str(uw_home), "PWD": str(ROOT),
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                # the worker logs are read while the workers run: no block buffering, no wrapped lines
                "PYTHONUNBUFFERED": "1", "COLUMNS": "400",
                # at INFO whatever an earlier test left in os.environ: their "submitting flow run" lines say who ran what
                "PREFECT_LOGGING_LEVEL": "INFO"})
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass
    logs = {name: tmp_path / f"{name}.log" for name in ("worker-a", "worker-b")}
    workers = [start_worker(name, env, log) for name, log in logs.items()]
    try:
        deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=180)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        compact = re.sub(r"[\s│]+", "", deployed.stdout)
        assert "Deployment'sisyphus/sisyphus'successfully" in compact, deployed.stdout
        assert "Deployment'backlog-sweep/nightly-backlog-sweep'successfully" in compact, deployed.stdout

        repo = make_target_repo(tmp_path / "widgets")
        backlog = make_backlog(tmp_path / "backlog", repo)
        started = subprocess.run(
            [PREFECT, "deployment", "run", "backlog-sweep/nightly-backlog-sweep", "-p", f"backlog={backlog.root}",
             "-p", "concurrency=4", "-p", "poll_seconds=1", "-p", "review_timeout=600"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        sweep_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)

        # The reviewer: whenever an issue reaches review, decide its run as planned.
        decided: dict[str, str] = {}
        deadline = time.monotonic() + 600
        while len(decided) < len(DECISIONS) or not (read_flow_run(sweep_id).state.is_final()):
            assert time.monotonic() < deadline, f"sweep not done; decided {decided}; states " + str(
                {i.id: i.state for i in backlog.scan()[0]})
            for issue in backlog.scan()[0]:
                if issue.id in DECISIONS and issue.state == "backlog" and issue.version:
                    logs_tail = {n: log.read_text()[-3000:] for n, log in logs.items()}
                    pytest.fail(f"issue {issue.id} was released: {issue.history[-1].data}; workers: {logs_tail}")
                if issue.id in DECISIONS and issue.id not in decided and issue.state == "review":
                    run_id = issue.history[-1].data["run_id"]
                    verdict = DECISIONS[issue.id][0]
                    submit_review(run_id, approve=["frontend"] if verdict == "approve" else [],
                                  reject=["frontend"] if verdict == "reject" else [], comment="sweep test")
                    decided[issue.id] = run_id
            time.sleep(0.5)
        assert read_flow_run(sweep_id).state.is_completed(), read_flow_run(sweep_id).state

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
        ran_on = {name: {str(r.id) for r in ours if str(r.id) in log.read_text()} for name, log in logs.items()}
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
        for proc in workers:
            stop_worker(proc)
        with get_client(sync_client=True) as client:     # the session's server: no nightly schedule left behind
            for name in ("sisyphus/sisyphus", "backlog-sweep/nightly-backlog-sweep"):
                try:
                    client.delete_deployment(client.read_deployment_by_name(name).id)
                except Exception:  # noqa: BLE001 - not deployed
                    pass
