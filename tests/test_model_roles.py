"""A model per role: a cheap one for research, a strong one for the writers.

Real sandboxes, git and Prefect; the model is the stand-in OpenAI server on loopback, which
records the model each request names.
"""

from __future__ import annotations

import uuid

import pytest

import test_model_team as team
from flowkit import make_target_repo, run_sisyphus
from openai_standin import final_answer

pytestmark = [pytest.mark.docker, pytest.mark.prefect]


def test_a_role_block_and_a_role_model_choose_each_agents_model(prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.blocks.model import ModelAgentSettings

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"roles-{uuid.uuid4().hex[:6]}"
    roles = ["explore", "librarian", "frontend"]
    scripts = {r: [final_answer(f"{r} done", findings=[f"{r} looked"])] for r in roles}
    with team.TeamStandIn(scripts) as server:
        settings = team.save_settings(server)           # the run's model: standin-model
        ModelAgentSettings(provider="openai", model="cheap-model", base_url=server.base_url, api_key=team.API_KEY,
                           input_price_per_million=0.1).save(f"{settings}-explore", overwrite=True)
        try:
            result = run_sisyphus({"task": "Look and fix", "repo": str(repo), "run_id": run_id, "agents": roles,
                                   "agent_profiles": {r: "model" for r in roles}, "model_settings": settings,
                                   "role_models": {"frontend": "strong-model"}, "review_timeout": 2})
        finally:
            team.delete_settings(settings)
            team.delete_settings(f"{settings}-explore")
    sent = {name: {body["model"] for body in bodies} for name, bodies in server.by_agent.items()}
    assert sent == {"explore": {"cheap-model"}, "librarian": {"standin-model"}, "frontend": {"strong-model"}}
    models = {o.role: o.model for o in result.agents}
    assert models == {"explore": "openai:cheap-model", "librarian": "openai:standin-model",
                      "frontend": "openai:strong-model"}
    by_role = {o.role: o for o in result.agents}
    assert by_role["explore"].usage["cost"] == pytest.approx(100 * 0.1 / 1e6)     # the role block's price
    assert by_role["librarian"].usage["cost"] is None


def test_a_model_for_an_unknown_role_is_refused_before_anything_starts(prefect_api, uw_home, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = make_target_repo(tmp_path / "widgets")
    done = subprocess.run([str(Path(sys.executable).with_name("ultrawork")), "run", "--repo", str(repo), "--task",
                           "Map the code", "--model", "planner=big-model"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown role 'planner'" in done.stderr, done.stderr
    assert not (uw_home / "runs").exists()
