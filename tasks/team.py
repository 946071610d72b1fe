"""Prefect side of the run's team: Sisyphus's plan (the model's, or the rules' offline), recorded and shown.

With a model configured and no agents chosen, one structured request turns the task into a
`RunPlan` (roles, one brief each, writer subtasks on separate files); a failed planning call
falls back to the rules with a warning, so a run never depends on the planner. The plan is a
ledger stage (``plan.json``: a resumed run keeps its briefs and does not plan again) and a
markdown artifact.
"""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ultrawork.agents.outcome import AgentOutcome
from ultrawork.agents.profiles import AgentProfile, classify
from ultrawork.agents.team import RunPlan, rules_plan
from ultrawork.model_agent.accounting import total_usage
from ultrawork.model_agent.errors import ModelAgentError, ModelConfigError
from ultrawork.runtime.artifacts import artifact_key
from ultrawork.runtime.logs import get_logger
from ultrawork.tasks.model import UNUSABLE_DEFAULT, ModelRun, use_model_settings
from ultrawork.workspace.gitcmd import run_git
from ultrawork.workspace.ledger import RunLedger
from ultrawork.workspace.repo_guard import open_target_repo


async def model_for_run(name: str | None, run_id: str, resume: bool,
                        role_models: dict[str, str] | None = None) -> ModelRun | None:
    """The run's model (None offline); on resume the run budget counts what finished agents spent."""
    spent: list[dict | None] = []
    if resume:
        try:
            ledger = RunLedger.open(run_id)
            spent = [(ledger.outcome(r) or {}).get("usage") for r in ledger.orchestration.get("roles", [])]
            spent.append(ledger.read("plan").get("usage"))           # planning counts too
        except Exception:  # noqa: BLE001 - the resume's own checks report a missing run
            spent = []
    return await use_model_settings(name, [], spent, role_models)


def check_model_agents(profiles: dict[str, AgentProfile], model: ModelRun | None) -> None:
    """A role set to run the model agent needs a model: refused by name before anything starts."""
    needing = [name for name, p in profiles.items() if p.agent == "model"]
    if needing and model is None:
        why = UNUSABLE_DEFAULT.get()
        raise ModelConfigError(f"agent(s) {', '.join(needing)} run the model agent, but no model is configured: "
                               + (f"the block 'default' is unusable ({why})" if why else
                                  "save one with 'ultrawork model set --provider P --model M --api-key-env NAME' "
                                  "or pass model_settings"))


def _repo_files(repo: str) -> list[str]:
    target = open_target_repo(repo)
    out = run_git(["ls-tree", "-r", "--name-only", "--full-tree", "HEAD"], cwd=target.path, check=False)
    return out.stdout.splitlines()[:2000] if out.returncode == 0 else []


@task(name="plan-run", cache_policy=NO_CACHE, retries=0)
async def model_plan(task_text: str, repo: str, model: ModelRun) -> RunPlan:
    """Not retried here: the transport tries each request ``attempts`` times, and the whole of
    planning is bounded by ``plan_max_seconds`` (then the built-in rules choose)."""
    from ultrawork.model_agent.planner import plan_task

    from ultrawork.model_agent.accounting import AgentUsage
    from ultrawork.model_agent.transport import RequestMeter

    files = await asyncio.to_thread(_repo_files, repo)
    meter = RequestMeter(parent=model.budget.meter)          # every request counts, a failed planning's too
    try:
        plan, usage = await plan_task(model.config, task_text, files, meter)
    except BaseException:
        model.planning = AgentUsage(requests=meter.sent)
        raise
    usage = usage.model_copy(update={"requests": meter.sent})
    model.planning = usage
    model.budget.charge(usage.input_tokens + usage.output_tokens)
    get_logger().info("plan by %s: %s (%d request(s), %d input / %d output tokens)", plan.planned_by,
                      ", ".join(plan.names()), usage.requests, usage.input_tokens, usage.output_tokens)
    return plan


async def plan_run(run_id: str, task_text: str, repo: str, agents: list[str] | None, resume: bool,
                   model: ModelRun | None) -> RunPlan | None:
    """The model's plan, the plan of an earlier attempt on resume, or None (the rules choose)."""
    if resume:
        try:
            recorded = RunLedger.open(run_id).read("plan")
        except Exception:  # noqa: BLE001 - the resume's own checks report a missing run
            recorded = {}
        return RunPlan.model_validate(recorded) if recorded else None
    if agents or model is None or not model.settings.plan_runs:
        return None
    try:
        return await model_plan(task_text, repo, model)
    except (ModelAgentError, ValueError) as exc:
        get_logger().warning("planning failed, the built-in rules choose the agents instead: %s", str(exc)[:500])
        return None


async def record_plan(run_id: str, ledger: RunLedger, task_text: str, plan: RunPlan | None,
                      profiles: dict[str, AgentProfile], model: ModelRun | None = None) -> RunPlan:
    """The plan the run follows, as a ledger stage and an artifact (the rules' plan when none), with
    what planning sent to the model (``usage``), a planning that failed included."""
    plan = plan or rules_plan(task_text, list(profiles) or classify(task_text))
    if not ledger.read("plan"):
        usage = model.planning.model_dump() if model is not None and model.planning is not None else None
        await ledger.arecord("plan", {**plan.model_dump(mode="json"), "usage": usage},
                             f"run plan ({plan.planned_by}): {', '.join(plan.names())}")
    await create_markdown_artifact(markdown=plan.markdown(), key=artifact_key("plan", run_id, "sisyphus"),
                                   description=f"Sisyphus's plan for run {run_id}")
    return plan


def run_usage_line(outcomes: list[AgentOutcome]) -> str | None:
    """The run's model totals, for its log (None when no agent used a model)."""
    used = [o.usage for o in outcomes if o.usage]
    if not used:
        return None
    t = total_usage(used)
    cost = "" if t.cost is None else f", cost {t.cost:g}"
    return (f"model agents: {len(used)}; {t.requests} request(s), {t.input_tokens} input / {t.output_tokens} "
            f"output tokens, {t.tool_calls} tool call(s){cost}")
