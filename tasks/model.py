"""Prefect tasks of the built-in model agent: its settings for the run, its loop, its record.

The settings (with the resolved key) live in a context variable of the run, set once by
Sisyphus (:func:`use_model_settings`) and inherited by the agent subflows: the key is never a
flow or task parameter, so it never reaches the Prefect database, a log or an artifact.
The loop (``ultrawork.model_agent.ModelAgent``) runs in this process as one task per agent;
each model turn is a log line of that task, and each tool call a guarded step in the
agent's sandbox (network none), recorded in its Plan.md.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from ultrawork.agents.outcome import AgentOutcome
from ultrawork.blocks.model import ModelAgentSettings
from ultrawork.model_agent.accounting import AgentUsage, RunBudget, TurnRecord, total_usage
from ultrawork.model_agent.config import ModelAgentConfig
from ultrawork.model_agent.errors import BudgetExceeded, ModelCallError, ModelConfigError
from ultrawork.model_agent.journal import ConversationJournal, start_of
from ultrawork.model_agent.transport import RequestMeter
from ultrawork.runtime.logs import get_logger
from ultrawork.sandbox.errors import SandboxError
from ultrawork.tasks.recovery import recovery_for, task_options, will_retry
from ultrawork.untrusted import bounded_list

DEFAULT_SETTINGS = "default"
MAX_FINDINGS = 50        # findings of one model agent held in its outcome (each of at most FINDING_CHARS)
FINDING_CHARS = 4000


@dataclass
class ModelRun:
    """The model one run's agents use and the budget they share (held in memory only)."""

    config: ModelAgentConfig
    budget: RunBudget
    settings: ModelAgentSettings
    source: str
    planning: AgentUsage | None = None     # what planning the run sent (counted in the run's totals)
    roles: dict[str, ModelAgentConfig] | None = None   # a role's own model (per-role block, --model ROLE=NAME)

    @property
    def name(self) -> str:
        return f"{self.config.provider}:{self.config.model}"

    def config_for(self, agent: str) -> ModelAgentConfig:
        """The model of ``agent`` (``frontend-2`` uses frontend's); the run's model when it has none of its own."""
        from ultrawork.agents.team import base_role

        return (self.roles or {}).get(base_role(agent), self.config)

    def name_for(self, agent: str) -> str:
        config = self.config_for(agent)
        return f"{config.provider}:{config.model}"


async def role_models(name: str, base: ModelAgentConfig, chosen: dict[str, str] | None) -> dict[str, ModelAgentConfig]:
    """Each role's own model: its block ``<name>-<role>`` if saved, then ``chosen`` (role -> model name,
    same provider and key) on top. An unknown role or an empty name is refused by name."""
    from ultrawork.agents.profiles import ROLES

    for role, model in (chosen or {}).items():
        if role not in ROLES:
            raise ModelConfigError(f"model for unknown role {role!r}: use one of {', '.join(ROLES)}")
        if not isinstance(model, str) or not model.strip():
            raise ModelConfigError(f"model for {role}: the model name is empty")

    async def own(role: str) -> ModelAgentSettings | None:
        try:
            return await ModelAgentSettings.aload(f"{name}-{role}")
        except ValueError as exc:
            if "Unable to find block document" not in str(exc):
                raise
            return None

    blocks = dict(zip(ROLES, await asyncio.gather(*(own(r) for r in ROLES))))
    configs = {role: await asyncio.to_thread(block.config) for role, block in blocks.items() if block is not None}
    for role, model in (chosen or {}).items():
        configs[role] = configs.get(role, base).model_copy(update={"model": model.strip()})
    return configs


_ACTIVE: ContextVar[ModelRun | None] = ContextVar("ultrawork_model_run", default=None)
UNUSABLE_DEFAULT: ContextVar[str | None] = ContextVar("ultrawork_model_unusable", default=None)


async def load_model_settings(name: str | None) -> ModelAgentSettings | None:
    """The saved model settings block ``name`` (``default`` when None); None when ``default`` is not saved.

    A block named explicitly must exist: `ModelConfigError` names it."""
    try:
        return await ModelAgentSettings.aload(name or DEFAULT_SETTINGS)
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise
        if name:
            raise ModelConfigError(f"no model agent settings block named {name!r} "
                                   f"(save one: ultrawork model set --name {name} --provider P --model M)") from None
        return None


async def use_model_settings(name: str | None, needed_by: list[str], spent: list[dict | None] = (),
                             chosen: dict[str, str] | None = None) -> ModelRun | None:
    """Resolve the run's model (key included) before anything starts, and make it this run's.

    ``needed_by``: the agents configured to run the model agent; without settings they are
    refused by name here. ``spent``: usage recorded by agents of an earlier attempt (the run
    budget counts them). ``chosen``: role -> model name (``--model ROLE=NAME``)."""
    UNUSABLE_DEFAULT.set(None)
    settings = await load_model_settings(name)
    if settings is None and chosen:
        raise ModelConfigError(f"a model per role ({', '.join(chosen)}) needs a saved model first: "
                               "'ultrawork model set --provider P --model M --api-key-env NAME'")
    if settings is None:
        if needed_by:
            raise ModelConfigError(f"agent(s) {', '.join(needed_by)} run the model agent, but no model is "
                                   "configured: save one with 'ultrawork model set --provider P --model M "
                                   "--api-key-env NAME', or pass model_settings")
        _ACTIVE.set(None)
        return None
    try:
        config = await asyncio.to_thread(settings.config)      # reads the host environment for api_key_env
    except ModelConfigError as exc:
        if name or needed_by:
            raise
        _ACTIVE.set(None)   # the default block is unusable: runs without a model agent go on, offline
        get_logger().warning("model settings %r not used: %s", DEFAULT_SETTINGS, exc)
        UNUSABLE_DEFAULT.set(str(exc))
        return None
    run = ModelRun(config, settings.run_budget(total_usage(list(spent))), settings,
                   f"block {name or DEFAULT_SETTINGS!r}",
                   roles=await role_models(name or DEFAULT_SETTINGS, config, chosen))
    _ACTIVE.set(run)
    own = "".join(f"; {role}: {run.name_for(role)}" for role in run.roles)
    get_logger().info("model: %s (%s)%s%s", run.name, run.source,
                      f" for {', '.join(needed_by)}" if needed_by else "", own)
    return run


def active_model() -> ModelRun:
    run = _ACTIVE.get()
    if run is None:
        raise ModelConfigError("this run has no model configured (ultrawork-model-agent block)")
    return run


def turn_logger(role: str):
    """Each model turn as one line of the agent's log (no arguments' content, never the key)."""
    log = get_logger()

    def on_turn(turn: TurnRecord) -> None:
        calls = "; ".join(f"{c.name}({c.arguments[:120]})" for c in turn.tool_calls) or "no tool call"
        log.info("[%s model] turn %d (%s): %s | tokens in %d out %d | total %d request(s), in %d out %d",
                 role, turn.turn, turn.model or "?", calls, turn.input_tokens, turn.output_tokens,
                 turn.usage.requests, turn.usage.input_tokens, turn.usage.output_tokens)

    return on_turn


@dataclass
class AgentSpend:
    """What one agent's model round has spent so far, over the attempts of its task: the HTTP requests
    (its meter, which also refuses the one past a budget) and the tokens, tool calls and seconds."""

    meter: RequestMeter
    spent: AgentUsage | None = None
    round_no: int = 1
    history: str | None = None      # the conversation a failed attempt leaves to the next one


@task(name="model-agent", task_run_name="{role}-model-agent", cache_policy=NO_CACHE,
      **task_options(BudgetExceeded, ModelConfigError, ModelCallError, SandboxError))
async def model_agent_loop(handle, ws, role: str, prompt: str, writable: bool, timeout: float, spend: AgentSpend,
                           config: ModelAgentConfig):
    """The model agent of one role, to its final answer; retried only for a failed model call
    or a broken sandbox, never for a spent budget or bad settings (``tasks.recovery``). Every
    attempt's requests and tokens count (``spend``)."""
    from ultrawork.model_agent.agent import ModelAgent
    from ultrawork.model_agent.tools import GuardedSandboxTools
    from ultrawork.tasks.sandboxes import engine

    run = active_model()
    handle.attempts += 1
    sandbox = await asyncio.to_thread(handle.ensure)
    tools = GuardedSandboxTools(engine(), sandbox, ws, timeout=timeout)
    log_turn = turn_logger(role)

    def on_turn(turn: TurnRecord) -> None:
        log_turn(turn)
        write_live_usage(ws, f"{config.provider}:{config.model}", turn.usage)

    journal = ConversationJournal(ws.state_dir)
    if spend.history:       # a retried attempt: the request that failed is sent again, as it was
        message, history, how = None, spend.history, "continues its conversation after a failed model call"
    else:                   # a resumed run, or a later round: its saved conversation
        message, history, how = await asyncio.to_thread(start_of, journal, spend.round_no, prompt)
    if how:
        get_logger().info("%s: the model agent %s", role, how)
        await asyncio.to_thread(ws.plan.append_note, f"the model agent {how}", kind="model agent")
    agent = ModelAgent(config, on_turn=on_turn, budget=run.budget, meter=spend.meter, spent=spend.spent,
                       on_history=lambda messages: journal.save(spend.round_no, messages))
    try:
        result = await agent.run_async(message, tools, role, writable, history=history)
    except SandboxError:
        handle.broken = True
        spend.history = await asyncio.to_thread(journal.in_progress, spend.round_no)
        raise
    except BudgetExceeded as exc:
        if exc.result is not None:
            await asyncio.to_thread(journal.finish, spend.round_no, exc.result.messages_json)
        raise
    except ModelCallError as exc:
        if exc.result is not None:
            spend.spent = exc.result.usage
        spend.history = await asyncio.to_thread(journal.in_progress, spend.round_no)
        await asyncio.to_thread(_note_retry, handle, ws, exc)
        raise
    await asyncio.to_thread(journal.finish, spend.round_no, result.messages_json)
    return result


LIVE_USAGE = "model-usage.json"


def write_live_usage(ws, model: str, usage: AgentUsage) -> None:
    """The agent's usage so far, where ``ultrawork status`` reads it while the agent works (host-private)."""
    import json
    import os

    try:
        ws.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = ws.state_dir / f".{LIVE_USAGE}.tmp"
        tmp.write_text(json.dumps({"model": model, "usage": usage.model_dump()}))
        os.replace(tmp, ws.state_dir / LIVE_USAGE)
    except OSError:           # a display aid: never the agent's failure
        pass


def _note_retry(handle, ws, exc: ModelCallError) -> None:
    """A failed model call that will be retried: a recovery in the outcome and in Plan.md."""
    context = TaskRunContext.get()
    if will_retry(exc, context.task_run.run_count if context else 1):
        action = recovery_for(exc).action
        handle.recoveries.append(f"ModelCallError: {action}")
        ws.plan.append_note(f"{str(exc)[:500]} (recovery: {action})", kind="recovery")


def usage_line(name: str, usage: AgentUsage) -> str:
    cost = "" if usage.cost is None else f", cost {usage.cost:g}"
    return (f"model {name}: {usage.requests} request(s), {usage.input_tokens} input / {usage.output_tokens} "
            f"output tokens, {usage.tool_calls} tool call(s), {usage.seconds:g}s{cost}")


# -- the agent subflow's model path ------------------------------------------------------
def is_model_agent(env) -> bool:
    return getattr(env.profile, "agent", "command") == "model"


def prepare_model_agent(env) -> None:
    """Deploy the model agent's file tool (mounted read-only at /agent) with the prompt."""
    from ultrawork.model_agent.tools import SANDBOX_FILES

    env.model_result = None
    if is_model_agent(env):
        env.files.update(SANDBOX_FILES)


async def cite_research(env) -> None:
    """A writer's Plan.md names the research it started from (the findings are in its prompt)."""
    prompt = env.files.get("prompt.md", "")
    start = prompt.find("\n# Research findings\n")
    if start >= 0 and env.ws is not None and env.steps:
        roles = [line[3:].strip() for line in prompt[start:].splitlines() if line.startswith("## ")]
        await asyncio.to_thread(env.ws.plan.append_note, "started from the research findings of "
                                + ", ".join(roles) + " (given in the prompt; cited below where used)",
                                kind="research")


async def run_model_agent(env) -> None:
    """The execute loop of a model agent: its loop here, its tool calls in its sandbox; the
    result (or the part done before a budget or error stopped it) is kept for the outcome."""
    run = active_model()
    config = run.config_for(env.role)
    env.model_name = run.name_for(env.role)
    spend = AgentSpend(RequestMeter(limit=config.max_requests, parent=run.budget.meter),
                       round_no=getattr(env, "round_no", 1))
    try:
        result = await model_agent_loop(env.handle, env.ws, env.role, env.files["prompt.md"],
                                        env.profile.workspace_mode == "rw", env.profile.timeout, spend, config)
    except (BudgetExceeded, ModelCallError) as exc:
        env.model_result = exc.result
        await _note_usage(env, f"stopped: {exc}")
        raise
    env.model_result = result
    await _note_usage(env, f"answer: {result.answer.summary[:500]}" if result.answer else "no answer")


async def _note_usage(env, how: str) -> None:
    result = env.model_result
    usage = result.usage if result is not None else AgentUsage()
    line = f"{usage_line(env.model_name, usage)}; {how}"
    get_logger().info("%s: %s", env.role, line)
    if env.ws is not None:
        await asyncio.to_thread(env.ws.plan.append_note, line, kind="model agent")


def with_model_record(outcome: AgentOutcome, env) -> AgentOutcome:
    """The outcome with the model used, its usage and its findings (for the writers, review, results)."""
    if not is_model_agent(env):
        return outcome
    result = getattr(env, "model_result", None)
    findings: list[str] = []
    if result is not None:
        findings = bounded_list(dict.fromkeys([*(result.answer.findings if result.answer else []),
                                               *result.findings_written]), MAX_FINDINGS, FINDING_CHARS)
    run = _ACTIVE.get()
    return outcome.model_copy(update={
        "model": getattr(env, "model_name", None) or (run.name if run else None),
        "usage": (result.usage if result is not None else AgentUsage()).model_dump(),
        "findings": findings})
