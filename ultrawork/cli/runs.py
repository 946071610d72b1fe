"""Reading and steering runs from outside the flow: status, review, and the run id <-> flow run map.

Used by the CLI (and tests) from any process that shares the Prefect server.
The run superproject says what was done; the Prefect API says where the run is.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ultrawork.sandbox.procs import HolderLock, LockBusy, owner_alive
from ultrawork.workspace.errors import UltraworkError, WorkspaceError
from ultrawork.workspace.ledger import RunFinished, RunLedger, RunNotFound, RunStillActive
from ultrawork.workspace.stages import Stage
from ultrawork.workspace.stages import parse as parse_stage
from ultrawork.workspace.superproject import RunSuperproject, ultrawork_home

DRIVER_LOCK = "driver.lock"


class ReviewRejected(UltraworkError):
    """The review input was refused; the run stays paused."""


class ReviewInputInvalid(ReviewRejected):
    """The decisions themselves are wrong (an unknown agent, one decided twice, none decided);
    found before the run is touched."""


@dataclass
class AgentStatus:
    role: str
    stage: str = "queued"
    outcome: str | None = None
    steps: int = 0
    model: str | None = None              # a model agent: its model and what it sent so far
    usage: dict | None = None


@dataclass
class RunStatus:
    run_id: str
    path: str
    task: str
    flow_run_id: str | None
    state: str | None
    review: str | None
    integration: str | None
    review_round: int = 1
    agents: list[AgentStatus] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)     # each writer's attempts, ranked (best first)
    planning: dict | None = None          # what planning sent to the model

    @property
    def model_total(self) -> dict | None:
        """The run's model totals: planning and every agent (None when no model was used)."""
        used = [u for u in [self.planning, *(a.usage for a in self.agents)] if u]
        if not used:
            return None
        from ultrawork.model_agent.accounting import total_usage

        return total_usage(used).model_dump()

    @property
    def url(self) -> str | None:
        """The run's address in the Prefect UI."""
        from ultrawork.runtime.naming import flow_run_url

        return flow_run_url(self.flow_run_id)

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "path": self.path, "task": self.task.strip().splitlines()[0][:120],
                "flow_run_id": self.flow_run_id, "ui": self.url, "state": self.state, "review": self.review,
                "integration": self.integration, "planning": self.planning, "model_total": self.model_total,
                "agents": [a.__dict__ for a in self.agents], "attempts": self.attempts}


def run_url(run_id: str) -> str | None:
    """The address in the Prefect UI of the run's latest flow run."""
    from ultrawork.runtime.naming import flow_run_url

    try:
        return flow_run_url(_json(open_run(run_id).path / "orchestration.json").get("flow_run_id"))
    except RunNotFound:                  # run elsewhere: its flow run, through Prefect
        return find_run_status(run_id, with_state=False).url


def open_run(run_id: str) -> RunSuperproject:
    try:
        return RunSuperproject.open(run_id)
    except WorkspaceError as exc:
        raise RunNotFound(f"no run {run_id!r} under {ultrawork_home() / 'runs'}") from exc


def driver_lock(run: RunSuperproject) -> HolderLock:
    """The lock the process driving ``run`` holds while it drives it (in the run's host-private directory)."""
    run.private_dir.mkdir(parents=True, exist_ok=True)
    return HolderLock(run.private_dir / DRIVER_LOCK)


def claim_run(run_id: str, what: str) -> HolderLock:
    """Become the one process that drives ``run_id``, or raise RunStillActive naming the one that does.

    The lock is the kernel's (``flock``): a second ``ultrawork resume`` is refused
    before it changes anything, and a killed holder leaves it free.
    """
    lock = driver_lock(open_run(run_id))
    try:
        return lock.acquire(what)
    except LockBusy as exc:
        raise RunStillActive(f"run {run_id} is already driven by {exc.holder}; wait for it to end, "
                             f"or stop that process and resume again") from None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def agent_stages(run: RunSuperproject, roles: list[str], history: list[str]) -> list[AgentStatus]:
    """Each agent's latest stage, read from the superproject's commit subjects."""
    agents = {role: AgentStatus(role) for role in roles}
    for record in filter(None, map(parse_stage, history)):
        agent = agents.get(record.role)
        if agent is None:
            continue
        if record.stage == Stage.STEP:
            agent.steps += 1
            agent.stage = f"step {agent.steps}"
        elif record.stage in (Stage.FINALIZED, Stage.OUTCOME_RECORDED):
            agent.stage, agent.outcome = Stage.FINALIZED.value, record.in_parentheses
        else:
            agent.stage = record.stage.value
    return list(agents.values())


def add_model_usage(run: RunSuperproject, agent: AgentStatus) -> None:
    """A model agent's model and usage: its recorded outcome's, else what it has sent so far."""
    from ultrawork.tasks.model import LIVE_USAGE

    outcome = _json(run.path / "outcomes" / f"{agent.role}.json")
    live = _json(run.private_dir / "agents" / agent.role / LIVE_USAGE)
    source = outcome if outcome.get("model") else live
    agent.model, agent.usage = source.get("model"), source.get("usage")


def flow_run_state(flow_run_id: str | None) -> str | None:
    if not flow_run_id:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    return state.name if state else None


def run_status(run_id: str, with_state: bool = True) -> RunStatus:
    run = open_run(run_id)
    orchestration = _json(run.path / "orchestration.json")
    history = run.history()
    roles = orchestration.get("roles") or run.roles()
    status = RunStatus(
        run_id=run_id, path=str(run.path), task=run.task, flow_run_id=orchestration.get("flow_run_id"),
        state=None, review=_json(run.path / "review.json").get("state"),
        review_round=_json(run.path / "review.json").get("round", 1),
        integration=_json(run.path / "integration.json").get("outcome"),
        agents=agent_stages(run, roles, history), history=history,
        attempts=_json(run.path / "attempts.json").get("rankings") or [],
        planning=_json(run.path / "plan.json").get("usage"),
    )
    for agent in status.agents:
        add_model_usage(run, agent)
    if with_state:
        status.state = flow_run_state(status.flow_run_id)
        owner = orchestration.get("owner")
        if (status.state in ("Running", "Paused", "Pending") and owner and not owner_alive(owner)
                and not driver_lock(run).held_elsewhere()):
            status.state = "Crashed"  # its process is gone: `ultrawork resume` continues it
    return status


def find_run_status(run_id: str, with_state: bool = True) -> RunStatus:
    """The run's status from this home's superproject, else (a run another machine ran) through Prefect."""
    try:
        return run_status(run_id, with_state)
    except RunNotFound:
        from ultrawork.cli.remote_runs import remote_status

        return remote_status(run_id)


FINAL_STATES = ("Completed", "Failed", "Cancelled", "Crashed", "Cancelling")


def prepare_resume(run_id: str) -> dict:
    """Check a run can be resumed and return its parameters; changes nothing when it cannot.

    Raises RunNotFound, RunFinished, RunStillActive or RunInconsistent. The caller
    holds the run (:func:`claim_run`) so that no other resume passes the same checks.
    """
    ledger = RunLedger.open(run_id)
    why = ledger.finished()
    if why:
        raise RunFinished(f"run {run_id} is finished ({why}); nothing to resume")
    ledger.check_consistent()
    orchestration = ledger.orchestration
    owner = orchestration.get("owner")
    state = flow_run_state(orchestration.get("flow_run_id"))
    if owner and owner_alive(owner) and state not in FINAL_STATES:
        raise RunStillActive(f"run {run_id} is still driven by process {owner.split(':')[1]} (state {state})")
    params = dict(orchestration["params"])
    mark_crashed(orchestration.get("flow_run_id"), state)
    return {**params, "run_id": run_id, "resume": True}


def mark_crashed(flow_run_id: str | None, state: str | None) -> None:
    """Tell Prefect that a run whose process died is over, so the UI does not show it running."""
    if not flow_run_id or state in FINAL_STATES:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(flow_run_id), Crashed(message="its process is gone; resumed by "
                                                                          "`ultrawork resume`"), force=True)


def list_runs() -> list[str]:
    runs = ultrawork_home() / "runs"
    if not runs.is_dir():
        return []
    return [p.name for p in sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
            if (p / "run.json").exists()]


def wait_for_review_form(flow_run_id: str, timeout: float = 60.0) -> None:
    """Wait until the run is paused *and* its form schema is stored (else a resume is rejected)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(uuid.UUID(flow_run_id))
            keyset = flow_run.state.state_details.run_input_keyset if flow_run.state and flow_run.state.is_paused() else None
            if keyset:
                try:
                    client.read_flow_run_input(uuid.UUID(flow_run_id), keyset["schema"])
                    return
                except Exception:  # noqa: BLE001 - not stored yet
                    pass
            if time.monotonic() > deadline:
                state = flow_run.state.name if flow_run.state else "unknown"
                raise ReviewRejected(f"the run is not waiting for review (state: {state})")
            time.sleep(0.3)


def submit_review(run_id: str, approve: list[str], reject: list[str], comment: str = "",
                  wait: float = 60.0, again: dict[str, tuple[str, str]] | None = None,
                  abort: bool = False) -> dict[str, str]:
    """Resume a paused run with a decision per agent; the server validates it against the form.

    ``again``: role -> ("revise" or "retry", comment) for agents sent back; ``abort`` ends the run."""
    from prefect.flow_runs import resume_flow_run

    from ultrawork.flows.review import review_input

    status = find_run_status(run_id, with_state=False)
    roles = [a.role for a in status.agents]
    try:
        data = review_input(roles, approve, reject, comment, again=again, abort=abort,
                            failed=[a.role for a in status.agents if a.outcome == "failed"])
    except ValueError as exc:
        raise ReviewInputInvalid(str(exc)) from None
    if not status.flow_run_id:
        raise ReviewRejected(f"run {run_id} has no flow run recorded yet")
    wait_for_review_form(status.flow_run_id, wait)
    try:
        resume_flow_run(uuid.UUID(status.flow_run_id), run_input=data, _sync=True)  # also from a running loop
    except RuntimeError as exc:
        raise ReviewRejected(f"the review was refused and the run stays paused: {exc}") from None
    return data
