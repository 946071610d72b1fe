"""Everything read from an agent is bounded before it is held: Plan.md, errors, artifacts.

A read-only agent writes a 48 MiB Plan.md and fails with 4 MiB of stderr; its sibling is a plain
reader. The run reaches its review with both outcomes; what the host holds and shows of the
flooding agent stays under its caps, and the artifact names the command that shows the rest.
"""

from __future__ import annotations

import time
import uuid

import pytest

from flowkit import make_target_repo, run_sisyphus
from ultrawork.untrusted import ARTIFACT_BYTES, Untrusted

FLOOD = ["sh", "-c", "printf '\\n## Findings\\n\\nthe flood begins\\n' >> /plan/Plan.md; "
                     "head -c 50331648 /dev/zero | tr '\\0' 'x' >> /plan/Plan.md; "
                     "head -c 4194304 /dev/zero | tr '\\0' 'e' >&2; exit 1"]


def test_a_plan_artifact_is_cut_at_its_cap_and_names_the_command_for_the_rest():
    from ultrawork.runtime.artifacts import plan_markdown

    shown = plan_markdown("explore", Untrusted("## Findings\n" + "x" * (3 << 20)), "/runs/r1/plans/explore/Plan.md")
    assert len(shown.encode()) <= ARTIFACT_BYTES
    assert "`cat /runs/r1/plans/explore/Plan.md`" in shown and shown.count("```") == 2


@pytest.mark.docker
@pytest.mark.prefect
def test_a_flooding_agent_is_held_within_its_caps_and_its_sibling_reaches_the_review(
        prefect_api, uw_home, tmp_path, docker_client):
    from test_hostile_output import PeakRss, rss_mb
    from test_review_conflicts_and_checks import artifact

    import ultrawork.flows.sisyphus  # noqa: F401 - imported before the memory baseline
    from ultrawork.runtime.environment import ERROR_BYTES

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"bound-{uuid.uuid4().hex[:6]}"
    sampler, before = PeakRss(), rss_mb()
    sampler.start()
    started = time.monotonic()
    result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore", "librarian"],
                           "run_id": run_id, "agent_commands": {"explore": FLOOD}, "review_timeout": 2})
    wall = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    by_role = {o.role: o for o in result.agents}
    plan = artifact(f"plan-{run_id}-explore")
    print(f"flooding agent: run {wall:.1f}s, orchestrator RSS {before:.0f} -> peak {sampler.peak:.0f} MB, plan artifact {len(plan.encode())} bytes, "
          f"errors {[len(e) for e in by_role['explore'].errors]} characters, "
          f"summary {len(by_role['explore'].plan_summary)} characters")

    assert result.outcome == "review-timed-out", result.message          # the run went on to its review
    assert sampler.peak - before <= 100, f"the orchestrator grew {sampler.peak - before:.0f} MB"
    assert by_role["librarian"].status == "succeeded" and by_role["explore"].status == "failed"
    assert all(len(e.encode()) <= ERROR_BYTES + 200 for e in by_role["explore"].errors), "errors held whole"
    assert "the flood begins" in by_role["explore"].plan_summary
    assert len(plan.encode()) <= ARTIFACT_BYTES, f"a plan artifact of {len(plan.encode())} bytes"
    assert "the flood begins" in plan and f"cat {by_role['explore'].plan_path}" in plan
