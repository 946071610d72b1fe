"""The Sisyphus flow end to end: real engine, real git, the session's Prefect server."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, run_sisyphus

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

EDIT_TASK = """Fix the TODO in widgets/core.py, review the risk and update the docs.

```ultrawork-edit
[{"path": "widgets/core.py", "replace": ["    # TODO: validate name\\n", "    if not name:\\n        raise ValueError('name')\\n"]},
 {"path": "docs/guide.md", "append": "make_widget('') raises ValueError.\\n"}]
```
"""


def sleepy(role: str, seconds: float = 2.0) -> list[str]:
    return ["sh", "-c", f"sleep {seconds} && exec python3 /agent/builtin_agent.py {role}"]


def subflow_runs(flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId  # noqa: F401

    with get_client(sync_client=True) as client:
        parent_tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))
        ids = [t.id for t in parent_tasks]
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_task_run_id={"any_": ids}))


def orchestration(uw_home: Path, run_id: str) -> dict:
    return json.loads((uw_home / "runs" / run_id / "orchestration.json").read_text())


def test_four_agents_in_parallel_then_review_then_integration(prefect_api, uw_home, tmp_path, docker_client):
    from ultrawork.cli.runs import submit_review
    from ultrawork.tasks.sandboxes import engine

    repo = make_target_repo(tmp_path / "widgets")
    base = git(repo, "rev-parse", "HEAD")
    run_id = f"t4-{uuid.uuid4().hex[:6]}"
    roles = ["explore", "librarian", "oracle", "frontend"]
    seen_paused = {}

    def review(rid: str) -> None:
        from ultrawork.cli.runs import flow_run_state, wait_for_review_form

        fr = orchestration(uw_home, rid)["flow_run_id"]
        wait_for_review_form(fr)
        seen_paused["state"] = flow_run_state(fr)
        seen_paused["containers"] = engine().list(run_id=rid)
        submit_review(rid, approve=["explore", "frontend"], reject=["librarian", "oracle"], comment="ok")

    result = run_sisyphus({"task": EDIT_TASK, "repo": str(repo), "agents": roles, "run_id": run_id,
                           "agent_commands": {r: sleepy(r) for r in roles}}, review)

    assert seen_paused["state"] == "Paused"
    assert seen_paused["containers"] == [], "no sandbox outlives its agent"
    assert result.outcome == "integrated", result.message
    assert [o.status for o in result.agents] == ["succeeded"] * 4

    # Four subflows: the three research ones overlap; the writer's is set up alongside them, but its
    # command runs only after they ended, with their findings in the prompt its sandbox has mounted.
    runs = subflow_runs(orchestration(uw_home, run_id)["flow_run_id"])
    assert sorted(r.name for r in runs) == sorted(f"{run_id}-{role}" for role in roles)
    assert all({f"run:{run_id}", f"role:{r.name.rsplit('-', 1)[1]}"} <= set(r.tags) for r in runs)
    research = [r for r in runs if not r.name.endswith("-frontend")]
    writer = next(r for r in runs if r.name.endswith("-frontend"))
    assert max(r.start_time for r in research) < min(r.end_time for r in research), "research subflows must overlap"
    assert writer.start_time < max(r.end_time for r in research), "the writer is set up during the research"
    outcomes = {o.role: o for o in result.agents}
    assert outcomes["frontend"].started_at >= max(outcomes[r].ended_at for r in roles if r != "frontend"), \
        "the writer's command runs after the research ended"
    prompt = (uw_home / "runs" / run_id / "inbox" / "frontend" / "prompt.md").read_text()
    assert "# Research findings" in prompt and "## explore" in prompt, prompt[:500]

    # Four branches, four Plan.md files, no container left.
    for role in roles:
        assert git(repo, "rev-parse", "--verify", f"refs/heads/ultrawork/{run_id}/{role}")
        plan = (uw_home / "runs" / run_id / "plans" / role / "Plan.md").read_text()
        assert f"Findings ({role}" in plan and "ultrawork:final" in plan
    assert engine().list(run_id=run_id) == []

    # The integration branch holds exactly the approved agents' commits.
    integration = f"ultrawork/{run_id}/integration"
    frontend_commits = git(repo, "rev-list", f"{base}..ultrawork/{run_id}/frontend").split()
    assert len(frontend_commits) == 1
    non_merge = git(repo, "rev-list", "--no-merges", f"{base}..{integration}").split()
    assert non_merge == frontend_commits
    assert "raise ValueError('name')" in git(repo, "show", f"{integration}:widgets/core.py")
    assert [v.role for v in result.verdicts if v.approved] == ["explore", "frontend"]
    history = (uw_home / "runs" / run_id / "review.json").read_text()
    assert '"comment": "ok"' in history


def test_read_only_role_cannot_write_and_the_failure_is_in_plan_md(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"ro-{uuid.uuid4().hex[:6]}"
    result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore"], "run_id": run_id,
                           "agent_commands": {"explore": ["sh", "-c", "echo hacked > /workspace/README.md"]},
                           "review_timeout": 2})
    explore = result.agents[0]
    assert explore.status == "failed"
    assert explore.retries == 1, "an agent execution error is retried once"
    plan = Path(explore.plan_path).read_text()
    assert "Read-only file system" in plan
    assert "AgentExecutionError" in plan
    assert (repo / "README.md").read_text().startswith("# widgets")
    assert result.outcome == "review-timed-out"
    assert f"ultrawork/{run_id}/explore" in result.message, "a timed-out review says where the branches are"


def test_the_prompt_reaches_the_agent_as_a_file_it_cannot_change(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"prompt-{uuid.uuid4().hex[:6]}"
    check = ("grep -q 'Map the code' /agent/prompt.md && grep -q 'Your role: explore' /agent/prompt.md"
             " && test -s /agent/builtin_agent.py"
             " && ! (echo changed > /agent/prompt.md) 2>/dev/null"
             " && echo 'prompt read, and read-only' >> /plan/Plan.md")
    result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore"], "run_id": run_id,
                           "agent_commands": {"explore": ["sh", "-c", check]}, "review_timeout": 2})
    explore = result.agents[0]
    assert explore.status == "succeeded", explore.errors
    assert "prompt read, and read-only" in Path(explore.plan_path).read_text()
    prompt = uw_home / "runs" / run_id / "inbox" / "explore" / "prompt.md"
    assert "Map the code" in prompt.read_text() and "changed" not in prompt.read_text()
    assert "inbox" not in git(uw_home / "runs" / run_id, "status", "--porcelain"), "the inbox is not run state"


def test_each_error_class_triggers_its_own_recovery(prefect_api, uw_home, tmp_path, docker_client, monkeypatch):
    from ultrawork.cli.runs import submit_review

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"rc-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("ULTRAWORK_FAULTS_STATE", str(tmp_path / "faults.json"))
    monkeypatch.setenv("ULTRAWORK_FAULTS", json.dumps([
        {"at": "step", "role": "explore", "action": "agent_fail", "times": 1},
        {"at": "step", "role": "oracle", "action": "kill_container", "times": 1},
        {"at": "git:commit", "role": "librarian", "action": "git_error", "times": 2},
    ]))
    hooks = [{"target": "hooks_for_tests:always_fails", "point": "after_step", "name": "flaky-notifier"}]
    roles = ["explore", "librarian", "oracle", "frontend"]
    recovery_log, seen = logging.getLogger("ultrawork.recovery"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    recovery_log.addHandler(handler)
    try:
        result = run_sisyphus({"task": EDIT_TASK, "repo": str(repo), "agents": roles, "run_id": run_id,
                               "hooks": hooks},
                              lambda rid: submit_review(rid, approve=roles, reject=[]))
    finally:
        recovery_log.removeHandler(handler)
    by_role = {o.role: o for o in result.agents}
    assert all(o.status == "succeeded" for o in result.agents), [o.errors for o in result.agents]
    # agent execution error: the step was retried
    assert by_role["explore"].retries == 1 and by_role["explore"].sandboxes_created == 1
    # sandbox error: the sandbox was recreated, then the step retried
    assert by_role["oracle"].sandboxes_created == 2 and by_role["oracle"].retries == 1
    assert "recreate" in Path(by_role["oracle"].plan_path).read_text()
    # git error: the commit task was retried (with backoff) until it worked
    librarian_plan = Path(by_role["librarian"].plan_path).read_text()
    assert "ultrawork:final" in librarian_plan
    # ...as one task run: Prefect's retry of the same commit-work run, its run_count 1 and 2 failing (the
    # recovery table's retry condition names each), the third succeeding (the agent succeeded, Plan.md is final)
    retried = sorted(m.split("(attempt ", 1)[1].split(")", 1)[0] for m in seen
                     if m.startswith("commit-work failed (attempt ") and "(librarian)" in m)
    assert retried == ["1", "2"], retried
    # hook error: the failing user hook was disabled for the run after three failures, and the run went on
    plans = "".join(Path(o.plan_path).read_text() for o in result.agents)
    assert plans.count("injected hook failure") == 3
    assert "flaky-notifier failed 3 times in a row and is disabled" in plans
    assert result.outcome == "integrated"


def test_a_setup_retried_after_its_sandbox_started_gets_a_fresh_sandbox(prefect_api, uw_home, tmp_path,
                                                                       docker_client, monkeypatch):
    """The sandbox starts as soon as the clone exists; a setup that then fails and re-clones
    must not leave the agent working in (or the engine holding) the first clone's sandbox."""
    from ultrawork.cli.runs import submit_review
    from ultrawork.tasks.sandboxes import engine

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"rs-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("ULTRAWORK_FAULTS_STATE", str(tmp_path / "faults.json"))
    monkeypatch.setenv("ULTRAWORK_FAULTS", json.dumps([
        {"at": "git:register-workspace", "role": "frontend", "action": "git_error", "times": 1}]))
    result = run_sisyphus({"task": EDIT_TASK, "repo": str(repo), "agents": ["frontend"], "run_id": run_id},
                          lambda rid: submit_review(rid, approve=["frontend"], reject=[]))
    frontend = result.agents[0]
    assert frontend.status == "succeeded", frontend.errors
    assert frontend.sandboxes_created == 1 and frontend.commits, frontend
    assert "raise ValueError('name')" in git(repo, "show", f"ultrawork/{run_id}/frontend:widgets/core.py")
    assert engine().list(run_id=run_id) == []
    assert docker_client.containers.list(all=True, filters={"label": f"ultrawork.run={run_id}"}) == []
    assert result.outcome == "integrated", result.message


def test_bad_input_is_refused_before_anything_is_created(prefect_api, uw_home, tmp_path):
    from ultrawork.agents.profiles import UnknownRoleError
    from ultrawork.flows.sisyphus import sisyphus
    from ultrawork.workspace.errors import WorkspaceError
    import asyncio

    repo = make_target_repo(tmp_path / "widgets")
    (repo / "README.md").write_text("dirty\n")
    clean = make_target_repo(tmp_path / "clean")
    not_git = tmp_path / "plain"
    not_git.mkdir()
    cases = [
        ({"task": "x", "repo": str(clean), "agents": ["wizard"]}, UnknownRoleError),
        ({"task": "   ", "repo": str(clean)}, ValueError),
        ({"task": "x", "repo": str(not_git)}, WorkspaceError),
        ({"task": "x", "repo": str(repo)}, WorkspaceError),
        ({"task": "x", "repo": str(clean), "base": "no-such-ref"}, WorkspaceError),
        ({"task": "x", "repo": str(clean), "agent_commands": {"explore": ["", "x"]}}, ValueError),
    ]
    for params, error in cases:
        with pytest.raises(error):
            asyncio.run(sisyphus(**params, return_state=False))
    assert not (uw_home / "runs").exists() or list((uw_home / "runs").iterdir()) == []
    assert git(clean, "branch", "--list", "ultrawork/*") == ""


def test_a_process_that_runs_run_after_run_keeps_no_threads_of_earlier_runs(prefect_api, uw_home, tmp_path,
                                                                             docker_client):
    """A worker runs runs for days: each run's agents must leave no thread (nor the API client it holds)
    behind. Prefect keeps a tag-concurrency service per distinct tag set of a task run for the process's
    life, so tasks tagged with their run would leave one per agent per run."""
    import threading

    repo = make_target_repo(tmp_path / "widgets")
    counts = []
    for i in range(3):
        run_id = f"threads-{i}-{uuid.uuid4().hex[:6]}"
        result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["explore", "librarian"],
                               "run_id": run_id, "review_timeout": 1,
                               "agent_commands": {r: ["true"] for r in ("explore", "librarian")}})
        assert [a.status for a in result.agents] == ["succeeded", "succeeded"], result.message
        time.sleep(1)                                # the run's own threads (log workers, slots) have ended
        counts.append(threading.active_count())
    assert counts[2] <= counts[0], f"threads after each run: {counts} ({sorted(t.name for t in threading.enumerate())})"


def test_a_writer_set_up_during_the_research_reads_the_findings_in_its_first_step(prefect_api, uw_home, tmp_path,
                                                                                    docker_client):
    """The writer's sandbox starts while the research runs, with a placeholder at /agent/prompt.md; the
    prompt with the findings is written into that same mounted file before the writer's first step."""
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"prep-{uuid.uuid4().hex[:6]}"
    result = run_sisyphus({
        "task": EDIT_TASK, "repo": str(repo), "agents": ["explore", "frontend"], "run_id": run_id, "review_timeout": 1,
        "agent_commands": {"explore": sleepy("explore", 3),
                           "frontend": ["sh", "-c", "cp /agent/prompt.md /workspace/seen-prompt.md"]}})
    assert [o.status for o in result.agents] == ["succeeded", "succeeded"], result.message
    seen = git(repo, "show", f"ultrawork/{run_id}/frontend:seen-prompt.md")
    assert "# Research findings" in seen and "## explore" in seen, seen[:400]
    assert "not in yet" not in seen
