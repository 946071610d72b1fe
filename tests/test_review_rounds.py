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
# each round the writer keeps the prompt it got and adds one line to a file on its branch (what it
# writes in /plan besides Plan.md is removed when the run ends)
WRITER = ["sh", "-c", "cat /agent/prompt.md >> widgets/prompts.log && echo '=====' >> widgets/prompts.log "
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
    prompts = git(repo, "show", f"ultrawork/{run_id}/frontend:widgets/prompts.log").split("=====")
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


def test_a_run_killed_mid_round_resumes_the_round_without_rerunning_who_finished_it(
        prefect_api, uw_home, tmp_path, docker_client):
    """Round 2 sends two agents back; the process is killed once the quick one finished its round;
    `ultrawork resume` runs only the slow one again, then asks for the second review."""
    import os
    import subprocess
    import sys
    import threading
    import time
    from collections import Counter
    from pathlib import Path

    from flowkit import review_state

    from ultrawork.cli.runs import run_status, submit_review

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"rk-{uuid.uuid4().hex[:6]}"
    slow = ["sh", "-c", "if grep -q 'Review, round 2' /agent/prompt.md; then sleep 8; fi; "
                        "echo more >> widgets/rounds.txt"]
    env = {**os.environ, "ULTRAWORK_FAULTS_STATE": str(tmp_path / "faults.json"),
           "ULTRAWORK_FAULTS": json.dumps([{"at": "stage:round-agent-finished", "role": "explore",
                                            "action": "kill_process"}])}
    params = {"task": "Map and document.", "repo": str(repo), "agents": ["explore", "frontend"], "run_id": run_id,
              "agent_commands": {"frontend": slow}, "review_timeout": 300}

    def send_back() -> None:
        while review_state(run_id) != "requested":
            time.sleep(0.2)
        submit_review(run_id, [], [], again={"explore": ("revise", "map the docs too"),
                                             "frontend": ("revise", "one more line")})

    reviewer = threading.Thread(target=send_back, daemon=True)
    reviewer.start()
    started = time.time()
    with open(tmp_path / "first.log", "ab") as log:
        first = subprocess.run([sys.executable, "-m", "ultrawork.cli.launch", json.dumps(params)], env=env,
                               stdout=log, stderr=subprocess.STDOUT, timeout=240)
    assert first.returncode == -9, (tmp_path / "first.log").read_text()[-3000:]
    outcomes = {r: json.loads((uw_home / "runs" / run_id / "outcomes" / f"{r}.json").read_text())["round"]
                for r in ("explore", "frontend")}
    assert outcomes == {"explore": 2, "frontend": 1}, "killed after the quick agent finished round 2"

    def approve_round_two() -> None:
        deadline = time.monotonic() + 180
        while not ((s := run_status(run_id, with_state=False)).review == "requested" and s.review_round == 2):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        submit_review(run_id, ["explore", "frontend"], [])

    reviewer = threading.Thread(target=approve_round_two, daemon=True)
    reviewer.start()
    ultrawork = str(Path(sys.executable).with_name("ultrawork"))
    resumed = subprocess.run([ultrawork, "resume", run_id], capture_output=True, text=True, timeout=300,
                             env=os.environ.copy(), stdin=subprocess.DEVNULL)
    reviewer.join(10)
    assert resumed.returncode == 0 and "integrated" in resumed.stdout, resumed.stdout + resumed.stderr
    events = docker_client.events(since=int(started) - 1, until=int(time.time()) + 1, decode=True,
                                  filters={"type": "container", "event": "create", "label": f"ultrawork.run={run_id}"})
    created = Counter(e["Actor"]["Attributes"].get("ultrawork.agent") for e in events)
    # explore: round 1 and round 2 once; frontend: round 1, the killed round 2, round 2 again
    assert created == Counter({"explore": 2, "frontend": 3}), created
    assert git(repo, "show", f"ultrawork/{run_id}/integration:widgets/rounds.txt") == "more\nmore"


def test_aborting_on_a_failed_agent_ends_the_run_with_nothing_merged(prefect_api, uw_home, tmp_path, docker_client):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"ab-{uuid.uuid4().hex[:6]}"
    ultrawork = str(Path(sys.executable).with_name("ultrawork"))
    seen = {}

    def abort(rid: str) -> None:
        from ultrawork.cli.runs import run_status, wait_for_review_form

        wait_for_review_form(run_status(rid, with_state=False).flow_run_id)
        sent = subprocess.run([ultrawork, "review", rid, "--abort", "--comment", "wrong repository", "--json"],
                              capture_output=True, text=True, env=os.environ.copy(), timeout=120)
        seen["cli"] = (sent.returncode, sent.stdout + sent.stderr)

    result = run_sisyphus({"task": "Map it.", "repo": str(repo), "agents": ["explore", "frontend"], "run_id": run_id,
                           "review_timeout": 300, "agent_commands": {"explore": RESEARCHER}}, abort)
    assert seen["cli"][0] == 0 and json.loads(seen["cli"][1])["aborted"] is True, seen["cli"]
    assert result.outcome == "aborted" and "wrong repository" in result.message, result.message
    assert not result.merged
    assert subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/ultrawork/{run_id}/integration"],
                          cwd=repo, capture_output=True).returncode != 0


def test_review_revise_alone_leaves_the_others_to_the_next_round_which_decides_every_agent(
        prefect_api, uw_home, tmp_path, docker_client):
    """`ultrawork review RUN --revise frontend=...` with nothing else: explore is not run again;
    the run pauses after frontend's round, both are approved there and the run integrates."""
    import os
    import subprocess
    import sys
    import time
    from collections import Counter
    from pathlib import Path

    from ultrawork.cli.runs import run_status, wait_for_review_form

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"ra-{uuid.uuid4().hex[:6]}"
    ultrawork = str(Path(sys.executable).with_name("ultrawork"))
    seen: dict = {}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ultrawork, "review", run_id, *args], capture_output=True, text=True,
                              env=os.environ.copy(), timeout=120, stdin=subprocess.DEVNULL)

    def review(rid: str) -> None:
        wait_for_review_form(run_status(rid, with_state=False).flow_run_id)
        seen["bad"] = cli("--revise", "backend=add tests")           # no such agent: refused, nothing sent
        seen["alone"] = cli("--revise", f"frontend={COMMENT}")
        deadline = time.monotonic() + 180
        while not ((s := run_status(rid, with_state=False)).review == "requested" and s.review_round == 2):
            assert time.monotonic() < deadline, "the run did not ask for its second review"
            time.sleep(0.3)
        seen["second"] = {a.role: a.outcome for a in s.agents}
        wait_for_review_form(s.flow_run_id)
        seen["partial"] = cli("--approve", "explore")                  # frontend undecided, nobody sent back
        seen["both"] = cli("--approve", "explore,frontend", "--json")

    result = run_sisyphus({"task": "Document make_widget.", "repo": str(repo), "agents": ["explore", "frontend"],
                           "run_id": run_id, "review_timeout": 300,
                           "agent_commands": {"frontend": WRITER}}, review)
    bad, alone, partial, both = seen["bad"], seen["alone"], seen["partial"], seen["both"]
    assert bad.returncode == 2 and "backend did not run in this run" in bad.stderr, bad.stdout + bad.stderr
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "sent back frontend" in alone.stdout and "left for the next round's review: explore" in alone.stdout
    assert partial.returncode == 2 and "frontend neither approved nor rejected" in partial.stderr, partial.stderr
    assert json.loads(both.stdout)["decision"] == {"explore": "approve", "frontend": "approve"}
    assert seen["second"] == {"explore": "succeeded", "frontend": "succeeded"}

    assert result.outcome == "integrated", result.message
    assert [(v.role, v.choice) for v in result.verdicts] == [("explore", "approve"), ("frontend", "approve")]
    by_role = {o.role: o for o in result.agents}
    assert by_role["frontend"].round == 2 and by_role["explore"].round == 1
    assert git(repo, "show", f"ultrawork/{run_id}/integration:widgets/rounds.txt") == "round\nround"
    # explore ran once; frontend twice (each run of an agent is a subflow tagged with its role)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"run:{run_id}"])))
    roles = Counter(t.removeprefix("role:") for r in subflows for t in r.tags if t.startswith("role:"))
    assert roles == Counter({"explore": 1, "frontend": 2}), roles
    run_dir = uw_home / "runs" / run_id
    history = git(run_dir, "log", "--reverse", "--format=%s").splitlines()
    assert any("sent back frontend" in s and "left for the next round explore" in s for s in history), history
    assert json.loads((run_dir / "rounds.json").read_text())["again"] == {"frontend": COMMENT}
