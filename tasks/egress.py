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
from ultrawork.gateway import EgressSummary, GatewayError, SecretUnavailable
from ultrawork.gateway.rules import secret_source
from ultrawork.gateway.run import (
    egress_rules, removal_left, run_egress as registered, start_run_egress, stop_run_egress, summary_markdown,
)
from ultrawork.runtime.artifacts import artifact_key
from ultrawork.runtime.logs import get_logger
from ultrawork.untrusted import table_rows


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


# A lab's own upstream (an internal model server, a test's stand-in): set on the host that runs the flow.
UPSTREAM_NETWORK_ENV = "ULTRAWORK_GATEWAY_UPSTREAM_NETWORK"    # Docker network the gateway's egress uses
UPSTREAM_CA_ENV = "ULTRAWORK_GATEWAY_UPSTREAM_CA"              # PEM file of a CA trusted for upstream TLS
ALLOWED_PRIVATE_ENV = "ULTRAWORK_GATEWAY_ALLOWED_PRIVATE"      # comma-separated CIDRs upstreams may live in


def _upstream_settings() -> tuple[dict, dict]:
    """(rules options, gateway options) from the host's environment."""
    ca_file = os.environ.get(UPSTREAM_CA_ENV)
    ca = None
    if ca_file:
        try:
            with open(ca_file) as fh:
                ca = fh.read()
        except OSError as exc:
            raise SecretUnavailable(UPSTREAM_CA_ENV, f"cannot read {ca_file}: {exc.strerror}") from None
    private = [c.strip() for c in os.environ.get(ALLOWED_PRIVATE_ENV, "").split(",") if c.strip()]
    network = os.environ.get(UPSTREAM_NETWORK_ENV) or None
    return {"upstream_ca": ca, "allowed_private": private}, {"upstream_network": network}


def _rules(profiles: dict[str, AgentProfile]):
    rule_options, _ = _upstream_settings()
    return egress_rules({role: p.egress for role, p in profiles.items()}, **rule_options)


def egress_profiles(profiles: dict[str, AgentProfile]) -> dict:
    """Role -> egress profile of the roles that have one (checked: bad rules are refused by name)."""
    rules = _rules(profiles)
    return {} if rules is None else rules.agents


async def check_egress(profiles: dict[str, AgentProfile]) -> None:
    """Before anything starts: the egress rules are sound and every secret they name can be read
    on the host (:class:`~ultrawork.gateway.errors.GatewayRulesError` names the field otherwise)."""
    rules = _rules(profiles)
    if rules is None:
        return
    for agent, profile in rules.agents.items():
        refs = {cred.secret for cred in profile.credentials}
        found = await host_secrets(refs)
        for i, cred in enumerate(profile.credentials):
            if cred.secret not in found:
                raise SecretUnavailable(f"agents.{agent}.credentials[{i}]",
                                        f"secret {cred.secret!r} is not set on the host")
        del found


async def note_egress(run_id: str, role: str, ws) -> str | None:
    """The agent's egress summary (counts and hosts, never header values) as a Plan.md note; the line."""
    egress = registered(run_id)
    if egress is None or ws is None or role not in egress.gateway.rules.agents:
        return None

    def note() -> str:
        text = summary_markdown(egress.gateway.summary(role))
        ws.plan.append_note(text, kind="egress")
        return text

    try:
        line = await asyncio.to_thread(note)
    except GatewayError as exc:   # the gateway's log is gone with its container: say so
        line = f"egress: no record ({exc})"
        ws.plan.append_note(line, kind="egress")
    get_logger().info("%s %s", role, line)
    return line


@task(name="start-egress-gateway", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2,
      retry_condition_fn=lambda task, run, state: isinstance(_exception(state), GatewayError)
      and not isinstance(_exception(state), ValueError))
async def start_egress(run_id: str, profiles: dict[str, AgentProfile]) -> list[str]:
    """Start the run's gateway for the roles with an egress profile; their networks."""
    rules = _rules(profiles)
    if rules is None:
        return []
    _, gateway_options = _upstream_settings()
    refs = {cred.secret for agent in rules.agents.values() for cred in agent.credentials}
    values = await host_secrets(refs)
    egress = await asyncio.to_thread(start_run_egress, run_id, rules, values.__getitem__, **gateway_options)
    del values
    get_logger().info("egress gateway of run %s serves %s (started in %.2f s)", run_id,
                      ", ".join(f"{a} ({', '.join(r.host for r in p.allow)})" for a, p in rules.agents.items()),
                      egress.seconds.get("start", 0.0))
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
                 "not recorded": s.dropped,
                 "bytes out": s.bytes_out, "bytes in": s.bytes_in,
                 "hosts": ", ".join(f"{h} ({sum(c.values())})" for h, c in sorted(s.hosts.items()))}
                for s in summaries.values()]
        try:
            await create_table_artifact(table=table_rows(rows), key=artifact_key("egress", run_id),
                                        description=f"Egress of each agent of run {run_id} through its gateway")
        except Exception as exc:  # noqa: BLE001 - the record of egress is in the log already
            log.warning("the egress artifact of run %s was not written: %s", run_id, exc)
    return {agent: vars(s) for agent, s in summaries.items()}


async def gateway_removed(run_id: str) -> None:
    """Wait until the run's stopped gateway is removed (its removal runs alongside the review's
    start); a removal that left something behind is said, and the reaper removes it later."""
    left = await asyncio.to_thread(removal_left, run_id)
    if left:
        get_logger().warning("run %s: %s", run_id, left)


@contextlib.asynccontextmanager
async def run_egress(run_id: str, profiles: dict[str, AgentProfile]) -> AsyncIterator[list[str]]:
    """The run's gateway for the agents inside the block, stopped however the block ends.

    It starts alongside what the block does first (the run's superproject, the agents'
    clones): a sandbox that needs it waits until it serves, and a gateway that could not
    start is each such agent's ``GatewayError``, naming why."""
    roles = list(egress_profiles(profiles))
    if not roles:
        yield []
        return
    starting = asyncio.ensure_future(start_egress(run_id, profiles))
    try:
        yield roles
    finally:
        await asyncio.shield(asyncio.gather(starting, return_exceptions=True))
        if registered(run_id) is not None:
            await asyncio.shield(stop_egress(run_id))
