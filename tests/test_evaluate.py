"""`ultrawork eval` on the shipped task set: the report's resolved rates are exactly what the
agents' script implies, and an evaluation stopped midway resumes without running anything twice.

The agents are scripted (as a stand-in model would be): each attempt fixes the tasks its
script names (by running the built-in agent, which applies the task's edit) and leaves the
others untouched, so their checks fail. Real sandboxes, git and Prefect server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

ROOT = Path(__file__).resolve().parents[1]
ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))


def fixes(*tasks: str) -> list[str]:
    """An agent that fixes exactly ``tasks`` (each task's repository holds <task>.py)."""
    tests = " || ".join(f"[ -e /workspace/{t}.py ]" for t in tasks) or "false"
    return ["sh", "-c", f"if {tests}; then exec python3 /agent/builtin_agent.py frontend; fi"]


def flow_runs_of(run_id: str) -> int:
    """How many times the run's Sisyphus flow ran (each is named by the run id)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id]))))


def test_eval_reports_exactly_the_scripted_rates_and_a_stopped_evaluation_runs_nothing_twice(
        prefect_api, uw_home, tmp_path, docker_client):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"settings": [
        {"name": "one", "attempts": 1, "agent_commands": {"frontend": fixes("calc")}},
        {"name": "three", "attempts": 3, "agent_commands": {"frontend": fixes("calc"), "frontend-try2": fixes("greet"),
                                                             "frontend-try3": fixes("slug", "calc")}},
    ]}))
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    argv = [ULTRAWORK, "eval", str(ROOT / "evals" / "tasks.yaml"), "--settings", str(settings), "--concurrency", "1",
            "--eval-id", "e2e1"]
    results = uw_home / "evals" / "e2e1" / "results"

    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and len(list(results.glob("*.json"))) < 2 and first.poll() is None:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGINT)                       # stopped midway
    first.communicate(timeout=120)
    done_before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    assert 2 <= len(done_before) < 6, done_before

    second = subprocess.run(argv[:-2] + ["--eval-id", "e2e1", "--json"], env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout)
    rates = {s["setting"]: (s["resolved"], s["tasks"]) for s in report["settings"]}
    assert rates == {"one": (1, 3), "three": (3, 3)}, report["records"]
    resolved = {(r["task"], r["setting"]): r["resolved"] for r in report["records"]}
    assert resolved == {("calc", "one"): True, ("greet", "one"): False, ("slug", "one"): False,
                        ("calc", "three"): True, ("greet", "three"): True, ("slug", "three"): True}
    by = {(r["task"], r["setting"]): r["resolved_by"] for r in report["records"]}
    assert by[("calc", "three")] == "hidden check" and by[("slug", "three")] == "checks"
    best = {(r["task"], r["setting"]): r["best_attempt"] for r in report["records"]}
    assert best[("greet", "three")] == "frontend-try2" and best[("slug", "three")] == "frontend-try3"

    for name, mtime in done_before.items():                  # finished before the stop: not run again
        assert (results / name).stat().st_mtime_ns == mtime
        record = json.loads((results / name).read_text())
        assert flow_runs_of(record["run_id"]) == 1, record["run_id"]
    folder = uw_home / "evals" / "e2e1"
    assert "| one | 1/3 | 33% |" in (folder / "report.md").read_text()
    assert json.loads((folder / "report.json").read_text())["eval_id"] == "e2e1"


def test_bad_evaluation_files_are_named_errors_before_anything_starts(tmp_path, uw_home):
    bad_tasks = tmp_path / "tasks.yaml"
    bad_tasks.write_text("tasks:\n  - name: Bad Name\n    repo: nowhere\n    task: x\n    checks: true\n")
    done = subprocess.run([ULTRAWORK, "eval", str(bad_tasks)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "task name 'Bad Name'" in done.stderr + done.stdout
    bad_tasks.write_text("tasks:\n  - name: ok\n    repo: nowhere\n    task: x\n    checks: 'true'\n")
    done = subprocess.run([ULTRAWORK, "eval", str(bad_tasks)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "nowhere is not a folder" in done.stderr + done.stdout
    assert not (uw_home / "evals").exists()
