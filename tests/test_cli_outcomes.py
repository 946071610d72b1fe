"""The command line tells how a run ended by its exit code and, with --json, as data, so scripts can act on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowkit import make_target_repo, review_state

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))


def env() -> dict:
    return {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([ULTRAWORK, *args], capture_output=True, text=True, env=env(), timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_a_run_nobody_reviews_exits_6_with_its_result_as_json_and_is_found_by_its_id(
        prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run = cli("run", "--repo", str(repo), "--task", "Map the code", "--agents", "explore",
              "--review-timeout", "2s", "--json")
    assert run.returncode == 6, run.stdout + run.stderr
    result = json.loads(run.stdout)                      # stdout is the result alone; the display is on stderr
    run_id = result["run_id"]
    assert result["outcome"] == "review-timed-out" and result["exit_code"] == 6
    assert [a["role"] for a in result["agents"]] == ["explore"]
    flow_run_id = json.loads((uw_home / "runs" / run_id / "orchestration.json").read_text())["flow_run_id"]
    assert result["ui"] == f"{prefect_api.removesuffix('/api')}/runs/flow-run/{flow_run_id}"
    assert f"UI: {result['ui']}" in run.stderr

    # found by its run id: the flow run's name and tags, and the agent's subflow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        tagged = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{run_id}"])))
    assert sorted(r.name for r in tagged) == sorted([run_id, f"{run_id}-explore"])
    assert "role:explore" in next(r for r in tagged if r.name.endswith("-explore")).tags

    status = cli("status", run_id)
    assert status.returncode == 0 and f"UI: {result['ui']}" in status.stdout, status.stdout + status.stderr
    assert json.loads(cli("status", run_id, "--json").stdout)["ui"] == result["ui"]

    # its logs: the whole run, or one agent's
    everything, explore = cli("logs", run_id), cli("logs", run_id, "explore")
    assert everything.returncode == 0 and explore.returncode == 0, everything.stderr + explore.stderr
    assert "paused for review" in everything.stdout and "paused for review" not in explore.stdout
    assert "explore" in explore.stdout and len(explore.stdout.splitlines()) < len(everything.stdout.splitlines())
    followed = cli("logs", run_id, "-f", timeout=60)     # an ended run: -f prints it all and returns
    assert followed.returncode == 0 and followed.stdout == everything.stdout

    again = cli("integrate", run_id)
    assert again.returncode == 1 and "has no decided review to integrate" in again.stderr, again.stderr


def test_a_bad_duration_is_refused_before_anything_starts(uw_home, tmp_path):
    repo = make_target_repo(tmp_path / "widgets")
    bad = cli("run", "--repo", str(repo), "--task", "Map the code", "--review-timeout", "2 weeks")
    assert bad.returncode == 2 and "is not a duration like 90s, 30m, 2h or 1d" in bad.stderr, bad.stderr
    assert not (uw_home / "runs").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_run_ends_with_one_line_saying_how_to_resume_it(signum, prefect_api, uw_home, tmp_path,
                                                                   docker_client):
    from ultrawork.sandbox import SandboxEngine

    repo = make_target_repo(tmp_path / "widgets")
    slow = ["sh", "-c", "sleep 120"]
    proc = subprocess.Popen([ULTRAWORK, "run", "--repo", str(repo), "--task", "Map the code", "--agents", "explore",
                             "--agent-command", f"explore={json.dumps(slow)}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), stdin=subprocess.DEVNULL)
    engine = SandboxEngine()
    try:
        deadline = time.monotonic() + 120
        def busy(run_dir: Path) -> bool:      # its agent's sandbox runs (or the run already waits for review)
            return bool(engine.list(run_id=run_dir.name)) or review_state(run_dir.name) == "requested"

        while not (uw_home / "runs").is_dir() or not any(busy(p) for p in (uw_home / "runs").iterdir()):
            assert proc.poll() is None, proc.communicate(timeout=30)
            assert time.monotonic() < deadline, "the run never started its agent"
            time.sleep(0.3)
        run_id = next((uw_home / "runs").iterdir()).name
        time.sleep(1.0)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stdout + stderr
    assert f"continue it with 'ultrawork resume {run_id}'" in stderr
    assert "Traceback" not in stdout + stderr, stderr
    assert engine.list(run_id=run_id) == [], "no sandbox outlives the stopped run"


def test_logs_follow_ends_when_the_agent_ends_and_for_the_run_when_it_pauses_for_review(
        prefect_api, uw_home, tmp_path, docker_client):
    """`logs RUN ROLE -f` ends a few seconds after that agent's end (its last lines printed) while the
    run goes on; `logs RUN -f` ends once the run waits for its review."""
    import uuid

    from flowkit import FlowThread

    from ultrawork.cli.runs import submit_review
    from ultrawork.sandbox import SandboxEngine

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"lf-{uuid.uuid4().hex[:6]}"
    flow = FlowThread({"task": "Map and fix the code.", "repo": str(repo), "agents": ["explore", "frontend"],
                       "run_id": run_id, "review_timeout": 300,
                       "agent_commands": {"explore": ["sh", "-c", "sleep 5; echo explored"],
                                          "frontend": ["sh", "-c", "sleep 20; echo edited >> widgets/core.py"]}})
    flow.start()
    engine, deadline = SandboxEngine(), time.monotonic() + 180
    while not any(i.role == "explore" for i in engine.list(run_id=run_id)):
        assert flow.is_alive() and time.monotonic() < deadline, "explore's sandbox never started"
        time.sleep(0.2)
    follow = lambda *args: subprocess.Popen([ULTRAWORK, "logs", run_id, *args, "-f"], stdout=subprocess.PIPE,  # noqa: E731
                                            stderr=subprocess.PIPE, text=True, env=env(), stdin=subprocess.DEVNULL)
    agent, whole = follow("explore"), follow()
    ended: dict = {}

    def note_end(name: str, proc: subprocess.Popen) -> None:
        proc.wait()
        ended[name] = time.time()

    import threading

    for name, proc in (("agent", agent), ("whole", whole)):
        threading.Thread(target=note_end, args=(name, proc), daemon=True).start()
    try:
        agent_out, agent_err = agent.communicate(timeout=120)
        agent_done = ended.get("agent") or time.time()
        explore = json.loads((uw_home / "runs" / run_id / "outcomes" / "explore.json").read_text())
        assert agent.returncode == 0, agent_err
        assert agent_done - explore["ended_at"] < 8, f"ended {agent_done - explore['ended_at']:.1f}s after the agent"
        assert "explore agent succeeded" in agent_out and "frontend agent succeeded" not in agent_out
        assert whole.poll() is None and review_state(run_id) is None, "the run itself goes on"

        while review_state(run_id) != "requested":
            assert flow.is_alive() and time.monotonic() < deadline + 120, "the run never asked for review"
            time.sleep(0.2)
        asked = time.time()
        whole_out, whole_err = whole.communicate(timeout=120)
        assert whole.returncode == 0, whole_err
        done = ended.get("whole") or time.time()
        assert done - asked < 10, f"ended {done - asked:.1f}s after the run paused"
        assert "frontend agent succeeded" in whole_out and "paused for review" in whole_out
    finally:
        for proc in (agent, whole):
            if proc.poll() is None:
                proc.kill()
        if flow.is_alive():
            submit_review(run_id, [], ["explore", "frontend"])
    assert flow.wait(120).outcome == "nothing-approved"
    unknown = cli("logs", run_id, "backend", "-f", timeout=60)
    assert unknown.returncode == 2 and "has no agent 'backend'" in unknown.stderr, unknown.stderr
