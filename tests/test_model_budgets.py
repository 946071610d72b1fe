"""Budgets and accounting exact to the request: what the provider received is what is counted and shown.

Real sandboxes, git and Prefect; the model is the stand-in OpenAI server on loopback. Every HTTP
request counts: the transport's retries of a 500, the model library's retries of a malformed reply,
the task's retries of a failed call, and planning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import test_model_team as team
from flowkit import make_target_repo, run_sisyphus
from openai_standin import Reply, final_answer, tool_call

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
EXE = str(Path(sys.executable).with_name("ultrawork"))
OVERLOADED = Reply(status=500, text="the stand-in is overloaded")


def status_json(run_id: str) -> dict:
    done = subprocess.run([EXE, "status", run_id, "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_an_agent_budget_counts_every_request_retries_and_malformed_replies_included(prefect_api, uw_home, tmp_path,
                                                                                       docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"exact-{uuid.uuid4().hex[:6]}"
    malformed = tool_call("read_file", start="not a number")             # no path, a bad start: sent back
    scripts = {"explore": [OVERLOADED, OVERLOADED, tool_call("list_files", path="."), malformed, malformed,
                           malformed, tool_call("list_files", path="."), final_answer("never reached")]}
    live: list[dict] = []

    def look(name: str, turn: int) -> None:      # while explore works: what `ultrawork status` shows
        if name == "explore" and turn == 5:
            live.append(status_json(run_id)["agents"][0])

    with team.TeamStandIn(scripts, on_request=look) as server:
        settings = team.save_settings(server, max_requests=5, attempts=3, input_price_per_million=1.0)
        try:
            result = run_sisyphus({"task": "Map the code", "repo": str(repo), "run_id": run_id,
                                   "agents": ["explore"], "agent_profiles": {"explore": "model"},
                                   "model_settings": settings, "review_timeout": 2})
        finally:
            team.delete_settings(settings)
    explore = result.agents[0]
    assert server.turns["explore"] == 5, "never a request past max_requests"
    assert explore.status == "failed" and "max_requests" in explore.errors[-1]
    assert explore.usage["requests"] == 5                  # two 500s, one answer, two malformed replies
    assert explore.usage["input_tokens"] == 3 * 100         # tokens come with the three answers only
    assert explore.retries == 0
    assert live and live[0]["model"] == "openai:standin-model" and live[0]["outcome"] is None
    assert live[0]["usage"]["requests"] == 4, live       # as of its last answer, before the 5th request
    shown = status_json(run_id)
    agent = shown["agents"][0]
    assert agent["model"] == "openai:standin-model" and agent["usage"]["requests"] == 5
    assert shown["model_total"]["requests"] == 5 and shown["model_total"]["cost"] == pytest.approx(300 / 1e6)


def test_a_run_budget_is_exact_over_planning_and_agents_working_at_once(prefect_api, uw_home, tmp_path,
                                                                        docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"exact-{uuid.uuid4().hex[:6]}"
    roles = ["explore", "librarian", "oracle"]
    plan = tool_call("submit_plan", summary="Three looks at the code.",
                     agents=[{"agent": r, "brief": f"{r}: look"} for r in roles])
    endless = [tool_call("list_files", path=".", prompt_tokens=10, completion_tokens=1) for _ in range(20)]
    scripts = {"sisyphus": [OVERLOADED, plan], **{r: list(endless) for r in roles}}
    with team.TeamStandIn(scripts) as server:
        settings = team.save_settings(server, run_max_requests=11, attempts=3)
        try:
            result = run_sisyphus({"task": "Map the code, its dependencies and its risks", "repo": str(repo),
                                   "run_id": run_id, "model_settings": settings,
                                   "agent_profiles": {r: "model" for r in roles}, "review_timeout": 2})
        finally:
            team.delete_settings(settings)
    assert len(server.requests) == 11, server.turns                   # planning 2 (a 500, then the plan) + 9
    assert server.turns["sisyphus"] == 2
    assert [o.role for o in result.agents] == roles
    assert all(o.status == "failed" and "run_max_requests" in o.errors[-1] for o in result.agents)
    assert sum(o.usage["requests"] for o in result.agents) == 9
    assert {o.role: o.usage["requests"] for o in result.agents} == {r: server.turns[r] for r in roles}
    recorded = json.loads((uw_home / "runs" / run_id / "plan.json").read_text())
    assert recorded["planned_by"] == "openai:standin-model" and recorded["usage"]["requests"] == 2
    shown = status_json(run_id)
    assert shown["planning"]["requests"] == 2 and shown["model_total"]["requests"] == 11
    assert {a["role"]: a["usage"]["requests"] for a in shown["agents"]} == {r: server.turns[r] for r in roles}
    readable = subprocess.run([EXE, "status", run_id], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "COLUMNS": "200"})
    assert "(run total)" in readable.stdout and "openai:standin-model" in readable.stdout, readable.stdout


def test_a_revised_agent_reports_what_all_its_rounds_sent(prefect_api, uw_home, tmp_path, docker_client):
    import time

    from ultrawork.cli.runs import run_status, submit_review

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"rounds-{uuid.uuid4().hex[:6]}"
    scripts = {"explore": [tool_call("list_files", path="."), final_answer("mapped", findings=["core.py"]),
                           OVERLOADED, final_answer("mapped the docs too", findings=["docs/guide.md"])]}

    def revise_then_approve(rid: str) -> None:
        submit_review(rid, [], [], again={"explore": ("revise", "map the docs too")})
        deadline = time.monotonic() + 180
        while not ((s := run_status(rid, with_state=False)).review == "requested" and s.review_round == 2):
            assert time.monotonic() < deadline, "no second review"
            time.sleep(0.3)
        submit_review(rid, ["explore"], [])

    with team.TeamStandIn(scripts) as server:
        settings = team.save_settings(server, output_price_per_million=10.0)
        try:
            result = run_sisyphus({"task": "Map the code", "repo": str(repo), "run_id": run_id,
                                   "agents": ["explore"], "agent_profiles": {"explore": "model"},
                                   "model_settings": settings}, revise_then_approve)
        finally:
            team.delete_settings(settings)
    explore = result.agents[0]
    assert server.turns["explore"] == 4
    assert explore.round == 2 and explore.usage["requests"] == 4, explore.usage     # 2 + (a 500 and an answer)
    assert explore.usage["output_tokens"] == 3 * 20 and explore.usage["cost"] == pytest.approx(60 * 10 / 1e6)
    assert status_json(run_id)["model_total"]["requests"] == 4
