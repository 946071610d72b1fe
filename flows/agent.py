"""One agent's subflow: the seed's state machine, one state per line.

branch -> submodule -> Plan.md -> sandbox -> deploy agent -> execute loop
-> cleanup -> commit -> finalize Plan.md.

A failing agent never raises into the orchestrator: whatever fails inside it (a step, its
setup, a git error past its retries, a workspace over its cap) ends as a Failed state that
carries its :class:`AgentOutcome`, so its siblings go on and the review sees what happened.
The sandbox is removed -- every one of its processes gone -- before the host reads or
commits the work tree. The parts (branch, clone, Plan.md, sandbox) are one
:class:`~ultrawork.runtime.environment.AgentEnvironment`.
"""

from __future__ import annotations

import asyncio

from prefect import flow
from prefect.states import Completed, Failed

from ultrawork.agents.outcome import AgentOutcome
from ultrawork.agents.profiles import AgentProfile
from ultrawork.tasks.egress import note_egress
from ultrawork.runtime.environment import AgentEnvironment
from ultrawork.runtime.naming import untagged_tasks
from ultrawork.tasks.model import cite_research, is_model_agent, prepare_model_agent, run_model_agent, with_model_record


@flow(name="agent", flow_run_name="{run_id}-{profile.role}", validate_parameters=False)
async def agent(run_id: str, profile: AgentProfile, prompt: str, round_no: int = 1):
    with untagged_tasks():                          # its task runs are found by their flow run, not by tags
        return await _agent(run_id, profile, prompt, round_no)


async def _agent(run_id: str, profile: AgentProfile, prompt: str, round_no: int):
    env = AgentEnvironment(run_id, profile, prompt)
    env.round_no = round_no                         # a model agent continues its earlier round's conversation
    prepare_model_agent(env)                        # a model agent's file tool joins the files at /agent
    try:
        await env.set_up()                          # branch -> submodule -> Plan.md (the sandbox starts ahead)
        await env.prompt_arrives()                  # a writer set up during the research: its findings
        if round_no > 1:                            # a review round (ultrawork.flows.revise): run it again
            env.steps = [profile.argv(run_id)]
        await cite_research(env)                    # a writer's Plan.md names the research it starts from
        try:
            await env.start_sandbox()               # sandbox -> deploy agent (prompt + agent at /agent)
            for argv in env.steps:                  # execute loop
                await execute(env, argv)
        except Exception as exc:  # noqa: BLE001 - recorded and reviewed, never fatal to siblings
            env.step_failed(exc)
        finally:
            await asyncio.shield(env.remove_sandbox())   # cleanup, before the host touches the work tree
        egress = await note_egress(env.run_id, env.role, env.ws)  # what it asked for on the network, into Plan.md
        await env.commit()                          # commit: nothing an agent did is lost
        outcome = await env.finalize()              # finalize Plan.md, publish the branch
        outcome.egress = egress
    except Exception as exc:  # noqa: BLE001 - whatever broke in this agent is its outcome, never its siblings'
        await asyncio.shield(env.remove_sandbox())
        outcome = env.failed_outright(exc)
    return state_of(with_model_record(outcome, env))    # the model used, its tokens and findings


async def execute(env: AgentEnvironment, argv: list[str]) -> None:
    """One turn of the execute loop: the agent's command in its sandbox, or the model agent's
    loop here with each of its tool calls a step in that sandbox."""
    if is_model_agent(env):
        await run_model_agent(env)
    else:
        await env.run_step(argv)


def state_of(outcome: AgentOutcome):
    """The subflow's final state, carrying the outcome either way."""
    if outcome.status == "failed":
        return Failed(message=f"{outcome.role} agent failed: {outcome.errors[-1][:300]}", data=outcome)
    return Completed(message=f"{outcome.role} agent succeeded", data=outcome)
