"""``ultrawork logs RUN [ROLE] [-f]``: a run's (or one agent's) output, read from Prefect's logs API."""

from __future__ import annotations

import sys
import time
import uuid
from datetime import datetime
from typing import Annotated, Optional

import typer

from ultrawork.untrusted import visible

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
PAGE = 200


def run_flow_runs(run_id: str, role: str | None, client) -> list:
    """The flow runs whose logs belong to the run (every attempt and its agents) or to one agent,
    oldest first (``client``: an open sync client)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    from ultrawork.cli.runs import open_run
    from ultrawork.runtime.naming import role_tag, run_tag
    from ultrawork.workspace.ledger import RunLedger

    open_run(run_id)                                           # an unknown run is named as such
    recorded = RunLedger.open(run_id).orchestration.get("flow_runs") or []
    wanted = [run_tag(run_id)] + ([role_tag(role)] if role else [])
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=wanted)),
                                 sort=FlowRunSort.EXPECTED_START_TIME_ASC)
    if role is None:
        known = {r.id for r in runs}
        runs += [client.read_flow_run(uuid.UUID(i)) for i in recorded if uuid.UUID(i) not in known]
    return runs


def _line(log) -> str:
    when = log.timestamp.strftime("%H:%M:%S") if isinstance(log.timestamp, datetime) else str(log.timestamp)
    level = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(log.level, str(log.level))
    prefix = f"{when} {level:<7} "
    # a record of several lines (a step's output): its later lines are indented, so none passes for a record
    return prefix + visible(log.message).replace("\n", "\n" + " " * len(prefix)) + "\n"


def read_new(client, flow_runs: list[uuid.UUID], seen: set, after) -> tuple[list, object]:
    """Logs of ``flow_runs`` not printed yet, oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    found, offset = [], 0
    while True:
        flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_runs),
                        timestamp=LogFilterTimestamp(after_=after) if after else None)
        page = client.read_logs(log_filter=flt, limit=PAGE, offset=offset, sort=LogSort.TIMESTAMP_ASC)
        found += [log for log in page if log.id not in seen]
        offset += len(page)
        if len(page) < PAGE:
            break
    for log in found:
        seen.add(log.id)
    return found, (found[-1].timestamp if found else after)


def main_run(client, run_id: str):
    """The run's latest flow run (the one its record names), or None before it is recorded."""
    from ultrawork.workspace.ledger import RunLedger

    flow_run_id = RunLedger.open(run_id).orchestration.get("flow_run_id")
    return client.read_flow_run(uuid.UUID(flow_run_id)) if flow_run_id else None


def _stopped(flow_run) -> bool:
    """Finished, or paused (a run waiting for its review): nothing more comes until someone acts."""
    state = flow_run.state if flow_run is not None else None
    return state is not None and (state.type.value in FINAL or state.is_paused())


def ended_at(client, run_id: str, role: str | None, flow_runs: list) -> datetime | None:
    """When what is followed ended, or None while it goes on: the run's flow run finished or paused
    for review; for one agent, its latest subflow finished (or the run itself stopped)."""
    main = main_run(client, run_id)
    if _stopped(main):
        return main.state.timestamp
    if role is not None and flow_runs:
        latest = flow_runs[-1]
        if latest.state is not None and latest.state.type.value in FINAL:
            return latest.state.timestamp
    return None


def _print(found: list) -> None:
    sys.stdout.writelines(_line(log) for log in found)
    sys.stdout.flush()


def logs_command(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    role: Annotated[Optional[str], typer.Argument(help="Only this agent's output.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help=(
        "Keep printing as the logs come; ends once what is followed has ended: the agent's subflow "
        "finished, or for the whole run, the run finished or paused for review."))] = False,
) -> None:
    """Print a run's logs (or one agent's) from the Prefect server; -f follows them as they come."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_LOGGING_TO_API_BATCH_INTERVAL

    from ultrawork.local_server.manager import ensure_server

    from ultrawork.cli.runs import open_run
    from ultrawork.workspace.ledger import RunLedger

    if role is not None:            # a role the run does not have would be followed forever
        roles = RunLedger.open(run_id).orchestration.get("roles") or open_run(run_id).roles()
        if roles and role not in roles:
            sys.stderr.write(f"error: run {run_id} has no agent {visible(role)!r} (its agents: {', '.join(roles)})\n")
            raise typer.Exit(2)
    ensure_server(say=lambda msg: sys.stderr.write(f"{msg}\n"))
    seen: set = set()
    after = None
    with get_client(sync_client=True) as client:
        while True:
            flow_runs = run_flow_runs(run_id, role, client)
            ids = [r.id for r in flow_runs]
            if ids:
                found, after = read_new(client, ids, seen, after)
                _print(found)
            if not follow:
                if not ids:
                    sys.stderr.write(f"no flow runs of {run_id}{' for ' + role if role else ''} yet\n")
                return
            ended = ended_at(client, run_id, role, flow_runs)
            if ended is not None:
                # its last lines reach the server up to one log batch after its end
                settle = ended.timestamp() + PREFECT_LOGGING_TO_API_BATCH_INTERVAL.value() + 1.0 - time.time()
                if settle > 0:
                    time.sleep(min(settle, 10.0))
                ids = [r.id for r in run_flow_runs(run_id, role, client)]
                if ids:
                    found, after = read_new(client, ids, seen, after)
                    _print(found)
                return
            time.sleep(1.0)
