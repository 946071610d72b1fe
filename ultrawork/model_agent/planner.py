"""Sisyphus's planning call: the task (and the repository's file list) in, a `RunPlan` out.

One structured-output request, no tools: the model never touches the repository here,
it only sees the file names the host listed. A plan that fails validation (an unknown
role, two writers on one file) is sent back to the model to fix, up to two times.
"""

from __future__ import annotations

import asyncio

from pydantic_ai import Agent, ToolOutput
from pydantic_ai.exceptions import ModelAPIError, UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.usage import UsageLimits

from ultrawork.agents.team import MAX_AGENTS, RunPlan

from .accounting import AgentUsage, agent_usage
from .agent import _redact, build_model, close_model
from .config import ModelAgentConfig
from .errors import BudgetExceeded, ModelCallError
from .transport import RequestMeter, RequestRefused

PLAN_TOOL = "submit_plan"
MAX_LISTED_FILES = 300

INSTRUCTIONS = f"""You are Sisyphus, the planner of ultrawork: you split a coding task among agents that work
in parallel, each in its own sandboxed clone of the repository.
Roles: explore (maps the code relevant to the task, read-only), librarian (dependencies, versions, docs,
read-only), oracle (reviews the relevant code for defects and risks, read-only), frontend (the writer:
makes the change). The research roles run first; the writers start with their findings.
Choose only the roles the task needs. Give every agent one focused brief. When the change touches
independent files, split it among writers frontend, frontend-2, frontend-3 ... and list each writer's
files: no two writers may touch the same file. At most {MAX_AGENTS} agents. Call {PLAN_TOOL}."""


async def plan_task(config: ModelAgentConfig, task: str, files: list[str],
                    meter: RequestMeter | None = None) -> tuple[RunPlan, AgentUsage]:
    """The model's plan for ``task`` and what the call used; `ModelCallError` when it cannot plan
    within ``config.plan_max_seconds`` (every attempt of every request included). ``meter`` counts
    the HTTP requests sent (the run's budget)."""
    listing = "\n".join(files[:MAX_LISTED_FILES]) + (f"\n[... {len(files) - MAX_LISTED_FILES} more]"
                                                     if len(files) > MAX_LISTED_FILES else "")
    prompt = f"# Task\n\n{task.strip()}\n\n# Files in the repository\n\n{listing or '(none)'}\n"
    model = build_model(config, meter)
    agent = Agent(model, output_type=ToolOutput(RunPlan, name=PLAN_TOOL),
                  instructions=INSTRUCTIONS, retries=2, name="ultrawork-sisyphus")
    seconds = config.plan_max_seconds
    try:
        async with asyncio.timeout(seconds), agent:
            result = await agent.run(prompt, usage_limits=UsageLimits(request_limit=3))
    except TimeoutError:
        raise ModelCallError(f"planning took longer than its {seconds:g}s bound (plan_max_seconds)") from None
    except UsageLimitExceeded as exc:
        raise BudgetExceeded("planning", f"planning stopped: {exc}") from None
    except RequestRefused as exc:
        raise BudgetExceeded(exc.limit, f"planning stopped: {exc}") from None
    except (ModelAPIError, UnexpectedModelBehavior) as exc:
        detail = _redact(f"{type(exc).__name__}: {str(exc)[:500]}", config)
        raise ModelCallError(f"planning failed: {detail}") from None
    finally:
        await close_model(model)
    plan = result.output.model_copy(update={"planned_by": f"{config.provider}:{config.model}"})
    return plan, agent_usage(config, result.usage, 0.0)
