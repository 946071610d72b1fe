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


def run_flow_runs(run_id: str, role: str | None) -> list[uuid.UUID]:
    """The flow runs whose logs belong to the run (every attempt and its agents) or to one agent."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from ultrawork.cli.runs import open_run
    from ultrawork.runtime.naming import role_tag, run_tag
    from ultrawork.workspace.ledger import RunLedger

    open_run(run_id)                                           # an unknown run is named as such
    recorded = RunLedger.open(run_id).orchestration.get("flow_runs") or []
    wanted = [run_tag(run_id)] + ([role_tag(role)] if role else [])
    with get_client(sync_client=True) as client:
        tagged = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=wanted)))
    ids = [r.id for r in tagged]
    if role is None:
        ids += [uuid.UUID(i) for i in recorded if uuid.UUID(i) not in ids]
    return ids


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


def main_state(client, run_id: str) -> str | None:
    """The state type of the run's latest flow run (the one its record names)."""
    from ultrawork.workspace.ledger import RunLedger

    flow_run_id = RunLedger.open(run_id).orchestration.get("flow_run_id")
    state = client.read_flow_run(uuid.UUID(flow_run_id)).state_type if flow_run_id else None
    return state.value if state else None


def logs_command(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    role: Annotated[Optional[str], typer.Argument(help="Only this agent's output.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
) -> None:
    """Print a run's logs (or one agent's) from the Prefect server; -f follows them as they come."""
    from prefect.client.orchestration import get_client

    from ultrawork.local_server.manager import ensure_server

    ensure_server(say=lambda msg: sys.stderr.write(f"{msg}\n"))
    seen: set = set()
    after = None
    with get_client(sync_client=True) as client:
        while True:
            flow_runs = run_flow_runs(run_id, role)
            if flow_runs:
                found, after = read_new(client, flow_runs, seen, after)
                sys.stdout.writelines(_line(log) for log in found)
                sys.stdout.flush()
            if not follow:
                if not flow_runs:
                    sys.stderr.write(f"no flow runs of {run_id}{' for ' + role if role else ''} yet\n")
                return
            states = [client.read_flow_run(i).state_type for i in flow_runs]
            main = main_state(client, run_id)
            if main in FINAL and all(s is not None and s.value in FINAL for s in states):
                found, after = read_new(client, flow_runs, seen, after)   # what arrived while it ended
                sys.stdout.writelines(_line(log) for log in found)
                return
            time.sleep(1.0)
