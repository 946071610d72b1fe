"""Sisyphus: the main flow. One task in, parallel agents, a human review, one integration branch out.

classify -> write the run's plan -> fan out one agent subflow per role (concurrently)
-> publish Plan.md artifacts and results -> review (``ultrawork.flows.review``) -> merge the
approved branches one by one, run the checks, push and open a pull request
(``ultrawork.flows.integrate``).
"""

from __future__ import annotations

import asyncio

# Prefect imports these lazily when a process serializes its first flow's parameters (~0.25 s)
# and calls its first flow (~0.05 s); importing them with the flow keeps that out of the run's start.
import fastapi.encoders  # noqa: F401
import prefect.utilities.visualization  # noqa: F401
from prefect import flow
from prefect.context import get_run_context

from ultrawork.agents.attempts import auto_verdicts, check_attempts, none_passed, with_attempts
from ultrawork.agents.outcome import AgentOutcome, RunOutcome, RunResult
from ultrawork.agents.profiles import AgentProfile, with_named_profiles
from ultrawork.agents.profiles import classify
from ultrawork.agents.team import WRITER_ROLES, RunPlan, agent_prompt, base_role, phases, research_section, with_instances
from ultrawork.flows.review import decision_subject
from ultrawork.tasks.attempts import rank_attempts
from ultrawork.flows.agent import agent
from ultrawork.cli.request import check_request, new_run_id
from ultrawork.flows.integrate import ended, finish_run
from ultrawork.flows.revise import DEFAULT_ROUNDS, review_rounds
from ultrawork.sandbox.disk import disk_backend
from ultrawork.sandbox.procs import owner_token
from ultrawork.runtime.artifacts import Progress, publish_plan, publish_results
from ultrawork.runtime.config import load_config, use_config
from ultrawork.failpoints import failpoint
from ultrawork.runtime.logs import get_logger
from ultrawork.runtime.naming import agent_tags, continued_run_id, continues_flow_run, name_run
from ultrawork.tasks.egress import check_egress, run_egress
from ultrawork.runtime.prompts import PENDING, deliver, expect, expect_research, forget, seated, withdraw
from ultrawork.runtime.mcp_servers import run_mcp_servers
from ultrawork.tasks.reaper import disk_released_on_failure, reap_stale_work
from ultrawork.tasks.team import check_model_agents, model_for_run, plan_run, record_plan, run_usage_line
from ultrawork.runtime.together import together
from ultrawork.untrusted import ARTIFACT_BYTES, Untrusted, install_log_escaping, read_agent_file
from ultrawork.tasks.workspaces import checkout_repository, create_run
from ultrawork.workspace.errors import WorkspaceError
from ultrawork.workspace.ledger import RunLedger
from ultrawork.workspace.names import validate_run_id
from ultrawork.workspace.stages import Stage
from ultrawork.workspace.stages import subject as stage_subject
from ultrawork.workspace.superproject import RunSuperproject


def prompt_for(task: str, profile: AgentProfile, run_id: str) -> str:
    checklist = "\n".join(f"- [ ] {item}" for item in profile.checklist)
    return (f"# Task\n\n{task.strip()}\n\n# Your role: {profile.role}\n\n"
            f"Workspace: /workspace ({'read-only' if profile.workspace_mode == 'ro' else 'read-write'}). "
            f"Write your findings to /plan/Plan.md.\n\n# Acceptance checklist\n\n{checklist}\n")


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
    check_command: list[str] | None = None,
    agent_profiles: dict[str, str] | None = None,
    model_settings: str | None = None,
    max_review_rounds: int = DEFAULT_ROUNDS,
    role_models: dict[str, str] | None = None,
    attempts: int = 1,
    attempt_profiles: list[str] | None = None,
    auto_select: bool = False,
) -> RunResult:
    """Run the agents a task needs on ``repo`` and integrate the work a reviewer approves.

    ``agents`` overrides the classification; ``agent_commands`` maps a role to the
    argument list it runs instead of the built-in offline agent; ``hooks`` adds
    user hooks (``{"target": "pkg.mod:func", "point": "after_step"}``). With ``resume``
    an existing run continues from its last completed stage (see ``ultrawork.workspace.ledger``).

    Args:
        task: What the agents should do; a ```diff or ```ultrawork-edit block may follow.
        repo: The git repository to work on: a path on the machine that runs the flow, or a URL (file://,
            https://, ssh://) that every worker clones once and pushes the run's branches back to.
        agents: Roles to run (explore, librarian, oracle, frontend); default: chosen from the task.
        base: Base ref the agents' branches start from.
        run_id: The run's id (default: a new one); names its branches and its record.
        agent_commands: Role -> argument list the role runs instead of the built-in offline agent.
        review_timeout: Seconds to wait for the human review before the run ends without merging.
        hooks: User hooks, e.g. {"target": "pkg.mod:func", "point": "after_step"}.
        resume: Continue the existing run ``run_id`` from its last completed stage.
        check_command: The repository's checks (e.g. ["pytest", "-q"]), run on the integration branch in a
            sandbox before the pull request; a failing check stops it unless the reviewer opens it anyway.
        agent_profiles: Role -> named agent profile (builtin, model, claude-code, opencode, codex); a CLI
            profile reaches its model only through the run's egress gateway, its key kept on the host; model
            runs the built-in model agent (its loop here, its tool calls in its sandbox).
        model_settings: Name of the ultrawork-model-agent block (default: the one named ``default``, if
            saved). With a model and no ``agents``, Sisyphus plans the run with it.
        max_review_rounds: Reviews per run: until the last, a reviewer can send an agent back with a comment
            (revise) or run a failed one again (retry).
        role_models: Role -> model name for that role's model agents (same provider and key), on top of
            the per-role blocks ``<model_settings>-<role>``, e.g. {"explore": "gpt-4.1-mini"}.
        attempts: Independent attempts of each writer at its subtask (1 to 8), each on its own branch, clone
            and sandbox; the repository's checks (check_command) run on each, and they are ranked: checks
            passed, fewer failing tests, smaller diff, lower cost. The best is pre-selected in the review.
        attempt_profiles: One named profile per attempt (e.g. ["model", "claude-code", "builtin"]).
        auto_select: Integrate the best attempt of each writer without waiting for a person when its checks
            pass, and nothing when none pass (for unattended sweeps); needs check_command.
    """
    install_log_escaping()                               # logs quote agents: escaped and capped, on every handler
    run_id = validate_run_id(run_id or continued_run_id() or new_run_id())
    resume = resume or continues_flow_run(run_id)       # suspended for review, rescheduled by the review
    config = await load_config()                         # the saved blocks, or the defaults
    use_config(config)                                   # this run's sandbox caps
    model = await model_for_run(model_settings, run_id, resume, role_models)   # None offline
    target = await checkout_repository(repo)            # a URL: this worker's cache clone, fetched now
    plan = await plan_run(run_id, task, target, agents, resume, model)      # the model's plan, or the rules
    agents = plan.names() if plan is not None else agents
    check_attempts(attempts, attempt_profiles, auto_select, check_command)       # before anything is created
    if attempts > 1:                                     # frontend, frontend-try2, frontend-try3 ...
        agents = agents or classify(task)
        agents, agent_profiles = with_attempts(agents, {a for a in agents if base_role(a) in WRITER_ROLES},
                                               attempts, attempt_profiles, agent_profiles)
    named = with_instances(with_named_profiles(config.profiles, agent_profiles), agents)   # frontend-2 ...
    profiles = await asyncio.to_thread(check_request, task, target, agents, base, agent_commands, profiles=named)
    await check_egress(profiles)                         # bad input stops here: egress rules, secrets
    check_model_agents(profiles, model)                  # and a model agent without a model
    params = {"task": task, "repo": repo, "agents": list(profiles), "base": base,
              "agent_commands": agent_commands, "review_timeout": review_timeout, "hooks": hooks,
              "check_command": check_command, "agent_profiles": agent_profiles,
              "model_settings": model_settings, "max_review_rounds": max_review_rounds, "role_models": role_models,
              "attempts": attempts, "attempt_profiles": attempt_profiles, "auto_select": auto_select}
    async with disk_released_on_failure(run_id):          # failed or cancelled: its disk caps go
        async with run_egress(run_id, profiles):            # the egress gateway starts alongside the setup
            ledger = await open_run(run_id, params, target, resume, github=config.github is not None)
            plan = await record_plan(run_id, ledger, task, plan, profiles, model)      # ledger stage + artifact
            async with run_mcp_servers(run_id, profiles):   # both stopped with the agents
                outcomes = await run_agents(run_id, ledger, task, profiles, plan)   # research, then the writers
        if run_usage_line(outcomes):
            get_logger().info("run %s: %s", run_id, run_usage_line(outcomes))
        await publish_results(run_id, outcomes)
        rankings = []
        if attempts > 1 or auto_select:                      # each attempt's checks on its branch, ranked
            writers = {p.role for p in phases(profiles)[1]}
            rankings = await rank_attempts(run_id, ledger, [o for o in outcomes if o.role in writers],
                                           check_command, min_size=1 if auto_select else 2)
        if auto_select:                                      # no person: the best attempt whose checks pass
            return await ended(run_id, await select_automatically(run_id, ledger, task, outcomes, rankings,
                                                                  config.github, check_command))
        review, outcomes = await review_rounds(run_id, ledger, task, outcomes, profiles, review_timeout,
                                               checks=bool(check_command), max_rounds=max_review_rounds,
                                               attempts=rankings)
        if review.decided is None:
            return await ended(run_id, review_timed_out(run_id, ledger, outcomes, review_timeout))
        summary = await finish_run(run_id, ledger, task, outcomes, review.decided, config.github, check_command,
                                   review.open_anyway)
        summary.attempts = [r.model_dump(mode="json") for r in rankings]
        return await ended(run_id, summary)


async def select_automatically(run_id: str, ledger: RunLedger, task: str, outcomes: list[AgentOutcome],
                               rankings: list, github, check_command: list[str] | None) -> RunResult:
    """The review without a person: each writer's best attempt is approved when its checks pass;
    when none pass, nothing is integrated and the outcome says why."""
    decided = auto_verdicts([o.role for o in outcomes], rankings)
    if ledger.read("review").get("state") != "decided":
        await ledger.arecord("review", {"state": "decided", "verdicts": [v.model_dump() for v in decided],
                                        "open_anyway": False, "round": 1, "automatic": True},
                             decision_subject(decided) + " (selected automatically by the checks)")
    attempts = [r.model_dump(mode="json") for r in rankings]
    if not any(v.approved for v in decided):
        return RunResult(run_id=run_id, outcome=RunOutcome.NOTHING_APPROVED, target_repo=ledger.run.where,
                         agents=outcomes, verdicts=decided, message=none_passed(rankings), attempts=attempts)
    summary = await finish_run(run_id, ledger, task, outcomes, decided, github, check_command)
    summary.attempts = attempts
    return summary


async def open_run(run_id: str, params: dict, target: str, resume: bool, github: bool) -> RunLedger:
    """The run's superproject (created, or reopened on resume) and its orchestration record; ``target``
    is the repository the run works in (for a URL ``params["repo"]``, this worker's cache clone)."""
    if resume:
        reaped = await reap_stale_work()                                  # what dead runs left behind
    else:   # a new run has no clones yet, so the reaper cannot touch it: both at once
        reaped, _ = await asyncio.gather(reap_stale_work(), create_run(
            run_id, target, params["task"], params["base"], params["hooks"],
            remote=params["repo"] if target != params["repo"] else None))
    ledger = RunLedger.open(run_id)
    await name_run(run_id)                                                # found by its run id in the UI
    flow_run = get_run_context().flow_run
    flow_runs = ledger.orchestration.get("flow_runs", []) + [str(flow_run.id)]
    roles = params["agents"]
    await ledger.arecord("orchestration",
                         {"flow_run_id": str(flow_run.id), "flow_runs": flow_runs, "roles": roles,
                          "owner": owner_token(), "github": github, "params": params},
                         f"{'run resumed' if resume else 'run plan'}: {', '.join(roles)} (flow run {flow_run.name})")
    get_logger().info("run %s: %d agent(s) %s on %s%s", run_id, len(roles), ", ".join(roles), params["repo"],
                      f" (resumed; cleaned up {len(reaped)} leftover(s))" if resume else "")
    get_logger().info("run %s: %s", run_id, disk_backend().sentence())   # how this host bounds agents' disk
    return ledger


async def run_agents(run_id: str, ledger: RunLedger, task: str, profiles: dict[str, AgentProfile],
                     plan: RunPlan | None = None) -> list[AgentOutcome]:
    """The research agents side by side, then the writers side by side with their findings in the prompt;
    an agent that finished in an earlier attempt is not rerun. The writers' branches, clones, Plan.md
    and (when the sandbox cap has room) sandboxes are made while the research runs: only their
    prompts wait for the findings (``ultrawork.runtime.prompts``)."""
    progress = Progress(len(profiles))
    progress.start(run_id)                                      # created alongside the agents' start
    research, writers = phases(profiles)

    def prompt(p: AgentProfile, found: str = "") -> str:
        return agent_prompt(prompt_for(task, p, run_id), p.role, plan, found)

    if not research:
        return list(await asyncio.gather(*(_one_agent(run_id, ledger, prompt(p), p, progress) for p in writers)))
    expect_research(run_id, [p.role for p in research])
    for p in writers:                   # the writers set up alongside the research; their prompt waits for it
        expect(run_id, p.role)
    writing = [asyncio.ensure_future(_one_agent(run_id, ledger, PENDING, p, progress)) for p in writers]
    try:
        found = list(await asyncio.gather(*(_researcher(run_id, ledger, prompt(p), p, progress) for p in research)))
        section = research_section(found)
        for p in writers:
            deliver(run_id, p.role, prompt(p, section))
        return found + list(await asyncio.gather(*writing))
    finally:                            # research that did not end: no prompt comes, the writers end too
        withdraw(run_id, [p.role for p in writers], "the research did not end")
        forget(run_id)
        await asyncio.shield(asyncio.gather(*writing, return_exceptions=True))


async def _researcher(run_id: str, ledger: RunLedger, prompt: str, profile: AgentProfile,
                      progress: Progress) -> AgentOutcome:
    """A research agent; once it has ended it needs no slot of the sandbox cap (see ``run_agents``)."""
    try:
        return await _one_agent(run_id, ledger, prompt, profile, progress)
    finally:
        seated(run_id, profile.role)


async def _one_agent(run_id: str, ledger: RunLedger, prompt: str, profile: AgentProfile,
                     progress: Progress) -> AgentOutcome:
    done = ledger.outcome(profile.role)
    if done is not None:                                   # finished before: not run again
        get_logger().info("%s finished in an earlier attempt (%s); not running it again", profile.role, done["status"])
        outcome = AgentOutcome.model_validate(done)
        await _show(run_id, profile.role, progress)
        return outcome
    with agent_tags(run_id, profile.role):
        state = await agent(run_id, profile, prompt, return_state=True)
    outcome = await _outcome(state)

    async def recorded() -> None:
        await ledger.arecord(f"outcomes/{profile.role}", outcome.model_dump(mode="json"),
                             stage_subject(profile.role, Stage.OUTCOME_RECORDED, f"({outcome.status})"))
        failpoint("stage:agent-finished", role=profile.role)

    await together(recorded(), _show(run_id, profile.role, progress))
    return outcome


async def _show(run_id: str, role: str, progress: Progress) -> None:
    """The agent's Plan.md (read up to the artifact's cap) and the run's progress in the UI."""
    def plan_text() -> tuple[Untrusted, str]:
        try:
            path = RunSuperproject.open(run_id).agent(role).plan_path
        except WorkspaceError as exc:    # its setup failed: no workspace, no Plan.md
            return Untrusted(f"No Plan.md: {exc}"), ""
        return read_agent_file(path, ARTIFACT_BYTES) or Untrusted("Plan.md is missing or not a regular file."), \
            str(path)
    plan, where = await asyncio.to_thread(plan_text)
    await together(publish_plan(run_id, role, plan, where), progress.advance())


def review_timed_out(run_id: str, ledger: RunLedger, outcomes: list[AgentOutcome], review_timeout: int) -> RunResult:
    branches = ", ".join(o.branch for o in outcomes)
    target_repo = ledger.run.where
    return RunResult(run_id=run_id, outcome=RunOutcome.REVIEW_TIMED_OUT, target_repo=target_repo, agents=outcomes,
                     message=f"no review within {review_timeout}s; every branch is kept in {target_repo}: {branches}")
