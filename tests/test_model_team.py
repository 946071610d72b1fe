"""Model agents as a team, end to end: real sandboxes, git and Prefect; only the model is a stand-in.

The stand-in OpenAI server on loopback plays one script per agent (told apart by the
agent name in the instructions the model agent sends) and one for Sisyphus's planning.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, run_sisyphus, server_logs_since
from openai_standin import OpenAIStandIn, Reply, final_answer, tool_call

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

API_KEY = "sk-team-standin-5e8a1c7b93d04f26"
WHO = re.compile(r"You are (?:the (\S+) agent of ultrawork|(Sisyphus))")


class TeamStandIn(OpenAIStandIn):
    """One script per agent name (``sisyphus`` for the planner); ``on_request(name, turn)`` runs
    before each reply (e.g. to look at the run's containers while they work)."""

    def __init__(self, scripts: dict[str, list[Reply]], on_request=None) -> None:
        super().__init__([])
        self.scripts = scripts
        self.turns: dict[str, int] = {}
        self.by_agent: dict[str, list] = {}
        self.on_request = on_request

    def _answer(self, path, headers, body):
        from openai_standin import RecordedRequest

        system = " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")
        match = WHO.search(system)
        name = (match.group(1) or "sisyphus") if match else "?"
        with self._lock:
            self.requests.append(RecordedRequest(path, headers, body))
            self.turns[name] = turn = self.turns.get(name, 0) + 1
            self.by_agent.setdefault(name, []).append(body)
            script = self.scripts.get(name, [])
        if self.on_request is not None:
            self.on_request(name, turn)
        if turn > len(script):
            return 500, {"error": {"message": f"no reply {turn} for {name}", "type": "server_error"}}
        reply = script[turn - 1]
        if reply.status != 200:
            return reply.status, {"error": {"message": reply.text or "error", "type": "server_error"}}
        message = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["tool_calls"] = [{"id": f"call_{name}_{turn}_{i}", "type": "function",
                                      "function": {"name": tool, "arguments": json.dumps(arguments)}}
                                     for i, (tool, arguments) in enumerate(reply.tool_calls)]
        return 200, {"id": f"chatcmpl-{name}-{turn}", "object": "chat.completion", "created": int(time.time()),
                     "model": self.model, "choices": [{"index": 0, "message": message, "finish_reason":
                                                       "tool_calls" if reply.tool_calls else "stop"}],
                     "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                               "total_tokens": reply.prompt_tokens + reply.completion_tokens}}


def save_settings(server: OpenAIStandIn, **fields) -> str:
    from ultrawork.blocks.model import ModelAgentSettings

    name = f"team-{uuid.uuid4().hex[:8]}"
    ModelAgentSettings(provider="openai", model="standin-model", base_url=server.base_url, api_key=API_KEY,
                       **fields).save(name, overwrite=True)
    return name


def delete_settings(name: str) -> None:
    from ultrawork.blocks.model import ModelAgentSettings

    ModelAgentSettings.delete(name)


def user_prompt(body: dict) -> str:
    return "\n".join(str(m.get("content")) for m in body["messages"] if m.get("role") == "user")


def tool_results(body: dict) -> list[str]:
    return [str(m["content"]) for m in body["messages"] if m.get("role") == "tool"]


def logs_since(started: float, wanted: str, timeout: float = 30.0) -> list[str]:
    """The server's log messages since ``started``, once one contains ``wanted`` (logs arrive in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = server_logs_since(started)
        if any(wanted in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(1)


def artifacts_text(run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=run_id.lower())),
                                      limit=200)
    return "\n".join(json.dumps({"key": a.key, "data": a.data, "description": a.description}, default=str)
                     for a in found)


def container_envs(docker_client, run_id: str) -> list[str]:
    label = {"label": f"ultrawork.run={run_id}"}
    return [json.dumps(c.attrs["Config"].get("Env") or []) for c in docker_client.containers.list(filters=label)]


def approve_all(run_id: str) -> None:
    from ultrawork.cli.runs import run_status, submit_review

    roles = [a.role for a in run_status(run_id, with_state=False).agents]
    submit_review(run_id, approve=roles, reject=[], comment="ok")


def test_research_feeds_the_model_writer_read_only_write_refused_tokens_counted_key_kept_out(
        prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"team-{uuid.uuid4().hex[:6]}"
    seen_envs: list[str] = []

    def look(name: str, turn: int) -> None:   # while the agents work: their containers' environments
        if turn == 2:
            seen_envs.extend(container_envs(docker_client, run_id))

    scripts = {
        "explore": [tool_call("list_files", prompt_tokens=110, completion_tokens=11, path="."),
                    tool_call("run_command", argv=["sh", "-c", "env; tr '\\0' '\\n' < /proc/1/environ"]),
                    final_answer("mapped", findings=["widgets/core.py:2 holds the TODO: validate name"],
                                 prompt_tokens=130, completion_tokens=13)],
        "librarian": [tool_call("read_file", prompt_tokens=210, completion_tokens=21, path="pyproject.toml"),
                      final_answer("deps", findings=["the only dependency is attrs>=23"], prompt_tokens=230,
                                   completion_tokens=23)],
        "oracle": [tool_call("write_file", path="widgets/core.py", content="print('pwned')\n"),
                   tool_call("write_findings", markdown="- empty names pass make_widget unchecked"),
                   final_answer("reviewed", findings=["risk: empty names are accepted"])],
        "frontend": [tool_call("read_file", path="widgets/core.py"),
                     tool_call("write_file", path="widgets/core.py",
                               content="def make_widget(name):\n    if not name:\n        raise ValueError('name')\n"
                                       "    return {'name': name}\n"),
                     tool_call("write_findings", markdown="- per explore: fixed the TODO in widgets/core.py:2"),
                     final_answer("validated the name", ["widgets/core.py"], ["name is validated"],
                                  prompt_tokens=400, completion_tokens=40)],
    }
    roles = list(scripts)
    started = time.time()
    with TeamStandIn(scripts, on_request=look) as server:
        settings = save_settings(server, input_price_per_million=1.0, output_price_per_million=4.0)
        try:
            result = run_sisyphus({"task": "Fix the TODO in widgets/core.py", "repo": str(repo), "agents": roles,
                                   "run_id": run_id, "agent_profiles": {r: "model" for r in roles},
                                   "model_settings": settings}, approve_all)
        finally:
            delete_settings(settings)
    by_role = {o.role: o for o in result.agents}
    assert result.outcome == "integrated", result.message
    assert [o.status for o in result.agents] == ["succeeded"] * 4, [o.errors for o in result.agents]

    # the writer started after the research, with every researcher's findings in its first request
    first = user_prompt(server.by_agent["frontend"][0])
    assert "# Research findings" in first
    for finding in ("widgets/core.py:2 holds the TODO", "attrs>=23", "empty names are accepted"):
        assert finding in first
    research_end = max(by_role[r].ended_at for r in ("explore", "librarian", "oracle"))
    assert by_role["frontend"].started_at >= research_end - 0.5
    writer_plan = Path(by_role["frontend"].plan_path).read_text()
    assert "started from the research findings of explore" in writer_plan and "per explore:" in writer_plan

    # the edit, made through the sandbox, is committed on the writer's branch and integrated
    assert "raise ValueError('name')" in git(repo, "show", f"ultrawork/{run_id}/frontend:widgets/core.py")
    assert "raise ValueError('name')" in git(repo, "show", f"ultrawork/{run_id}/integration:widgets/core.py")

    # the read-only oracle's write failed in the sandbox; the model was told, Plan.md records it
    refusal = tool_results(server.by_agent["oracle"][1])[0]
    assert "Read-only file system" in refusal
    oracle_plan = Path(by_role["oracle"].plan_path).read_text()
    assert "Read-only file system" in oracle_plan and "- Exit code: 1" in oracle_plan
    assert git(repo, "show", f"ultrawork/{run_id}/oracle:widgets/core.py").startswith("def make_widget")

    # tokens and cost per agent, the model named per agent
    assert by_role["explore"].usage["input_tokens"] == 110 + 100 + 130
    assert by_role["explore"].usage["output_tokens"] == 11 + 20 + 13
    assert (by_role["librarian"].usage["requests"], by_role["librarian"].usage["input_tokens"]) == (2, 440)
    assert by_role["frontend"].usage["requests"] == 4 and by_role["frontend"].usage["output_tokens"] == 100
    assert by_role["frontend"].usage["cost"] == pytest.approx((700 * 1.0 + 100 * 4.0) / 1e6)
    assert all(o.model == "openai:standin-model" for o in result.agents)
    from ultrawork.flows.review import agent_facts     # the sentence beside the reviewer's decision

    assert "Model openai:standin-model: 4 request(s), 700 input / 100 output tokens, cost 0.0011" in \
        agent_facts(by_role["frontend"])
    assert "tokens" in Path(by_role["librarian"].plan_path).read_text()

    # every model turn is in the agent's Prefect log
    logs = logs_since(started, "[frontend model] turn 4")
    assert any("[frontend model] turn 4" in m for m in logs)
    assert any("[oracle model] turn 1" in m and "write_file" in m for m in logs)
    text = artifacts_text(run_id)
    assert "openai:standin-model" in text and "(run total)" in text

    # the key: only in the Authorization header sent to the model server
    assert seen_envs, "the containers were looked at while the agents worked"
    assert not any(API_KEY in env for env in seen_envs)
    assert "exit code: 0" in tool_results(server.by_agent["explore"][2])[-1]
    assert API_KEY not in tool_results(server.by_agent["explore"][2])[-1]
    assert all(r.headers.get("authorization") == f"Bearer {API_KEY}" for r in server.requests)
    assert not any(API_KEY in m for m in logs)
    assert API_KEY not in text
    run_dir = uw_home / "runs" / run_id
    leaked = subprocess.run(["grep", "-rl", API_KEY, str(run_dir)], capture_output=True, text=True).stdout
    assert leaked == "", f"the key is in {leaked}"
    assert API_KEY not in subprocess.run(["git", "-C", str(repo), "log", "-p", "--all"], capture_output=True,
                                         text=True).stdout


def test_sisyphus_plans_two_writers_on_subtasks_both_approved_both_merged(prefect_api, uw_home, tmp_path,
                                                                         docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"plan-{uuid.uuid4().hex[:6]}"
    plan = tool_call("submit_plan", summary="Map, then two writers on separate files.", agents=[
        {"agent": "explore", "brief": "Find where names are made and documented."},
        {"agent": "frontend", "brief": "Validate the name in make_widget.", "files": ["widgets/core.py"]},
        {"agent": "frontend-2", "brief": "Document that an empty name raises.", "files": ["docs/guide.md"]},
    ])
    scripts = {
        "sisyphus": [plan],
        "explore": [final_answer("mapped", findings=["make_widget is in widgets/core.py; docs in docs/guide.md"])],
        "frontend": [tool_call("apply_patch", unified_diff=(
            "--- a/widgets/core.py\n+++ b/widgets/core.py\n@@ -1,3 +1,4 @@\n def make_widget(name):\n"
            "-    # TODO: validate name\n+    if not name:\n+        raise ValueError('name')\n"
            "     return {'name': name}\n")), final_answer("validated", ["widgets/core.py"])],
        "frontend-2": [tool_call("write_file", path="docs/guide.md", append=True,
                                 content="make_widget('') raises ValueError.\n"), final_answer("documented")],
    }
    with TeamStandIn(scripts) as server:
        settings = save_settings(server)
        try:
            result = run_sisyphus({"task": "Make empty widget names an error and document it", "repo": str(repo),
                                   "run_id": run_id, "model_settings": settings,
                                   "agent_profiles": {"explore": "model", "frontend": "model"}}, approve_all)
        finally:
            delete_settings(settings)
    assert [o.role for o in result.agents] == ["explore", "frontend", "frontend-2"]
    assert result.outcome == "integrated", result.message
    assert [o.status for o in result.agents] == ["succeeded"] * 3, [o.errors for o in result.agents]
    # each writer got its own brief and files, and the explorer's findings
    first = {name: user_prompt(server.by_agent[name][0]) for name in ("frontend", "frontend-2")}
    assert "Validate the name in make_widget." in first["frontend"] and "docs/guide.md" not in \
        first["frontend"].split("# Your part of the plan")[1].split("# Research findings")[0]
    assert "Document that an empty name raises." in first["frontend-2"]
    assert all("make_widget is in widgets/core.py" in p for p in first.values())
    # each on its own branch; both merged in the recorded order
    assert git(repo, "rev-parse", "--verify", f"refs/heads/ultrawork/{run_id}/frontend-2")
    assert {"frontend", "frontend-2"} <= set(result.merged) and not result.left_out
    integration_stage = json.loads((uw_home / "runs" / run_id / "integration.json").read_text())
    assert integration_stage["order"] == ["explore", "frontend", "frontend-2"]
    assert [r for r in integration_stage["merged"] if r.startswith("frontend")] == ["frontend", "frontend-2"]
    integration = f"ultrawork/{run_id}/integration"
    assert "raise ValueError('name')" in git(repo, "show", f"{integration}:widgets/core.py")
    assert "raises ValueError" in git(repo, "show", f"{integration}:docs/guide.md")
    # the plan: a ledger stage and an artifact
    recorded = json.loads((uw_home / "runs" / run_id / "plan.json").read_text())
    assert recorded["planned_by"] == "openai:standin-model"
    assert [a["agent"] for a in recorded["agents"]] == ["explore", "frontend", "frontend-2"]
    shown = artifacts_text(run_id).replace("\\\\", "")       # the model's text is escaped markdown in the artifact
    assert "Document that an empty name raises." in shown


def test_a_spent_budget_ends_one_agent_with_a_clear_outcome_and_its_siblings_go_on(prefect_api, uw_home, tmp_path,
                                                                                   docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"budget-{uuid.uuid4().hex[:6]}"
    scripts = {
        "explore": [tool_call("list_files", path=".") for _ in range(5)] + [final_answer("never reached")],
        "librarian": [tool_call("read_file", path="pyproject.toml"),
                      final_answer("deps", findings=["attrs>=23"])],
        "frontend": [final_answer("nothing to change", findings=["read the research"])],
    }
    with TeamStandIn(scripts) as server:
        settings = save_settings(server, max_requests=2)
        try:
            result = run_sisyphus({"task": "Look at the widgets", "repo": str(repo), "run_id": run_id,
                                   "agents": list(scripts), "agent_profiles": {r: "model" for r in scripts},
                                   "model_settings": settings, "review_timeout": 2})
        finally:
            delete_settings(settings)
    by_role = {o.role: o for o in result.agents}
    explore = by_role["explore"]
    assert explore.status == "failed"
    assert "BudgetExceeded" in explore.errors[-1] and "max_requests" in explore.errors[-1]
    assert server.turns["explore"] == 2, "a spent budget is not retried"
    assert explore.retries == 0 and explore.usage["requests"] == 2
    assert "budget max_requests reached" in Path(explore.plan_path).read_text()
    assert by_role["librarian"].status == by_role["frontend"].status == "succeeded"
    assert "attrs>=23" in user_prompt(server.by_agent["frontend"][0])
    assert "explore (failed)" in user_prompt(server.by_agent["frontend"][0])


def test_a_model_agent_without_a_model_is_refused_before_anything_starts(prefect_api, uw_home, tmp_path,
                                                                        docker_client):
    from ultrawork.model_agent import ModelConfigError

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"nomodel-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ModelConfigError, match="explore run the model agent, but no model is configured"):
        run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore"], "run_id": run_id,
                      "agent_profiles": {"explore": "model"}})
    assert not (uw_home / "runs" / run_id).exists()
    assert git(repo, "branch", "--list", f"ultrawork/{run_id}/*") == ""


def test_a_failed_model_call_is_retried_and_the_run_budget_stops_a_later_agent(prefect_api, uw_home, tmp_path,
                                                                               docker_client):
    """ModelCallError: the agent runs again (with backoff) and finishes; the run's shared request
    budget, spent by the research, stops the writer before its first request, naming the limit."""
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"retry-{uuid.uuid4().hex[:6]}"
    overloaded = Reply(status=500, text="the stand-in is overloaded")
    scripts = {
        # the transport tries a 500 three times; the third makes a ModelCallError
        "explore": [overloaded, overloaded, overloaded, tool_call("list_files", path="."),
                    final_answer("mapped", findings=["widgets/core.py"])],
        "frontend": [final_answer("never asked")],
    }
    with TeamStandIn(scripts) as server:
        settings = save_settings(server, run_max_requests=5)
        try:
            result = run_sisyphus({"task": "Look at the widgets", "repo": str(repo), "run_id": run_id,
                                   "agents": list(scripts), "agent_profiles": {r: "model" for r in scripts},
                                   "model_settings": settings, "review_timeout": 2})
        finally:
            delete_settings(settings)
    explore, frontend = result.agents
    assert explore.status == "succeeded", explore.errors
    assert explore.retries == 1 and any("ModelCallError" in r for r in explore.recoveries)
    assert "the stand-in is overloaded" in Path(explore.plan_path).read_text()
    assert server.turns["explore"] == 5 and explore.usage["requests"] == 5, "every request sent counts"
    assert frontend.status == "failed" and "run_max_requests" in frontend.errors[-1]
    assert "frontend" not in server.turns, "the writer sent no request past the run's budget"
    assert frontend.usage["requests"] == 0 and frontend.retries == 0


def test_a_resumed_run_does_not_repeat_the_model_calls_of_agents_that_finished(prefect_api, uw_home, tmp_path,
                                                                               docker_client):
    """The run's process is killed after explore finished while librarian waits on the model; the
    resumed run takes explore's outcome (tokens, findings) from the ledger and asks the model nothing
    for it; librarian starts over; the writer gets both researchers' findings."""
    import os
    import sys
    import threading

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"resume-{uuid.uuid4().hex[:6]}"
    release = threading.Event()

    def slow_librarian(name: str, turn: int) -> None:
        if name == "librarian" and turn == 1:
            release.wait(60)                  # the run is killed meanwhile

    scripts = {
        "explore": [tool_call("list_files", path=".", prompt_tokens=150),
                    final_answer("mapped", findings=["explore found widgets/core.py"], prompt_tokens=170)],
        "librarian": [final_answer("never used: its process was killed"),
                      final_answer("deps", findings=["librarian found attrs>=23"])],
        "frontend": [final_answer("nothing to change")],
    }
    ultrawork = str(Path(sys.executable).with_name("ultrawork"))
    with TeamStandIn(scripts, on_request=slow_librarian) as server:
        settings = save_settings(server)
        try:
            params = {"task": "Look at the widgets", "repo": str(repo), "run_id": run_id, "agents": list(scripts),
                      "agent_profiles": {r: "model" for r in scripts}, "model_settings": settings}
            env = {**os.environ, "ULTRAWORK_FAULTS_STATE": str(tmp_path / "faults.json"),
                   "ULTRAWORK_FAULTS": json.dumps([{"at": "stage:agent-finished", "action": "kill_process"}])}
            first = subprocess.run([sys.executable, "-m", "ultrawork.cli.launch", json.dumps(params)], env=env,
                                   capture_output=True, text=True, timeout=240)
            assert first.returncode == -9, first.stdout[-3000:] + first.stderr[-3000:]
            release.set()
            outcomes = sorted(p.stem for p in (uw_home / "runs" / run_id / "outcomes").glob("*.json"))
            assert outcomes == ["explore"]
            explore_turns = server.turns["explore"]

            def review() -> None:
                deadline = time.monotonic() + 240
                while (uw_home / "runs" / run_id / "review.json").exists() is False or \
                        "requested" not in (uw_home / "runs" / run_id / "review.json").read_text():
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.2)
                approve_all(run_id)

            reviewer = threading.Thread(target=review, daemon=True)
            reviewer.start()
            resumed = subprocess.run([ultrawork, "resume", run_id], capture_output=True, text=True,
                                     timeout=300, env=os.environ.copy(), stdin=subprocess.DEVNULL)
            reviewer.join(10)
        finally:
            delete_settings(settings)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "integrated" in resumed.stdout and "model openai:standin-model" in resumed.stdout
    by_role = {p.stem: json.loads(p.read_text()) for p in (uw_home / "runs" / run_id / "outcomes").glob("*.json")}
    assert server.turns["explore"] == explore_turns == 2, "no model call for the agent that had finished"
    assert by_role["explore"]["usage"]["input_tokens"] == 320 and by_role["explore"]["model"]
    assert by_role["librarian"]["status"] == "succeeded" and server.turns["librarian"] == 2
    writer_prompt = user_prompt(server.by_agent["frontend"][0])
    assert "explore found widgets/core.py" in writer_prompt and "librarian found attrs>=23" in writer_prompt


def test_a_planner_that_fails_leaves_the_run_to_the_built_in_rules(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"noplan-{uuid.uuid4().hex[:6]}"
    refused = Reply(status=400, text="the stand-in cannot plan")
    with TeamStandIn({"sisyphus": [refused] * 3}) as server:
        settings = save_settings(server)
        try:
            result = run_sisyphus({"task": "Map the code", "repo": str(repo), "run_id": run_id,
                                   "model_settings": settings, "review_timeout": 2})
        finally:
            delete_settings(settings)
    assert server.turns == {"sisyphus": 1}, "a refused planning request (HTTP 400) is not tried again"
    assert [o.role for o in result.agents] == ["explore"] and result.agents[0].status == "succeeded"
    assert result.agents[0].model is None, "explore ran the built-in offline agent"
    recorded = json.loads((uw_home / "runs" / run_id / "plan.json").read_text())
    assert recorded["planned_by"] == "rules" and [a["agent"] for a in recorded["agents"]] == ["explore"]


def test_an_unusable_default_model_block_leaves_offline_runs_alone_and_refuses_model_agents_by_name(
        prefect_api, uw_home, tmp_path, docker_client, monkeypatch):
    from ultrawork.blocks.model import ModelAgentSettings
    from ultrawork.model_agent import ModelConfigError

    monkeypatch.delenv("UW_TEAM_MISSING_KEY", raising=False)
    repo = make_target_repo(tmp_path / "widgets")
    ModelAgentSettings(model="gpt-test", api_key_env="UW_TEAM_MISSING_KEY").save("default", overwrite=True)
    try:
        offline = run_sisyphus({"task": "Map the code", "repo": str(repo), "run_id": f"off-{uuid.uuid4().hex[:6]}",
                                "review_timeout": 2})
        refused_id = f"nokey-{uuid.uuid4().hex[:6]}"
        with pytest.raises(ModelConfigError, match="UW_TEAM_MISSING_KEY is not set"):
            run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore"], "run_id": refused_id,
                          "agent_profiles": {"explore": "model"}})
    finally:
        ModelAgentSettings.delete("default")
    assert [o.status for o in offline.agents] == ["succeeded"] and offline.outcome == "review-timed-out"
    assert not (uw_home / "runs" / refused_id).exists()


def test_a_plan_names_known_agents_once_and_gives_each_writer_its_own_files():
    from pydantic import ValidationError

    from ultrawork.agents.profiles import DEFAULT_PROFILES
    from ultrawork.agents.team import RunPlan, base_role, with_instances

    ok = RunPlan(summary="s", agents=[{"agent": "explore", "brief": "map"},
                                      {"agent": "frontend", "brief": "a", "files": ["a.py"]},
                                      {"agent": "frontend-2", "brief": "b", "files": ["b.py"]}])
    assert ok.names() == ["explore", "frontend", "frontend-2"] and ok.brief("frontend-2") == "b"
    for bad, named in [
        ([{"agent": "frontend", "brief": "a", "files": ["a.py"]}, {"agent": "frontend-2", "brief": "b", "files": ["a.py"]}],
         "both touch a.py"),
        ([{"agent": "hacker", "brief": "x"}], "unknown agent 'hacker'"),
        ([{"agent": "explore", "brief": "x"}, {"agent": "explore", "brief": "y"}], "each named once"),
        ([{"agent": f"frontend-{n}", "brief": "x"} for n in range(2, 17)] + [{"agent": "frontend", "brief": "x"},
                                                                         {"agent": "explore", "brief": "x"}],
         "1 to 16 agents"),
    ]:
        with pytest.raises(ValidationError, match=named):
            RunPlan(summary="s", agents=bad)
    assert (base_role("frontend-16"), base_role("frontend-17"), base_role("oracle-3")) == \
        ("frontend", "frontend-17", "oracle")
    team = with_instances(dict(DEFAULT_PROFILES), ["frontend", "frontend-2", "oracle-2"])
    assert team["frontend-2"].role == "frontend-2" and team["frontend-2"].workspace_mode == "rw"
    assert team["oracle-2"].workspace_mode == "ro" and "frontend-17" not in with_instances({}, ["frontend-17"])
