"""Durable conversations: a retried call, a killed run resumed, and a revise round continue the saved
conversation instead of starting over, so no tool call of a finished turn runs twice.

Real sandboxes, git and Prefect; the model is a stand-in OpenAI server on loopback that answers
from the conversation it receives (how many tool results it holds), as a model would: a
conversation started over would get the first tool call again.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import test_model_team as team
from flowkit import git, make_target_repo, run_sisyphus
from openai_standin import Reply, final_answer, tool_call

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
ADDED = "def added():\n    return 1\n"


def tool_results(body: dict) -> int:
    return sum(1 for m in body.get("messages", []) if m.get("role") == "tool")


def user_messages(body: dict) -> list[str]:
    return [str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user"]


class ConversationStandIn(team.TeamStandIn):
    """Replies by agent and by the number of tool results in the conversation: ``replies[agent][n]``.
    ``before(agent, n, body)`` may return a reply that answers instead (a failure), or None."""

    def __init__(self, replies: dict[str, list[Reply]], before=None) -> None:
        super().__init__({})
        self.replies, self.before = replies, before

    def _answer(self, path, headers, body):
        system = " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")
        match = team.WHO.search(system)
        name = (match.group(1) or "sisyphus") if match else "?"
        n = tool_results(body)
        with self._lock:
            self.turns[name] = self.turns.get(name, 0) + 1
            self.by_agent.setdefault(name, []).append(body)
        instead = self.before(name, n, body) if self.before else None
        script = self.replies[name]
        return render(name, self.turns[name], instead or script[min(n, len(script) - 1)])


def render(name: str, turn: int, reply: Reply) -> tuple[int, dict]:
    if reply.status != 200:
        return reply.status, {"error": {"message": reply.text or "error", "type": "server_error"}}
    message = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["tool_calls"] = [{"id": f"call_{name}_{turn}_{i}", "type": "function",
                                  "function": {"name": tool, "arguments": json.dumps(arguments)}}
                                 for i, (tool, arguments) in enumerate(reply.tool_calls)]
    return 200, {"id": f"chatcmpl-{name}-{turn}", "object": "chat.completion", "created": int(time.time()),
                 "model": "standin-model", "choices": [{"index": 0, "message": message, "finish_reason":
                                                        "tool_calls" if reply.tool_calls else "stop"}],
                 "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                           "total_tokens": reply.prompt_tokens + reply.completion_tokens}}


def test_a_500_after_an_edit_leaves_the_edit_once(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"durable-{uuid.uuid4().hex[:6]}"
    failures = []

    def overloaded_after_the_edit(name: str, n: int, body: dict):
        if name == "frontend" and n == 1 and len(failures) < 3:      # three 500s: the call fails, the task retries
            failures.append(body)
            return Reply(status=500, text="the stand-in is overloaded")
        return None

    replies = {"frontend": [tool_call("write_file", path="widgets/extra.py", content=ADDED, append=True),
                            final_answer("added", ["widgets/extra.py"])]}
    with ConversationStandIn(replies, overloaded_after_the_edit) as server:
        settings = team.save_settings(server, attempts=3)
        try:
            result = run_sisyphus({"task": "Add a helper", "repo": str(repo), "run_id": run_id,
                                   "agents": ["frontend"], "agent_profiles": {"frontend": "model"},
                                   "model_settings": settings}, team.approve_all)
        finally:
            team.delete_settings(settings)
    frontend = result.agents[0]
    assert result.outcome == "integrated", result.message
    assert frontend.retries == 1 and any("ModelCallError" in r for r in frontend.recoveries)
    bodies = server.by_agent["frontend"]
    assert [tool_results(b) for b in bodies] == [0, 1, 1, 1, 1], "the retry sent the saved conversation again"
    assert bodies[-1]["messages"] == bodies[1]["messages"]
    text = git(repo, "show", f"ultrawork/{run_id}/integration:widgets/extra.py")
    assert text.count("def added") == 1, text
    assert frontend.usage["requests"] == 5
    plan = Path(frontend.plan_path).read_text()
    assert "continues its conversation after a failed model call" in plan
    assert "def added():" in plan and base64.b64encode(ADDED.encode()).decode() not in plan   # readable, not base64


def test_a_run_killed_mid_agent_resumes_its_conversation(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"durable-{uuid.uuid4().hex[:6]}"
    child: list[subprocess.Popen] = []
    killed = threading.Event()

    def kill_after_two_turns(name: str, n: int, body: dict):
        if name == "frontend" and n == 2 and not killed.is_set():
            killed.set()
            child[0].send_signal(signal.SIGKILL)
            time.sleep(1)
            return Reply(status=500, text="nobody is listening")
        return None

    replies = {"frontend": [tool_call("write_file", path="notes.md", content="- first\n", append=True),
                           tool_call("read_file", path="README.md"),
                           final_answer("mapped", findings=["README.md names docs/guide.md"])]}
    params = {"task": "Map the code", "repo": str(repo), "agents": ["frontend"], "run_id": run_id,
              "agent_profiles": {"frontend": "model"}, "review_timeout": 2}
    ultrawork = str(Path(sys.executable).with_name("ultrawork"))
    with ConversationStandIn(replies, kill_after_two_turns) as server:
        settings = team.save_settings(server)
        params["model_settings"] = settings
        try:
            with open(tmp_path / "first.log", "ab") as log:
                child.append(subprocess.Popen([sys.executable, "-m", "ultrawork.cli.launch", json.dumps(params)],
                                              stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()))
                assert child[0].wait(240) == -9, (tmp_path / "first.log").read_text()[-3000:]
            before = len(server.by_agent["frontend"])
            resumed = subprocess.run([ultrawork, "resume", run_id],
                                     capture_output=True, text=True, timeout=300, env=os.environ.copy(),
                                     stdin=subprocess.DEVNULL)
        finally:
            team.delete_settings(settings)
    assert resumed.returncode == 6, resumed.stdout + resumed.stderr      # finished; nobody reviewed within 2 s
    bodies = server.by_agent["frontend"]
    assert [tool_results(b) for b in bodies[:before]] == [0, 1, 2]
    after = bodies[before:]
    assert after and [tool_results(b) for b in after] == [2], "the resumed run sent the saved conversation"
    assert after[0]["messages"] == bodies[before - 1]["messages"]
    assert all(len(user_messages(b)) == 1 for b in bodies)
    notes = git(repo, "show", f"ultrawork/{run_id}/frontend:notes.md")
    assert notes == "- first", "the finished turn's write did not run again"
    outcome = json.loads((uw_home / "runs" / run_id / "outcomes" / "frontend.json").read_text())
    assert outcome["status"] == "succeeded"
    assert "continues its saved conversation" in Path(outcome["plan_path"]).read_text()


def test_a_revise_round_continues_the_conversation_with_the_comment(prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.cli.runs import run_status, submit_review

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"durable-{uuid.uuid4().hex[:6]}"
    comment = "Map the docs folder too."

    def second_round(name: str, n: int, body: dict):
        if name == "explore" and any(comment in m for m in user_messages(body)):
            return final_answer("mapped the docs too", findings=["docs/guide.md"])
        return None

    def revise_then_approve(rid: str) -> None:
        submit_review(rid, [], [], again={"explore": ("revise", comment)})
        deadline = time.monotonic() + 180
        while not ((s := run_status(rid, with_state=False)).review == "requested" and s.review_round == 2):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        submit_review(rid, ["explore"], [])

    replies = {"explore": [tool_call("list_files", path="."), final_answer("mapped", findings=["core.py"])]}
    with ConversationStandIn(replies, second_round) as server:
        settings = team.save_settings(server)
        try:
            result = run_sisyphus({"task": "Map the code", "repo": str(repo), "run_id": run_id,
                                   "agents": ["explore"], "agent_profiles": {"explore": "model"},
                                   "model_settings": settings}, revise_then_approve)
        finally:
            team.delete_settings(settings)
    bodies = server.by_agent["explore"]
    assert len(bodies) == 3
    round_two = bodies[2]
    users = user_messages(round_two)
    assert len(users) == 2 and "Map the code" in users[0]
    assert comment in users[1] and "Map the code" not in users[1], "round 2 sends the comment, not the task again"
    assert tool_results(round_two) >= 1, "round 1's tool calls and their results are in the conversation"
    assert result.agents[0].round == 2 and result.agents[0].usage["requests"] == 3
