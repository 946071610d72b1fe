"""A real coding-agent CLI in its agent image: built offline, hardened, and finishing a scripted edit.

The model is the stand-in of ``tests/model_standin.py``, run in a container on
an internal Docker network this test creates; the CLI runs in a sandbox made by
``SandboxEngine`` on that network with a placeholder key.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ultrawork.agents.profiles import UnknownRoleError, cli_profile
from ultrawork.sandbox import Limits, SandboxPolicy, SandboxSpec
from ultrawork.sandbox.agent_image import AGENT_CLIS, UnknownAgentCli, agent_image, build_agent_image, dockerfile
from ultrawork.sandbox.spec import DEFAULT_IMAGE

from conftest import IN_CI

STANDIN = Path(__file__).with_name("model_standin.py")
PLACEHOLDER_KEY = "uw-placeholder-not-a-key"
TASK = 'Change greet() in app.py so that it returns "hello, world".'
FINAL_TEXT = "Done: greet() now returns hello, world."
SCRIPT = [  # what the stand-in model answers to the agent's turns, in order
    {"content": [{"type": "tool_use", "name": "Read", "input": {"file_path": "/agent/prompt.md"}}]},
    {"content": [{"type": "tool_use", "name": "Read", "input": {"file_path": "/workspace/app.py"}}]},
    {"content": [{"type": "tool_use", "name": "Edit", "input": {
        "file_path": "/workspace/app.py", "old_string": 'return "hello"', "new_string": 'return "hello, world"'}}]},
    {"content": [{"type": "text", "text": FINAL_TEXT}]},
]


# -- no engine needed -----------------------------------------------------------------
def test_unknown_cli_is_refused_by_name_before_anything():
    from ultrawork.cli.main import app

    result = CliRunner().invoke(app, ["sandbox", "build", "--agent", "vim"])
    assert result.exit_code == 2
    assert "--agent must be one of claude-code, codex, opencode, not 'vim'" in result.output
    with pytest.raises(UnknownAgentCli, match="unknown agent CLI 'vim'"):
        build_agent_image("vim")
    with pytest.raises(ValueError, match="no command template for CLI 'vim'"):
        cli_profile("frontend", "vim")
    with pytest.raises(UnknownRoleError):
        cli_profile("painter", "claude-code")


def test_dockerfile_only_copies_onto_the_local_base_and_the_tag_follows_the_inputs(monkeypatch):
    for name, cli in AGENT_CLIS.items():
        lines = dockerfile(cli).splitlines()
        assert lines[0] == f"FROM {DEFAULT_IMAGE}"
        assert {line.split()[0] for line in lines[1:]} <= {"COPY", "ENV", "LABEL"}, name   # no RUN: nothing fetched
        assert "://" not in dockerfile(cli)
        assert agent_image(name).startswith(f"ultrawork-agent-{name}:{cli.version}-")
    before = agent_image("claude-code")
    assert agent_image("claude-code") == before
    monkeypatch.setitem(AGENT_CLIS, "claude-code", AGENT_CLIS["claude-code"].__class__(
        **{**AGENT_CLIS["claude-code"].__dict__, "version": "2.1.111"}))
    assert agent_image("claude-code") != before
    profile = cli_profile("frontend", "claude-code")
    assert profile.image == agent_image("claude-code") and profile.workspace_mode == "rw"
    assert profile.network == "none"


def test_standin_streams_the_script_to_agent_turns_and_records_every_request():
    import requests

    from model_standin import ModelStandin

    turn = {"model": "m", "max_tokens": 10, "tools": [{"name": "Read"}], "messages": [{"role": "user", "content": "hi"}]}
    with ModelStandin(SCRIPT[:1] + SCRIPT[-1:]) as server:
        side = requests.post(f"{server.url}/v1/messages", json={"model": "m", "messages": []}, timeout=10).json()
        stream = requests.post(f"{server.url}/v1/messages?beta=true", json={**turn, "stream": True},
                               headers={"x-api-key": PLACEHOLDER_KEY}, timeout=10)
        plain = requests.post(f"{server.url}/v1/messages", json=turn, timeout=10).json()
        count = requests.post(f"{server.url}/v1/messages/count_tokens", json=turn, timeout=10)
        missing = requests.get(f"{server.url}/v1/models", timeout=10)
        records = server.records
    assert side["content"] == [{"type": "text", "text": "ok"}]          # a side request leaves the script alone
    assert stream.headers["content-type"] == "text/event-stream"
    events = [line.split(": ", 1)[1] for line in stream.text.splitlines() if line.startswith("event: ")]
    assert events == ["message_start", "ping", "content_block_start", "content_block_delta",
                      "content_block_stop", "message_delta", "message_stop"]
    data = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: ")]
    assert data[2]["content_block"]["name"] == "Read" and data[5]["delta"]["stop_reason"] == "tool_use"
    assert json.loads(data[3]["delta"]["partial_json"]) == {"file_path": "/agent/prompt.md"}
    assert plain["content"] == SCRIPT[-1]["content"] and plain["stop_reason"] == "end_turn"
    assert count.json() == {"input_tokens": 100} and missing.status_code == 404
    assert [(r["method"], r["path"]) for r in records] == [
        ("POST", "/v1/messages"), ("POST", "/v1/messages?beta=true"), ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"), ("GET", "/v1/models")]
    assert records[1]["headers"]["x-api-key"] == PLACEHOLDER_KEY and records[1]["body"]["stream"] is True


# -- with the engine ------------------------------------------------------------------
@pytest.fixture(scope="module")
def claude_image(docker_client) -> str:
    if not shutil.which("npm"):
        if IN_CI:
            pytest.fail("CI=true and no npm: agent images install their CLI with the machine's npm")
        pytest.skip("no npm on this machine")
    return build_agent_image("claude-code", say=lambda line: None).tag


@pytest.mark.docker
def test_agent_image_is_cached_keeps_the_base_contract_and_runs_hardened_offline(claude_image, engine, run_id,
                                                                                 docker_client):
    again = build_agent_image("claude-code", say=lambda line: None)
    assert again.cached and again.tag == claude_image and again.seconds < 5
    config = docker_client.images.get(claude_image).attrs["Config"]
    assert config["User"] == "1000:1000" and config["WorkingDir"] == "/workspace"
    assert "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1" in config["Env"]

    sandbox = engine.create(SandboxSpec(image=claude_image, role="frontend", run_id=run_id))  # network none
    try:
        version = engine.execute(sandbox, ["claude", "--version"], timeout=60)
        assert version.exit_code == 0 and version.stdout.strip() == f"{AGENT_CLIS['claude-code'].version} (Claude Code)"
        helptext = engine.execute(sandbox, ["claude", "--help"], timeout=60)
        assert "--permission-mode" in helptext.stdout and "--no-session-persistence" in helptext.stdout
        base = engine.execute(sandbox, ["sh", "-c", "id -u; python3 -c 'print(1)'; git --version; "
                                        "touch /usr/local/bin/x 2>&1 || echo read-only"], timeout=60)
        lines = base.stdout.splitlines()
        assert lines[0] == "1000" and lines[1] == "1" and lines[2].startswith("git version")
        assert lines[-1] == "read-only"
    finally:
        engine.cleanup(sandbox)


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(block.get("text", "") for block in content)


def _start_standin(client, network: str, folder: Path, run_id: str):
    """The stand-in model in a hardened container on ``network``, reachable as ``model-standin``."""
    api = client.api
    host_config = api.create_host_config(
        binds={str(folder / "standin"): {"bind": "/standin", "mode": "ro"},
               str(folder / "records"): {"bind": "/records", "mode": "rw"}},
        read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], pids_limit=64,
        mem_limit="128m", network_mode=network, init=True)
    created = api.create_container(
        DEFAULT_IMAGE, ["python3", "/standin/model_standin.py", "--port", "8080", "--script",
                        "/standin/script.json", "--record", "/records/requests.jsonl"],
        user="1000:1000", host_config=host_config, labels={"ultrawork.test": run_id},
        networking_config=api.create_networking_config(
            {network: api.create_endpoint_config(aliases=["model-standin", "api.anthropic.com"])}))
    container = client.containers.get(created["Id"])
    container.start()
    deadline = time.monotonic() + 30
    while b"listening" not in container.logs():
        assert time.monotonic() < deadline, f"the stand-in did not start: {container.logs()!r}"
        time.sleep(0.2)
    return container


@pytest.mark.docker
def test_claude_code_finishes_a_scripted_edit_against_the_standin_model(claude_image, engine, run_id,
                                                                        docker_client, sandbox_root, tmp_path):
    folder = tmp_path / "model"
    (folder / "standin").mkdir(parents=True)
    (folder / "records").mkdir()
    os.chmod(folder / "records", 0o777)
    shutil.copy(STANDIN, folder / "standin" / "model_standin.py")
    (folder / "standin" / "script.json").write_text(json.dumps(SCRIPT))
    workspace = sandbox_root / "workspace"
    workspace.mkdir()
    (workspace / "app.py").write_text('def greet():\n    return "hello"\n')
    for path in (workspace, workspace / "app.py"):
        os.chown(path, 1000, 1000) if os.geteuid() == 0 else os.chmod(path, 0o777)

    network = docker_client.networks.create(f"uw-agentcli-{run_id}", driver="bridge", internal=True,
                                            labels={"ultrawork.test": run_id})
    standin = sandbox = None
    try:
        standin = _start_standin(docker_client, network.name, folder, run_id)
        engine.policy = SandboxPolicy(workspace_roots=[sandbox_root], allowed_networks=["none", network.name])
        profile = cli_profile("frontend", "claude-code", network=network.name, limits=Limits(memory_mb=1024))
        sandbox = engine.create(SandboxSpec(
            image=profile.image, role=profile.role, run_id=run_id, workspace=workspace,
            workspace_mode=profile.workspace_mode, network=profile.network, limits=profile.limits,
            env={"ANTHROPIC_BASE_URL": "http://model-standin:8080", "ANTHROPIC_API_KEY": PLACEHOLDER_KEY},
            allow_env=["ANTHROPIC_API_KEY"]))
        engine.deploy(sandbox, files={"prompt.md": TASK + "\n"})
        result = engine.execute(sandbox, profile.argv(run_id), timeout=240)
        engine.cleanup(sandbox)   # every process of the sandbox is gone before the host reads its work
        sandbox = None
    finally:
        if sandbox is not None:
            engine.cleanup(sandbox)
        if standin is not None:
            standin.remove(force=True)
        network.remove()

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert FINAL_TEXT in result.stdout
    assert (workspace / "app.py").read_text() == 'def greet():\n    return "hello, world"\n'

    records = [json.loads(line) for line in (folder / "records" / "requests.jsonl").read_text().splitlines()]
    calls = [r for r in records if r["method"] == "POST" and r["path"].split("?")[0] == "/v1/messages"]
    turns = [r for r in calls if r["body"].get("tools")]
    assert len(turns) == len(SCRIPT), [r["path"] for r in records]
    assert {r["path"].split("?")[0] for r in records} <= {"/", "/v1/messages", "/v1/messages/count_tokens"}
    assert all(r["headers"].get("x-api-key") == PLACEHOLDER_KEY for r in calls)
    assert all(r["body"].get("stream") is True for r in turns)
    first = json.dumps(turns[0]["body"]["messages"])
    assert "Read /agent/prompt.md and do the task" in first      # the profile's command reached the model
    second = turns[1]["body"]["messages"][-1]["content"]
    results = [block for block in second if block.get("type") == "tool_result"]
    assert results and TASK in _text(results[0]["content"])  # and so did the task, read from the prompt file
    edit_result = [b for b in turns[3]["body"]["messages"][-1]["content"] if b.get("type") == "tool_result"]
    assert edit_result and not edit_result[0].get("is_error"), edit_result
