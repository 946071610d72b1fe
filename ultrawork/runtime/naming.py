"""Runs people can find: a run's flow run is named by its run id and tagged ``run:<id>``; each
agent's subflow is ``<run-id>-<role>``, tagged ``run:<id>`` and ``role:<role>``."""

from __future__ import annotations

import contextlib

from prefect import tags
from prefect.context import TagsContext


def run_tag(run_id: str) -> str:
    return f"run:{run_id}"


def role_tag(role: str) -> str:
    return f"role:{role}"


def agent_tags(run_id: str, role: str):
    """The tags context an agent's subflow is called in."""
    return tags(run_tag(run_id), role_tag(role))


@contextlib.contextmanager
def untagged_tasks():
    """Task runs inside carry no tags of the run's (the subflow itself keeps them).

    Prefect's task engine takes tag concurrency slots for every tagged task run through one
    acquisition service per distinct tag set (a thread and an API client), kept for the
    life of the process: with ``run:<id>`` and ``role:<role>`` on every task, a worker would
    keep one more per agent of every run it ever ran."""
    with TagsContext(current_tags=set()):
        yield


async def name_run(run_id: str) -> None:
    """Name the current flow run by ``run_id`` and tag it (the run id is known only once the flow runs)."""
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context

    flow_run = get_run_context().flow_run
    wanted = sorted(set(flow_run.tags) | {run_tag(run_id)})
    if flow_run.name == run_id and sorted(flow_run.tags) == wanted:
        return
    async with get_client() as client:
        await client.update_flow_run(flow_run.id, name=run_id, tags=wanted)


def flow_run_url(flow_run_id: str | None) -> str | None:
    """The run's address in the Prefect UI."""
    from ultrawork.runtime.artifacts import ui_url

    return ui_url(f"runs/flow-run/{flow_run_id}") if flow_run_id else None


def continued_run_id() -> str | None:
    """The run id this flow run was given before (its ``run:<id>`` tag): a run suspended for its
    review starts its flow again from the top when the review comes, and continues that run."""
    from prefect.context import get_run_context

    flow_run = get_run_context().flow_run
    return next((t.removeprefix("run:") for t in flow_run.tags if t.startswith("run:")), None)


def continues_flow_run(run_id: str) -> bool:
    """Whether the run's record names this very flow run: it ran here before (and was suspended)."""
    from prefect.context import get_run_context

    from ultrawork.workspace.ledger import RunLedger, RunNotFound

    try:
        recorded = RunLedger.open(run_id).orchestration.get("flow_run_id")
    except RunNotFound:
        return False
    return recorded == str(get_run_context().flow_run.id)
