"""Claude Code in a run, given ultrawork's MCP server by its profile, calls one of its tools.

The model is the TLS stand-in of ``test_agents_e2e`` (its lab fixture, with this
module's script): it asks for the MCP tool ``list_sandboxes``; the CLI reaches
the server through ``/mcp`` (no network), and the tool's answer -- the run's own
sandboxes, the server being bound to this agent of the run -- comes back to the model.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from flowkit import make_target_repo, run_sisyphus
from test_agents_e2e import _delete_block, _record_count, _records, _leftovers, lab_env, model_lab  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

FINAL_TEXT = "Listed the run's sandboxes."
MODEL_SCRIPT = [
    {"content": [{"type": "tool_use", "name": "mcp__ultrawork__list_sandboxes", "input": {}}]},
    {"content": [{"type": "text", "text": FINAL_TEXT}]},
]


def test_claude_code_calls_the_runs_mcp_server_through_its_socket(prefect_api, uw_home, tmp_path, docker_client,
                                                                 model_lab, lab_env):  # noqa: F811
    from ultrawork.blocks import AgentProfiles, RoleSettings

    repo = make_target_repo(tmp_path / "greeter", {"app.py": 'def greet():\n    return "hello"\n'})
    run_id = f"e2m-{uuid.uuid4().hex[:6]}"
    AgentProfiles(explore=RoleSettings(profile="claude-code", mcp_servers=["ultrawork"])).save("default", overwrite=True)
    seen = _record_count(model_lab)
    try:
        result = run_sisyphus({"task": "List the sandboxes of this run", "repo": str(repo), "agents": ["explore"],
                               "run_id": run_id, "review_timeout": 2})
    finally:
        _delete_block("default")
    explore = result.agents[0]
    assert explore.status == "succeeded", (explore.errors, Path(explore.plan_path).read_text()[-2000:])
    turns = [r for r in _records(model_lab, seen) if r["path"].split("?")[0] == "/v1/messages"
             and r["body"].get("tools")]
    offered = {tool["name"] for tool in turns[0]["body"]["tools"]}
    assert {"mcp__ultrawork__list_sandboxes", "mcp__ultrawork__execute_in_sandbox"} <= offered
    answer = [b for b in turns[1]["body"]["messages"][-1]["content"] if b.get("type") == "tool_result"][0]
    text = json.dumps(answer["content"])
    assert not answer.get("is_error"), text
    assert run_id in text and "explore" in text          # the run's own sandbox, seen by its bound server
    assert FINAL_TEXT in Path(explore.plan_path).read_text()
    assert _leftovers(docker_client, run_id) == []
    assert not (uw_home / "runs" / run_id / "mcp").exists()
