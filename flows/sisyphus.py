"""Sisyphus: the main flow. One task in, parallel agents, a human review, one integration branch out.

classify -> write the run's plan -> fan out one agent subflow per role (concurrently)
-> publish Plan.md artifacts and results -> pause for review -> merge the approved
branches -> push and open a pull request (when GitHub is configured).
"""

from __future__ import annotations

import asyncio
from typing import Literal

# Prefect imports these lazily when a process serializes its first flow's parameters (~0.25 s)
# and calls its first flow (~0.05 s); importing them with the flow keeps that out of the run's start.
import fastapi.encoders  # noqa: F401
import prefect.utilities.visualization  # noqa: F401
from prefect import flow
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.states import Completed
from pydantic import BaseModel, Field

from agents.outcome import AgentOutcome
from agents.profiles import AgentProfile
from flows.agent import agent
from flows.request import check_request, new_run_id
from flows.review import Verdict, review_form, verdicts
from sandbox.procs import owner_token
from tasks.artifacts import Progress, publish_plan, publish_results
from tasks.config import load_config, use_config
from tasks.integration import integrate_branches, open_pull_request_task
from tasks.faults import fault
from tasks.logs import get_logger
from tasks.reaper import reap_stale_work, release_run_clones
from tasks.together import together
from tasks.workspaces import create_run
from workspace.ledger import RunLedger
from workspace.names import validate_run_id
from workspace.superproject import RunSuperproject


class RunResult(BaseModel):
    run_id: str
    outcome: Literal["integrated", "conflict", "nothing-approved", "review-timed-out"]
    message: str
    target_repo: str
    integration_branch: str | None = None
    pull_request: str | None = None
    agents: list[AgentOutcome] = Field(default_factory=list)
    verdicts: list[Verdict] = Field(default_factory=list)
    conflicts: list[str] = Field(default_factory=list)


def prompt_for(task: str, profile: AgentProfile, run_id: str) -> str:
    checklist = "\n".join(f"- [ ] {item}" for item in profile.checklist)
    return (f"# Task\n\n{task.strip()}\n\n# Your role: {profile.role}\n\n"
            f"Workspace: /workspace ({'read-only' if profile.workspace_mode == 'ro' else 'read-write'}). "
            f"Write your findings to /plan/Plan.md.\n\n# Acceptance checklist\n\n{checklist}\n")


async def record(ledger: RunLedger, name: str, data: dict, subject: str) -> None:
    """One stage of the run's record (a superproject commit), off the event loop the agents share."""
    await asyncio.to_thread(ledger.record, name, data, subject)


async def _outcome(state) -> AgentOutcome:
    result = await state.aresult(raise_on_failure=False) if hasattr(state, "aresult") else state.result(raise_on_failure=False)
    if isinstance(result, AgentOutcome):
        return result
    raise RuntimeError(f"agent subflow ended without an outcome: {state.message}")


@flow(name="sisyphus", log_prints=True, validate_parameters=True)
async def sisyphus(
    task: str,
    repo: str,
    agents: list[str] | None = None,
    base: str = "HEAD",
    run_id: str | None = None,
    agent_commands: dict[str, list[str]] | None = None,
    review_timeout: int = 24 * 3600,
    hooks: list[dict] | None = None,
    resume: bool = False,
) -> RunResult:
    """Run the agents a task needs on ``repo`` and integrate the work a reviewer approves.

    ``agents`` overrides the classification; ``agent_commands`` maps a role to the
    argument list it runs instead of the built-in offline agent; ``hooks`` adds
    user hooks (``{"target": "pkg.mod:func", "point": "after_step"}``). With ``resume``
    an existing run continues from its last completed stage (see ``workspace.ledger``).

    Args:
        task: What the agents should do; a ```diff or ```ultrawork-edit block may follow.
        repo: Path of the git repository to work on, on the machine that runs the flow.
        agents: Roles to run (explore, librarian, oracle, frontend); default: chosen from the task.
        base: Base ref the agents' branches start from.
        run_id: The run's id (default: a new one); names its branches and its record.
        agent_commands: Role -> argument list the role runs instead of the built-in offline agent.
        review_timeout: Seconds to wait for the human review before the run ends without merging.
        hooks: User hooks, e.g. {"target": "pkg.mod:func", "point": "after_step"}.
        resume: Continue the existing run ``run_id`` from its last completed stage.
    """
    log = get_logger()
    run_id = validate_run_id(run_id or new_run_id())
    config = await load_config()                         # the saved blocks, or the defaults
    use_config(config)                                   # this run's sandbox caps
    profiles = await asyncio.to_thread(check_request, task, repo, agents, base, agent_commands,
                                       profiles=config.profiles)            # bad input stops here
    github = config.github
    flow_run = get_run_context().flow_run
    if resume:
        reaped = await reap_stale_work()                                  # what dead runs left behind
    else:   # a new run has no clones yet, so the reaper cannot touch it: both at once
        reaped, _ = await asyncio.gather(reap_stale_work(), create_run(run_id, repo, task, base, hooks))
    ledger = RunLedger.open(run_id)
    flow_runs = ledger.orchestration.get("flow_runs", []) + [str(flow_run.id)]
    params = {"task": task, "repo": repo, "agents": list(profiles), "base": base,
              "agent_commands": agent_commands, "review_timeout": review_timeout, "hooks": hooks}
    await record(ledger, "orchestration",
                 {"flow_run_id": str(flow_run.id), "flow_runs": flow_runs, "roles": list(profiles),
                  "owner": owner_token(), "github": github is not None, "params": params},
                 f"{'run resumed' if resume else 'run plan'}: {', '.join(profiles)} (flow run {flow_run.name})")
    log.info("run %s: %d agent(s) %s on %s%s", run_id, len(profiles), ", ".join(profiles), repo,
             f" (resumed; cleaned up {len(reaped)} leftover(s))" if resume else "")

    progress = Progress(len(profiles))
    progress.start(run_id)                                      # created alongside the agents' start

    async def one(profile: AgentProfile) -> AgentOutcome:
        async def shown() -> None:   # its Plan.md and the progress in the UI, while the outcome is recorded
            plan = await asyncio.to_thread(lambda: RunSuperproject.open(run_id).agent(profile.role).plan.text())
            await together(publish_plan(run_id, profile.role, plan), progress.advance())

        done = ledger.outcome(profile.role)
        if done is not None:                                   # finished before: not run again
            log.info("%s finished in an earlier attempt (%s); not running it again", profile.role, done["status"])
            outcome = AgentOutcome.model_validate(done)
            await shown()
            return outcome
        state = await agent(run_id, profile, prompt_for(task, profile, run_id), return_state=True)
        outcome = await _outcome(state)

        async def recorded() -> None:
            await record(ledger, f"outcomes/{profile.role}", outcome.model_dump(mode="json"),
                         f"{profile.role}: outcome recorded ({outcome.status})")
            fault("stage:agent-finished", role=profile.role)

        await together(recorded(), shown())
        return outcome

    outcomes = list(await asyncio.gather(*(one(p) for p in profiles.values())))   # concurrently
    target_repo = str(ledger.run.target.path)

    async def finish(summary: RunResult):
        """The run is over: its branches and Plan.md files stay, its full clones go.
        The Completed message starts with the outcome (what a backlog sweep reads); after an
        expired pause Prefect fails the run whatever it returns, so that result stays a plain value."""
        await release_run_clones(run_id)
        log.info("run %s: %s", run_id, summary.message)
        if summary.outcome == "review-timed-out":
            return summary
        return Completed(message=f"{summary.outcome}: {summary.message}"[:1000], data=summary)

    review = ledger.read("review")
    if review.get("state") == "decided":                       # decided before the crash
        await publish_results(run_id, outcomes)
        decided = [Verdict.model_validate(v) for v in review["verdicts"]]
    else:
        form = review_form(run_id, task, outcomes)
        await together(publish_results(run_id, outcomes),   # the results table, as the review is requested
                       record(ledger, "review", {"state": "requested", "roles": list(profiles)}, "review requested"))
        log.info("run %s paused for review: approve or reject each agent in the UI or with "
                 "'ultrawork review %s --approve ROLES --reject ROLES'", run_id, run_id)
        try:
            decision = await pause_flow_run(wait_for_input=form, timeout=review_timeout, poll_interval=1,
                                            key="review")
        except FlowPauseTimeout:
            branches = ", ".join(o.branch for o in outcomes)
            await record(ledger, "review", {"state": "timed-out"}, "review timed out")
            return await finish(RunResult(
                run_id=run_id, outcome="review-timed-out", target_repo=target_repo, agents=outcomes,
                message=f"no review within {review_timeout}s; every branch is kept in {target_repo}: {branches}"))
        decided = verdicts(decision, list(profiles))
        await record(ledger, "review", {"state": "decided", "verdicts": [v.model_dump() for v in decided]},
                     f"review: approved {', '.join(v.role for v in decided if v.approved) or 'none'}; "
                     f"rejected {', '.join(v.role for v in decided if not v.approved) or 'none'}")
    approved = [v.role for v in decided if v.approved]

    result = await integrate_branches(run_id, approved)          # idempotent: same merge, same commit
    if not ledger.read("integration"):
        await record(ledger, "integration", {"outcome": result.outcome, "branch": result.branch,
                                             "head": result.head, "merged": result.merged,
                                             "conflicts": result.conflicts},
                     f"integration: {result.outcome}")
    summary = RunResult(run_id=run_id, outcome="integrated", target_repo=target_repo, agents=outcomes,
                        verdicts=decided, message="")
    if result.outcome == "nothing-approved":
        summary.outcome, summary.message = "nothing-approved", f"no agent approved; branches kept in {target_repo}"
        return await finish(summary)
    if result.outcome == "conflict":
        summary.outcome, summary.conflicts = "conflict", result.conflicts
        summary.message = (f"merging {result.conflict_role} conflicts in {', '.join(result.conflicts)}; "
                           f"nothing pushed, branches kept in {target_repo}")
        return await finish(summary)
    summary.integration_branch = result.branch
    summary.message = f"integration branch {result.branch} in {target_repo} ({', '.join(result.merged)})"
    if github is not None:
        body = "\n\n".join(f"## {o.role}\n\n{o.plan_summary}" for o in outcomes if o.role in approved)
        pr = await open_pull_request_task(run_id, result, github, f"ultrawork: {task.strip().splitlines()[0][:80]}",
                                          f"Run `{run_id}` merged {', '.join(result.merged)}.\n\n{body}")
        fault("stage:pull-request-opened")
        await record(ledger, "pull_request", {"number": pr.number, "url": pr.url, "created": pr.created},
                     f"pull request #{pr.number}")
        summary.pull_request = pr.url
        summary.message += f"; pull request {pr.url}"
    return await finish(summary)
