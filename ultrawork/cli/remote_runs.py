"""A run read through Prefect only, from any machine that reaches the server it reports to.

A run's superproject lives under the ``ULTRAWORK_HOME`` of the machine that ran it (a deployment's
worker, say); elsewhere ``status``, ``review`` and ``diff`` read what the run published instead:
its Sisyphus flow run (named by the run id, tagged ``run:<id>``), its agents' subflows (tagged
``role:<role>`` too), the results table, each agent's diff and Plan.md artifacts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ultrawork.cli.runs import AgentStatus, RunStatus
from ultrawork.runtime.artifacts import artifact_key
from ultrawork.runtime.naming import run_tag
from ultrawork.workspace.ledger import RunNotFound
from ultrawork.untrusted import visible
from ultrawork.workspace.superproject import ultrawork_home

REMOTE_PATH = "(on another machine: read through Prefect)"
ORCHESTRATOR = "sisyphus"          # the flow whose run is the run
ROLE_PREFIX = "role:"
MAX_AGENT_RUNS = 200               # an agent's subflow per role and round
# an agent subflow's Prefect state -> the stage shown for it
STAGES = {"SCHEDULED": "queued", "PENDING": "queued", "RUNNING": "running", "COMPLETED": "finalized",
          "FAILED": "failed", "CRASHED": "crashed", "CANCELLED": "cancelled", "CANCELLING": "cancelling",
          "PAUSED": "paused"}
_FENCE = re.compile(r"`{3,}[a-z]*")


@dataclass
class RemoteRun:
    """What the server holds about one run."""

    run_id: str
    flow_run: object                                   # the latest Sisyphus flow run
    agent_runs: dict = field(default_factory=dict)     # role -> its latest subflow run
    rows: list[dict] = field(default_factory=list)     # the results table (agent, outcome, branch, ...)

    @property
    def roles(self) -> list[str]:
        """Every agent of the run: the results table's order, then agents still running, then the plan's."""
        roles = [r["agent"] for r in self.rows if not str(r.get("agent", "(")).startswith("(")]
        planned = (self.flow_run.parameters or {}).get("agents") or []
        return list(dict.fromkeys([*roles, *self.agent_runs, *planned]))

    def row(self, role: str) -> dict:
        return next((r for r in self.rows if r.get("agent") == role), {})


def not_found(run_id: str) -> RunNotFound:
    from prefect.settings import PREFECT_API_URL

    return RunNotFound(f"no run {run_id!r} here ({ultrawork_home() / 'runs'}) nor on the Prefect server "
                       f"{PREFECT_API_URL.value() or '(none configured)'}")


def latest_artifacts(client, keys: list[str]) -> dict[str, object]:
    """Key -> the data of its latest artifact, for the keys that have one."""
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    found = client.read_latest_artifacts(
        artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys)))
    return {a.key: a.data for a in found if a.key in keys and a.data is not None}


def read_run(run_id: str) -> RemoteRun:
    """The run's latest Sisyphus flow run, its agents' subflows and its results table; RunNotFound without one."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=[run_tag(run_id)]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[ORCHESTRATOR])),
                                     flow_run_filter=tagged, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
        if not runs:
            raise not_found(run_id)
        run = RemoteRun(run_id, runs[0])
        # oldest first: a later round's (or a resumed run's) subflow of a role replaces the earlier one
        for agent_run in client.read_flow_runs(flow_run_filter=tagged, sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                                               limit=MAX_AGENT_RUNS):
            role = next((t[len(ROLE_PREFIX):] for t in agent_run.tags if t.startswith(ROLE_PREFIX)), None)
            if role:
                run.agent_runs[role] = agent_run
        key = artifact_key("results", run_id)
        table = latest_artifacts(client, [key]).get(key)
    rows = json.loads(table) if isinstance(table, str) else table
    run.rows = [r for r in rows or [] if isinstance(r, dict)]
    return run


def _stage(run: RemoteRun, role: str) -> str:
    agent_run = run.agent_runs.get(role)
    if agent_run is None or agent_run.state is None:
        return "finalized" if run.row(role) else "queued"
    return STAGES.get(agent_run.state.type.value, agent_run.state.name.lower())


def _review_round(state) -> int:
    key = (state.state_details.pause_key or "") if state is not None else ""
    match = re.fullmatch(r"review-(\d+)", key)
    return int(match.group(1)) if match else 1


def _outcome(state) -> str | None:
    """How a finished run ended, from its Completed message."""
    from ultrawork.agents.outcome import outcome_in_message

    outcome = outcome_in_message(state.message) if state is not None and state.is_completed() else None
    return outcome.value if outcome else None


def remote_status(run_id: str) -> RunStatus:
    """The run's status as the Prefect server knows it (no ledger: no history, no agent steps)."""
    run = read_run(run_id)
    state = run.flow_run.state
    paused = state is not None and state.is_paused()
    outcome = _outcome(state)
    return RunStatus(
        run_id=run_id, path=REMOTE_PATH, task=str((run.flow_run.parameters or {}).get("task") or ""),
        flow_run_id=str(run.flow_run.id), state=state.name if state else None,
        review="requested" if paused else "decided" if outcome else None,
        review_round=_review_round(state) if paused else 1, integration=outcome,
        agents=[AgentStatus(role, stage=_stage(run, role), outcome=run.row(role).get("outcome"))
                for role in run.roles],
    )


def terminal_text(markdown: str) -> str:
    """A diff artifact's markdown as the terminal shows a diff: no fences, control characters made visible."""
    lines = [line for line in markdown.splitlines() if not _FENCE.fullmatch(line.strip())]
    return visible("\n".join(lines)).strip("\n") + "\n"


def agent_reports(run_id: str, role: str | None = None) -> list[str]:
    """Each agent's diff (its diff artifact) or, for an agent that changed nothing, its Plan.md findings."""
    from prefect.client.orchestration import get_client

    from ultrawork.runtime.environment import plan_excerpt

    run = read_run(run_id)
    roles = [role] if role else run.roles
    keys = {r: (artifact_key("diff", run_id, r), artifact_key("plan", run_id, r)) for r in roles}
    with get_client(sync_client=True) as client:
        found = latest_artifacts(client, [k for pair in keys.values() for k in pair])
    reports = []
    for name in roles:
        diff, plan = (found.get(k) for k in keys[name])
        branch = run.row(name).get("branch") or f"ultrawork/{run_id}/{name}"
        if name not in run.roles:
            reports.append(f"no diff for {name}: it did not run in run {run_id} (it ran: {', '.join(run.roles)})\n")
        elif isinstance(diff, str):
            reports.append(f"{name}: {terminal_text(diff)}")
        elif isinstance(plan, str):
            findings = visible(plan_excerpt(terminal_text(plan), limit=4000)) or "(Plan.md has no findings)"
            reports.append(f"{name}: no change on {branch}; its findings:\n\n{findings}\n")
        else:
            reports.append(f"no diff for {name}: the run has published neither its diff nor its Plan.md yet\n")
    return reports


def resume_elsewhere(run_id: str) -> RunNotFound:
    """Why ``ultrawork resume`` does not continue a run that is not in this home. A run continues from its
    superproject, which stays in the home of the machine that ran it; the server says what else to do."""
    run = read_run(run_id)                        # RunNotFound when the server does not know it either
    flow_run, state = run.flow_run, run.flow_run.state
    if state is not None and state.is_paused():   # paused or suspended: it waits for a person, not a resume
        return RunNotFound(f"run {run_id} is waiting for its review ({state.name}), not stopped: review it "
                           f"from here with 'ultrawork review {run_id} ...' and a worker continues it")
    if state is not None and state.is_completed():
        return RunNotFound(f"run {run_id} is finished ({state.message or state.name}); nothing to resume")
    host = (flow_run.infrastructure_pid or "").rpartition(":")[0]
    pool = f" (work pool {flow_run.work_pool_name})" if flow_run.work_pool_name else ""
    again = (f" Or start it again from the start on any worker of its deployment: 'ultrawork resume {run_id} "
             f"--again'." if _restartable(flow_run) else "")
    return RunNotFound(f"run {run_id} ran {'on ' + host if host else 'on another machine'}{pool}, not in this "
                       f"home ({ultrawork_home() / 'runs'}); its records are in that machine's ULTRAWORK_HOME: "
                       f"resume it there (state now: {state.name if state else 'unknown'}).{again} A swept issue "
                       f"whose run crashed goes back to the backlog at the next sweep and runs again.")


def _restartable(flow_run) -> bool:
    """A deployment's run on a repository URL that stopped: any worker can run its task again."""
    from ultrawork.workspace.remote import is_url

    state = flow_run.state
    return (flow_run.deployment_id is not None and is_url((flow_run.parameters or {}).get("repo"))
            and state is not None and state.is_final() and not state.is_completed())


def start_again(run_id: str) -> tuple[str, object]:
    """Run a stopped deployment run's task again, from the start, as a new run of the same deployment
    (any worker takes it); the old run's branches stay on the remote. Returns the new run id and flow run."""
    from prefect.client.orchestration import get_client

    from ultrawork.cli.request import new_run_id

    flow_run = read_run(run_id).flow_run
    if not _restartable(flow_run):
        raise resume_elsewhere(run_id)
    again = f"{run_id[:40]}-again-{new_run_id()[-4:]}"
    params = {**flow_run.parameters, "run_id": again, "resume": False}
    with get_client(sync_client=True) as client:
        started = client.create_flow_run_from_deployment(
            flow_run.deployment_id, parameters=params, name=again,
            tags=[t for t in flow_run.tags if not t.startswith(("run:", ROLE_PREFIX))])
    return again, started
