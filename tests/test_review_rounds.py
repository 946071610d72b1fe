"""Review rounds: a reviewer sends an agent back with a comment, or retries a failed one; it runs
again on its branch with the comment in its prompt, and the run asks for review again."""

from __future__ import annotations

import json
import uuid

import pytest

from flowkit import git, make_target_repo, run_sisyphus

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

COMMENT = "Add a docstring to make_widget, please."
RETRY = "look again at the layout"
# each round the writer keeps the prompt it got and adds one line to a file on its branch
WRITER = ["sh", "-c", "cat /agent/prompt.md >> /plan/prompts.log && echo '=====' >> /plan/prompts.log "
                      "&& echo round >> widgets/rounds.txt"]
# the researcher fails unless its prompt asks it to look again
RESEARCHER = ["sh", "-c", f"grep -q '{RETRY}' /agent/prompt.md || {{ echo 'nothing found' >&2; exit 3; }}"]


def test_a_revised_writer_runs_again_with_the_comment_and_a_failed_agent_is_retried(
        prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.cli.runs import ReviewRejected, run_status, submit_review

    repo = make_target_repo(tmp_path / "widgets")
    base = git(repo, "rev-parse", "HEAD")
    run_id = f"rr-{uuid.uuid4().hex[:6]}"
    seen: dict = {}

    def review(rid: str) -> None:
        # round 1: the writer succeeded, the researcher failed
        first = run_status(rid, with_state=False)
        seen["first"] = {a.role: a.outcome for a in first.agents}
        submit_review(rid, [], [], again={"frontend": ("revise", COMMENT), "explore": ("retry", RETRY)})
        # round 2: the run asks again, for the same agents
        import time

        deadline = time.monotonic() + 180
        while (status := run_status(rid, with_state=False)).review_round < 2 or status.review != "requested":
            assert time.monotonic() < deadline, "the run did not ask for its second review"
            time.sleep(0.3)
        seen["second"] = {a.role: a.outcome for a in status.agents}
        try:                                  # the last round (max 2): no third round is offered
            submit_review(rid, ["explore"], [], again={"frontend": ("revise", "more")})
            seen["third"] = "accepted"
        except ReviewRejected as exc:
            seen["third"] = str(exc)
        submit_review(rid, ["explore", "frontend"], [], "good now")

    result = run_sisyphus({"task": "Document make_widget.", "repo": str(repo), "agents": ["explore", "frontend"],
                           "run_id": run_id, "max_review_rounds": 2, "review_timeout": 300,
                           "agent_commands": {"frontend": WRITER, "explore": RESEARCHER}}, review)
    assert seen["first"] == {"explore": "failed", "frontend": "succeeded"}
    assert seen["second"] == {"explore": "succeeded", "frontend": "succeeded"}
    assert "revise" in seen["third"] and "Cannot resume" in seen["third"]
    assert result.outcome == "integrated", result.message
    by_role = {o.role: o for o in result.agents}
    assert by_role["frontend"].round == 2 and by_role["explore"].round == 2
    assert [(v.role, v.choice) for v in result.verdicts] == [("explore", "approve"), ("frontend", "approve")]

    # the writer's second prompt carries the comment; its first did not
    run_dir = uw_home / "runs" / run_id
    prompts = (run_dir / "plans" / "frontend" / "prompts.log").read_text().split("=====\n")
    assert len([p for p in prompts if p.strip()]) == 2
    assert COMMENT not in prompts[0] and COMMENT in prompts[1] and "# Review, round 2" in prompts[1]
    # it continued on its branch: round two's line follows round one's
    integration = f"ultrawork/{run_id}/integration"
    assert git(repo, "show", f"{integration}:widgets/rounds.txt") == "round\nround"
    assert len(git(repo, "rev-list", "--no-merges", f"{base}..ultrawork/{run_id}/frontend").split()) == 2
    # every round is in the ledger and in the agent's Plan.md
    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert rounds["round"] == 2 and rounds["again"] == {"frontend": COMMENT, "explore": RETRY}
    assert "round 2: the reviewer sent this agent back: " + COMMENT in (run_dir / "plans" / "frontend" / "Plan.md").read_text()
    history = git(run_dir, "log", "--reverse", "--format=%s").splitlines()
    assert any(s.startswith("round 2: ") for s in history)
    assert any(s.startswith("review: ") and "sent back frontend" in s and "retried explore" in s for s in history)
    assert json.loads((run_dir / "review.json").read_text())["round"] == 2
