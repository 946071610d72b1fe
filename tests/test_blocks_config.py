"""Settings blocks: registered with the CLI, loaded by name, with defaults when none is saved; a saved block is
what the next run uses (limits in the container, caps in the policy)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from flowkit import make_target_repo, run_sisyphus

pytestmark = [pytest.mark.prefect]
PREFECT = str(Path(sys.executable).with_name("prefect"))


@contextmanager
def saved(*blocks):
    """Save blocks as ``default`` for the duration; always delete them (the server is shared by the session)."""
    try:
        for block in blocks:
            block.save("default", overwrite=True)
        yield
    finally:
        for block in blocks:
            try:
                type(block).delete("default")
            except Exception:  # noqa: BLE001 - not saved
                pass


def test_block_register_cli_registers_the_three_block_types(prefect_api):
    from prefect.client.orchestration import get_client

    done = subprocess.run([PREFECT, "block", "register", "-m", "ultrawork.blocks"], capture_output=True, text=True,
                          env={**os.environ, "PREFECT_API_URL": prefect_api}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("Ultrawork Sandbox Settings", "Ultrawork Agent Profiles", "Ultrawork GitHub Settings"):
        assert name in done.stdout
    with get_client(sync_client=True) as client:
        schema = client.get_most_recent_block_schema_for_block_type(
            client.read_block_type_by_slug("ultrawork-sandbox-settings").id).fields
        github = client.read_block_type_by_slug("ultrawork-github-settings")
    assert "Memory limit" in schema["properties"]["memory_mb"]["description"]
    assert github.code_example and "GitHubSettings(" in github.code_example
    assert github.description.startswith("The GitHub repository")


def test_config_falls_back_to_defaults_and_to_the_environment(prefect_api, monkeypatch):
    from ultrawork.agents.profiles import DEFAULT_PROFILES
    from ultrawork.blocks import GitHubSettings
    from ultrawork.runtime.config import load_config

    monkeypatch.delenv("ULTRAWORK_GITHUB_REPOSITORY", raising=False)
    config = asyncio.run(load_config())
    assert config.profiles == DEFAULT_PROFILES and config.caps == {} and config.github is None
    assert config.sources == {"sandbox": "defaults", "agent profiles": "defaults", "github": "not configured"}

    monkeypatch.setenv("ULTRAWORK_GITHUB_REPOSITORY", "env/repo")
    monkeypatch.setenv("ULTRAWORK_GITHUB_TOKEN", "ghp_fromenv")
    assert asyncio.run(load_config()).github.repository == "env/repo"
    with saved(GitHubSettings(repository="block/repo", token="ghp_fromblock", api_url="http://127.0.0.1:9/api")):
        config = asyncio.run(load_config())
    assert config.github.repository == "block/repo" and config.github.api_url == "http://127.0.0.1:9/api"
    assert config.github.token.get_secret_value() == "ghp_fromblock" and "ghp_fromblock" not in repr(config.github)
    assert config.sources["github"] == "block 'default'"


def watch_containers(run_id: str, seen: dict, stop: threading.Event) -> None:
    """Inspect the run's sandbox while it runs."""
    from ultrawork.tasks.sandboxes import engine

    client = engine().client
    while not stop.is_set() and not seen:
        for c in client.containers.list(filters={"label": f"ultrawork.run={run_id}"}):
            seen.update(client.api.inspect_container(c.id)["HostConfig"])
        time.sleep(0.1)


@pytest.mark.docker
def test_saved_blocks_are_what_the_next_run_uses(prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.blocks import AgentProfiles, RoleSettings, SandboxSettings

    repo = make_target_repo(tmp_path / "widgets")
    slow = ["sh", "-c", "sleep 2; exec python3 /agent/builtin_agent.py explore"]

    run_id = f"blk-{uuid.uuid4().hex[:6]}"
    seen: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_containers, args=(run_id, seen, stop), daemon=True)
    with saved(SandboxSettings(memory_mb=200, pids=123, cpus=0.5),
               AgentProfiles(explore=RoleSettings(checklist=["Read the block's checklist"]))):
        watcher.start()
        try:
            result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore"], "run_id": run_id,
                                   "agent_commands": {"explore": slow}, "review_timeout": 1})
        finally:
            stop.set()
            watcher.join(5)
    assert result.agents[0].status == "succeeded", result.agents[0].errors
    assert seen, "the sandbox was seen while it ran"
    assert seen["Memory"] == 200 * 1024 * 1024 and seen["MemorySwap"] == seen["Memory"]
    assert seen["PidsLimit"] == 123 and seen["NanoCpus"] == 500_000_000
    assert "Read the block's checklist" in Path(result.agents[0].plan_path).read_text()

    # Caps: an operator's sandbox settings cap pids at 64; a profile asking for more is refused by the policy.
    run_id = f"cap-{uuid.uuid4().hex[:6]}"
    with saved(SandboxSettings(max_pids=64), AgentProfiles(explore=RoleSettings(pids=500))):
        result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore"], "run_id": run_id,
                               "review_timeout": 1})
    explore = result.agents[0]
    assert explore.status == "failed" and explore.sandboxes_created == 0
    assert "SandboxPolicyError" in explore.errors[0] and "limits.pids" in explore.errors[0]
    assert "500 is outside 8..64" in explore.errors[0]

    # Nothing saved any more: the next run is back to the defaults.
    from ultrawork.runtime.config import load_config
    from ultrawork.agents.profiles import DEFAULT_PROFILES

    assert asyncio.run(load_config()).profiles == DEFAULT_PROFILES
