"""Durable runs: resume after SIGKILL, no duplicate pull request, sandboxes recreated, engine outages,
resume refusing bad input, reaping, stale git locks -- real engine, real git, a real Prefect server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, review_state, run_sisyphus
from github_stub import GitHubStub

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))
EDIT_TASK = """Document make_widget.

```ultrawork-edit
[{"path": "docs/guide.md", "append": "make_widget(name) returns a dict.\\n"}]
```
"""


def once_slow(role: str, seconds: int = 120) -> list[str]:
    """Slow on the first attempt only (a marker in the agent's Plan.md folder survives the crash)."""
    return ["sh", "-c", f"if [ ! -e /plan/.attempted ]; then touch /plan/.attempted; sleep {seconds}; fi; "
                        f"exec python3 /agent/builtin_agent.py {role}"]


def launch(params: dict, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ultrawork.cli.launch", json.dumps(params)], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def created_containers(docker_client, run_id: str, since: float) -> Counter:
    events = docker_client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                                  filters={"type": "container", "event": "create", "label": f"ultrawork.run={run_id}"})
    return Counter(e["Actor"]["Attributes"].get("ultrawork.agent") for e in events)


def review_when_asked(run_id: str, approve: list[str], reject: list[str], timeout: float = 240) -> threading.Thread:
    def act() -> None:
        from ultrawork.cli.runs import submit_review

        deadline = time.monotonic() + timeout
        while review_state(run_id) != "requested" and time.monotonic() < deadline:
            time.sleep(0.2)
        submit_review(run_id, approve, reject)

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def test_sigkill_after_two_agents_then_resume_completes_without_rerunning_them(
        prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.tasks.sandboxes import engine

    repo = make_target_repo(tmp_path / "widgets")
    base = git(repo, "rev-parse", "HEAD")
    run_id = f"kill-{uuid.uuid4().hex[:6]}"
    roles = ["explore", "librarian", "oracle", "frontend"]
    commands = {"librarian": once_slow("librarian")}     # the writer, set up alongside, waits for the research
    env = {**os.environ, "ULTRAWORK_FAULTS_STATE": str(tmp_path / "faults.json"),
           "ULTRAWORK_FAULTS": json.dumps([{"at": "stage:agent-finished", "after": 1, "action": "kill_process"}])}
    started = time.time()
    proc = launch({"task": EDIT_TASK, "repo": str(repo), "agents": roles, "run_id": run_id,
                   "agent_commands": commands}, env, tmp_path / "first.log")
    assert proc.wait(timeout=180) == -9, (tmp_path / "first.log").read_text()[-3000:]
    outcomes = sorted(p.stem for p in (uw_home / "runs" / run_id / "outcomes").glob("*.json"))
    assert outcomes == ["explore", "oracle"], "the two quick agents finished before the kill"
    at_kill = {i.role for i in engine().list(run_id=run_id)}
    assert at_kill == {"librarian", "frontend"}, f"killed while the slow agent ran (the writer's sandbox " \
                                                 f"ready for its prompt): {at_kill}"

    status = json.loads(subprocess.run([ULTRAWORK, "status", run_id, "--json"], capture_output=True,
                                       text=True, env=os.environ.copy()).stdout)
    assert status["state"] == "Crashed"

    reviewer = review_when_asked(run_id, approve=["explore", "frontend", "librarian"], reject=["oracle"])
    resumed = subprocess.run([ULTRAWORK, "resume", run_id], capture_output=True, text=True, timeout=300,
                             env=os.environ.copy(), stdin=subprocess.DEVNULL)
    reviewer.join(10)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "integrated" in resumed.stdout

    created = created_containers(docker_client, run_id, started)
    # finished agents: one sandbox ever; the slow one and the writer waiting for its prompt: one more each
    # in the resumed run
    expected = {"explore": 1, "oracle": 1, "librarian": 2, "frontend": 2}
    assert created == Counter(expected), created
    assert engine().list(run_id=run_id) == [], "the killed attempt's sandboxes were reaped"
    history = subprocess.run(["git", "log", "--format=%s"], cwd=uw_home / "runs" / run_id,
                             capture_output=True, text=True).stdout.splitlines()
    assert sum(h.startswith("explore: step") for h in history) == 1
    assert sum(h.startswith("oracle: finalized") for h in history) == 1
    assert sum(h.startswith("frontend: finalized") for h in history) == 1
    frontend = git(repo, "rev-list", f"{base}..ultrawork/{run_id}/frontend").split()
    assert len(frontend) == 1, "the writer's work is committed exactly once"
    integration = git(repo, "rev-list", "--no-merges", f"{base}..ultrawork/{run_id}/integration").split()
    assert integration == frontend
    for role in roles:
        assert git(repo, "rev-list", f"{base}..ultrawork/{run_id}/{role}").split() == (frontend if role == "frontend" else [])
    again = subprocess.run([ULTRAWORK, "resume", run_id], capture_output=True, text=True, env=os.environ.copy())
    assert again.returncode != 0 and "finished" in again.stderr


def test_kill_after_the_pull_request_opened_does_not_open_a_second(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "push", "-q", str(remote), "main"], cwd=repo, check=True)
    run_id = f"prk-{uuid.uuid4().hex[:6]}"
    with GitHubStub(repository="acme/widgets") as stub:
        env = {**os.environ, "ULTRAWORK_GITHUB_REPOSITORY": "acme/widgets", "ULTRAWORK_GITHUB_TOKEN": stub.token,
               "ULTRAWORK_GITHUB_API_URL": stub.url, "ULTRAWORK_GITHUB_PUSH_URL": str(remote),
               "ULTRAWORK_FAULTS_STATE": str(tmp_path / "faults.json"),
               "ULTRAWORK_FAULTS": json.dumps([{"at": "stage:pull-request-opened", "action": "kill_process"}])}
        reviewer = review_when_asked(run_id, approve=["explore", "frontend"], reject=[])
        proc = launch({"task": EDIT_TASK, "repo": str(repo), "agents": ["explore", "frontend"], "run_id": run_id},
                      env, tmp_path / "first.log")
        assert proc.wait(timeout=180) == -9, (tmp_path / "first.log").read_text()[-3000:]
        reviewer.join(10)
        assert len(stub.pulls) == 1
        assert not (uw_home / "runs" / run_id / "pull_request.json").exists(), "killed before it was recorded"
        resumed = subprocess.run([ULTRAWORK, "resume", run_id], capture_output=True, text=True, timeout=300,
                                 env=env, stdin=subprocess.DEVNULL)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert len(stub.pulls) == 1, "the resumed run found the pull request instead of opening another"
        recorded = json.loads((uw_home / "runs" / run_id / "pull_request.json").read_text())
        assert recorded["number"] == stub.pulls[0]["number"] and recorded["created"] is False


def test_container_removed_from_outside_is_recreated_and_the_step_retried(
        prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.cli.runs import submit_review
    from ultrawork.tasks.sandboxes import engine

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"rm-{uuid.uuid4().hex[:6]}"
    removed = []

    def remove_first_running_container() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not removed:
            for info in engine().list(run_id=run_id):
                # wait until the step runs (its sleep is visible), then remove the container from outside
                top = docker_client.api.top(info.id) if info.status == "running" else {"Processes": []}
                if any("sleep 3" in " ".join(p) for p in top.get("Processes") or []):
                    docker_client.api.remove_container(info.id, force=True)
                    removed.append(info.id)
                    return
            time.sleep(0.1)

    threading.Thread(target=remove_first_running_container, daemon=True).start()
    result = run_sisyphus({"task": "map it", "repo": str(repo), "agents": ["explore"], "run_id": run_id,
                           "agent_commands": {"explore": ["sh", "-c", "sleep 3; python3 /agent/builtin_agent.py explore"]}},
                          lambda rid: submit_review(rid, approve=["explore"], reject=[]))
    explore = result.agents[0]
    assert removed, "the container was removed mid-step"
    assert explore.status == "succeeded" and explore.sandboxes_created == 2 and explore.retries == 1
    assert engine().list(run_id=run_id) == []
    leftover = docker_client.volumes.list(filters={"label": f"ultrawork.run={run_id}"})
    assert leftover == [], "the removed container's scratch volume was left behind"


def test_engine_stopped_for_ten_seconds_the_run_completes_and_leaves_nothing(
        prefect_api, uw_home, tmp_path, docker_client, monkeypatch):
    from ultrawork.cli.runs import submit_review
    from ultrawork.tasks.sandboxes import engine

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"eng-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("ULTRAWORK_FAULTS_STATE", str(tmp_path / "faults.json"))
    monkeypatch.setenv("ULTRAWORK_FAULTS", json.dumps([
        {"at": "step", "role": "explore", "action": "engine_pause", "seconds": 10}]))
    started = time.monotonic()
    result = run_sisyphus({"task": "map it", "repo": str(repo), "agents": ["explore"], "run_id": run_id},
                          lambda rid: submit_review(rid, approve=["explore"], reject=[]))
    assert time.monotonic() - started >= 10, "the engine was really stopped"
    assert result.outcome == "integrated" or "Engine" in " ".join(result.agents[0].errors)
    assert docker_client.ping()
    assert engine().list(run_id=run_id) == []


def test_resume_refuses_unknown_finished_and_inconsistent_runs(prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.cli.runs import prepare_resume, submit_review
    from ultrawork.workspace.ledger import RunFinished, RunInconsistent, RunNotFound

    with pytest.raises(RunNotFound):
        prepare_resume("never-was")
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"fin-{uuid.uuid4().hex[:6]}"
    run_sisyphus({"task": EDIT_TASK, "repo": str(repo), "agents": ["frontend"], "run_id": run_id},
                 lambda rid: submit_review(rid, approve=["frontend"], reject=[]))
    with pytest.raises(RunFinished):
        prepare_resume(run_id)
    run_dir = uw_home / "runs" / run_id
    assert not any((run_dir / "agents" / "frontend").iterdir()), "a finished run's clones are released"

    # A run whose superproject was edited by hand: an agent's outcome names a commit its branch lacks.
    crashed = f"inc-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "ULTRAWORK_FAULTS_STATE": str(tmp_path / "f2.json"),
           "ULTRAWORK_FAULTS": json.dumps([{"at": "stage:agent-finished", "action": "kill_process"}])}
    proc = launch({"task": EDIT_TASK, "repo": str(repo), "agents": ["frontend"], "run_id": crashed}, env,
                  tmp_path / "inc.log")
    assert proc.wait(timeout=180) == -9
    crashed_dir = uw_home / "runs" / crashed
    outcome = crashed_dir / "outcomes" / "frontend.json"
    data = json.loads(outcome.read_text())
    data["commits"] = ["0" * 40]
    outcome.write_text(json.dumps(data))
    subprocess.run(["git", "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qam", "hand edit"],
                   cwd=crashed_dir, check=True)
    before = git(crashed_dir, "rev-parse", "HEAD")
    with pytest.raises(RunInconsistent, match="0000000000"):
        prepare_resume(crashed)
    (crashed_dir / "notes.txt").write_text("stray\n")
    with pytest.raises(RunInconsistent, match="uncommitted changes"):
        prepare_resume(crashed)
    assert git(crashed_dir, "rev-parse", "HEAD") == before, "nothing was changed"
    cli = subprocess.run([ULTRAWORK, "resume", crashed], capture_output=True, text=True, env=os.environ.copy())
    assert cli.returncode != 0 and "inconsistent" in cli.stderr


def test_reap_removes_clones_of_finished_runs_and_stray_checkouts(uw_home, tmp_path):
    import tempfile

    from ultrawork.sandbox.reaper import reap
    from ultrawork.workspace.superproject import RunSuperproject

    repo = make_target_repo(tmp_path / "widgets")
    run = RunSuperproject.create("reaped-1", repo, "task")
    ws = run.add_agent("explore")
    dead_owner = f"{socket.gethostname()}:999999999:1"  # this machine, a process that is gone
    (run.path / "orchestration.json").write_text(json.dumps({"roles": ["explore"], "owner": dead_owner}))
    (run.path / "integration.json").write_text(json.dumps({"outcome": "nothing-approved"}))
    stray = Path(tempfile.mkdtemp(prefix="ultrawork-integrate-reaped-1-"))
    report = reap(None)
    assert ws.path in report.clones and not any(ws.path.iterdir())
    assert stray in report.checkouts and not stray.exists()
    assert ws.plan_path.exists(), "Plan.md is kept"
    assert git(repo, "rev-parse", "--verify", "HEAD")


def test_stale_index_lock_is_cleared_and_a_live_one_waited_for(tmp_path):
    from ultrawork.workspace.gitcmd import run_git

    repo = make_target_repo(tmp_path / "widgets")
    (repo / "new.txt").write_text("x\n")
    lock = repo / ".git" / "index.lock"
    lock.write_text("")                                  # left by a killed git: nobody holds it
    run_git(["add", "new.txt"], cwd=repo)
    assert not lock.exists()
    holder = subprocess.Popen(["python3", "-c", "import sys,time; f=open(sys.argv[1],'w'); time.sleep(1.5)",
                               str(lock)])
    time.sleep(0.3)
    (repo / "other.txt").write_text("y\n")
    started = time.monotonic()
    threading.Timer(1.6, lambda: lock.unlink(missing_ok=True)).start()  # the live owner finishes, then it is gone
    run_git(["add", "other.txt"], cwd=repo)
    holder.wait()
    assert time.monotonic() - started >= 1.0, "a lock a live process holds is waited for"
    assert "other.txt" in git(repo, "diff", "--cached", "--name-only")
