"""The run's egress gateway as Prefect tasks: started before the agents, stopped after them.

``run_egress(run_id, profiles)`` is an async context manager a run wraps its
agents in: it starts one gateway for every agent whose profile has an egress
profile (none: nothing starts), and stops it on success, failure and cancel,
logging each agent's egress summary and publishing them as an artifact.
Secrets are read on the host (a host environment variable or a Prefect
``Secret`` block, as each credential's ``secret`` says) when the gateway
starts, and go only into the gateway's private rules file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import AsyncIterator

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from ultrawork.agents.profiles import AgentProfile
from ultrawork.gateway import EgressSummary, GatewayError
from ultrawork.gateway.rules import secret_source
from ultrawork.gateway.run import egress_rules, run_egress as registered, start_run_egress, stop_run_egress, summary_markdown
from ultrawork.runtime.artifacts import artifact_key
from ultrawork.runtime.logs import get_logger


async def host_secrets(refs: set[str]) -> dict[str, str]:
    """Each ``secret`` reference's value, read on the host; a missing one is left out (the
    gateway then refuses to start, naming the credential, never the value)."""
    from prefect.blocks.system import Secret

    values: dict[str, str] = {}
    for ref in sorted(refs):
        source, name = secret_source(ref)
        if source == "env":
            if os.environ.get(name):
                values[ref] = os.environ[name]
            continue
        try:
            block = await Secret.aload(name)
        except ValueError:          # no Secret block of that name
            continue
        value = block.get()
        if isinstance(value, str) and value:
            values[ref] = value
    return values


def egress_profiles(profiles: dict[str, AgentProfile]) -> dict:
    """Role -> egress profile of the roles that have one (checked: bad rules are refused by name)."""
    rules = egress_rules({role: p.egress for role, p in profiles.items()})
    return {} if rules is None else rules.agents


@task(name="start-egress-gateway", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2,
      retry_condition_fn=lambda task, run, state: isinstance(_exception(state), GatewayError)
      and not isinstance(_exception(state), ValueError))
async def start_egress(run_id: str, profiles: dict[str, AgentProfile]) -> list[str]:
    """Start the run's gateway for the roles with an egress profile; their networks."""
    rules = egress_rules({role: p.egress for role, p in profiles.items()})
    if rules is None:
        return []
    refs = {cred.secret for agent in rules.agents.values() for cred in agent.credentials}
    values = await host_secrets(refs)
    egress = await asyncio.to_thread(start_run_egress, run_id, rules, values.__getitem__)
    del values
    get_logger().info("egress gateway of run %s serves %s", run_id,
                      ", ".join(f"{a} ({', '.join(r.host for r in p.allow)})" for a, p in rules.agents.items()))
    return list(egress.gateway.networks.values())


def _exception(state):
    try:
        return state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - reading the result may raise it
        return exc


@task(name="stop-egress-gateway", cache_policy=NO_CACHE)
async def stop_egress(run_id: str) -> dict[str, dict]:
    """Stop the run's gateway; each agent's egress summary (also logged and published)."""
    log = get_logger()
    summaries: dict[str, EgressSummary] = await asyncio.to_thread(stop_run_egress, run_id)
    for agent, summary in summaries.items():
        log.info("%s %s", agent, summary_markdown(summary))
    if summaries:
        rows = [{"agent": s.agent, "allowed": s.allowed, "refused": s.refused, "failed": s.failed,
                 "bytes out": s.bytes_out, "bytes in": s.bytes_in,
                 "hosts": ", ".join(f"{h} ({sum(c.values())})" for h, c in sorted(s.hosts.items()))}
                for s in summaries.values()]
        try:
            await create_table_artifact(table=rows, key=artifact_key("egress", run_id),
                                        description=f"Egress of each agent of run {run_id} through its gateway")
        except Exception as exc:  # noqa: BLE001 - the record of egress is in the log already
            log.warning("the egress artifact of run %s was not written: %s", run_id, exc)
    return {agent: vars(s) for agent, s in summaries.items()}


@contextlib.asynccontextmanager
async def run_egress(run_id: str, profiles: dict[str, AgentProfile]) -> AsyncIterator[list[str]]:
    """The run's gateway for the agents inside the block; stopped however the block ends."""
    if not egress_profiles(profiles):
        yield []
        return
    try:
        networks = await start_egress(run_id, profiles)
        yield networks
    finally:
        if registered(run_id) is not None:
            await asyncio.shield(stop_egress(run_id))
