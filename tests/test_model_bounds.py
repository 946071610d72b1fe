"""Every model call is bounded in time: a planner that never answers leaves the run to the built-in rules
within its bound, by the per-attempt read timeout and the attempts, or by planning's own bound.

Real sandboxes, git and Prefect; the model is the stand-in OpenAI server on loopback, whose
planning replies never come.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

import test_model_team as team
from flowkit import make_target_repo, run_sisyphus
from openai_standin import final_answer

pytestmark = [pytest.mark.docker, pytest.mark.prefect]


class SilentPlanner(team.TeamStandIn):
    """The planner's requests hang until the test ends; the agents' are answered. Records when each came."""

    def __init__(self, scripts):
        self.release = threading.Event()
        self.arrivals: list[tuple[str, float]] = []
        super().__init__(scripts, on_request=self._on_request)

    def _on_request(self, name: str, turn: int) -> None:
        self.arrivals.append((name, time.monotonic()))
        if name == "sisyphus":
            self.release.wait(300)

    def __exit__(self, *exc):
        self.release.set()
        super().__exit__(*exc)


@pytest.mark.parametrize("bounds, planning_requests, bound", [
    ({"request_timeout": 2, "attempts": 2, "plan_max_seconds": 600}, 2, 2 * 2 + 2),   # each attempt's read timeout
    ({"request_timeout": 600, "attempts": 3, "plan_max_seconds": 3}, 1, 3),           # planning's own bound
], ids=["read-timeout-and-attempts", "plan-max-seconds"])
def test_a_planner_that_never_answers_falls_back_to_the_rules_within_its_bound(
        prefect_api, uw_home, tmp_path, docker_client, bounds, planning_requests, bound):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"bound-{uuid.uuid4().hex[:6]}"
    with SilentPlanner({"explore": [final_answer("mapped", findings=["widgets/core.py"])]}) as server:
        settings = team.save_settings(server, **bounds)
        try:
            started, wall = time.monotonic(), time.time()
            result = run_sisyphus({"task": "Map the code", "repo": str(repo), "run_id": run_id,
                                   "model_settings": settings, "agent_profiles": {"explore": "model"},
                                   "review_timeout": 2})
            took = time.monotonic() - started
        finally:
            team.delete_settings(settings)
    planned = [t for name, t in server.arrivals if name == "sisyphus"]
    assert len(planned) == planning_requests, server.arrivals
    first_agent = next(t for name, t in server.arrivals if name == "explore")
    # from the first planning request to the first agent request: the bound, plus the agent's setup
    assert first_agent - planned[0] < bound + 15, (first_agent - planned[0], took)
    assert [o.role for o in result.agents] == ["explore"] and result.agents[0].status == "succeeded"
    recorded = json.loads((uw_home / "runs" / run_id / "plan.json").read_text())
    assert recorded["planned_by"] == "rules"
    print(f"planning gave up after {first_agent - planned[0]:.1f}s (first planning request to first agent "
          f"request); run {took:.1f}s")
    logs = team.logs_since(wall, "planning failed")
    assert any("planning failed, the built-in rules choose the agents instead" in m for m in logs)
