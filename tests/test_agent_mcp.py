"""ultrawork's MCP server offered to an agent of a run, and restarted when it dies mid-step.

The agent here is an MCP client speaking the protocol over ``/mcp/relay.py``
(as a CLI's stdio server command would); the server is the real
``ultrawork.sandbox.mcp_server`` bound to that agent of the run, on the host.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from flowkit import make_target_repo, run_sisyphus

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

# (a command template: no braces, they would be placeholders)
MCP_CLIENT = r'''
import json, subprocess, sys, time
relay = subprocess.Popen(["python3", "/mcp/relay.py", "/mcp/ultrawork.sock"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
def send(message):
    relay.stdin.write((json.dumps(message) + "\n").encode())
    relay.stdin.flush()
def answer():
    line = relay.stdout.readline()
    return json.loads(line) if line else None
try:
    send(dict(jsonrpc="2.0", id=1, method="initialize", params=dict(
        protocolVersion="2025-06-18", capabilities=dict(), clientInfo=dict(name="agent", version="1"))))
    answer()
    send(dict(jsonrpc="2.0", method="notifications/initialized"))
    send(dict(jsonrpc="2.0", id=2, method="tools/list"))
    tools = answer()
    print("MCP tools " + ",".join(sorted(t["name"] for t in tools["result"]["tools"])), flush=True)
    time.sleep(4)
    send(dict(jsonrpc="2.0", id=3, method="tools/call", params=dict(name="list_sandboxes", arguments=dict())))
    listed = answer()
    print("MCP list_sandboxes " + ("ok" if listed and "result" in listed else "failed"), flush=True)
except Exception as exc:
    print("MCP client saw " + type(exc).__name__, flush=True)
try:
    relay.stdin.close()
except Exception:
    pass
relay.wait(10)
'''


def _delete_block(name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, block_type_slug="ultrawork-agent-profiles")
        except Exception:  # noqa: BLE001 - already gone
            return
        client.delete_block_document(document.id)


def test_an_mcp_server_killed_mid_step_is_restarted_and_the_step_retried(prefect_api, uw_home, tmp_path,
                                                                          docker_client):
    from ultrawork.blocks import AgentProfiles, RoleSettings
    from ultrawork.sandbox.mcp_bridge import bridge_for

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"mcp-{uuid.uuid4().hex[:6]}"
    killed: list[int] = []
    seen: dict = {}
    done = threading.Event()

    def kill_first_server() -> None:   # SIGKILL the first server once it has answered for a while
        while not done.is_set():
            bridge = bridge_for(run_id, "explore")
            if bridge is not None:
                seen["bridge"] = bridge
                for pid, proc in list(bridge.servers.items()):
                    if not killed and time.monotonic() - seen.setdefault(pid, time.monotonic()) > 2.5:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.05)

    AgentProfiles(explore=RoleSettings(mcp_servers=["ultrawork"])).save("default", overwrite=True)
    watcher = threading.Thread(target=kill_first_server, daemon=True)
    watcher.start()
    try:
        result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore"], "run_id": run_id,
                               "agent_commands": {"explore": ["python3", "-c", MCP_CLIENT]}, "review_timeout": 2})
    finally:
        done.set()
        watcher.join(5)
        _delete_block("default")
    explore = result.agents[0]
    assert killed, "the watcher killed the first MCP server"
    assert explore.status == "succeeded", explore.errors
    assert "McpError: restart the MCP server, then retry" in explore.recoveries
    plan = Path(explore.plan_path).read_text()
    assert "McpError" in plan and "exited (-9) while its client was connected" in plan
    assert plan.count("MCP tools ") >= 2 and "create_sandbox" in plan and "execute_in_sandbox" in plan
    assert "MCP list_sandboxes ok" in plan          # the retried step's fresh server answered
    bridge = seen["bridge"]
    assert bridge.started == 2 and not bridge.servers
    assert not (uw_home / "runs" / run_id / "mcp").exists() or not any((uw_home / "runs" / run_id / "mcp").iterdir())
    assert bridge_for(run_id, "explore") is None
