"""The backlog sweep (the nightly deployment): one Sisyphus run per eligible issue, its outcome on the issue.

read the backlog -> claim each eligible issue with an optimistic write (two sweeps
never take the same issue) -> start one Sisyphus run per claim with
``run_deployment`` (any worker of the pool picks it up) -> follow each run:
paused for review -> the issue is in ``review``; finished -> the run's outcome
fires its event (``ultrawork.backlog.machine.OUTCOME_TRIGGERS``) -> a summary table.

At most ``concurrency`` runs do agent work at a time (default: the global sandbox cap,
which bounds agent work across every worker anyway); a run waiting for its human
review gives its slot back, since it holds no sandbox while it waits.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, Field

from ultrawork.backlog import Backlog, BacklogError, Claim, default_backlog, open_backlog, outcome_trigger
from ultrawork.backlog.sweeping import runs_in_flight
from ultrawork.agents.outcome import outcome_in_message
from ultrawork.tasks.backlog import claim_issues, publish_sweep, record_event, scan_backlog
from ultrawork.runtime.caps import configured_size
from ultrawork.runtime.config import load_config
from ultrawork.runtime.logs import get_logger
from ultrawork.workspace.names import validate_run_id


class SweptIssue(BaseModel):
    issue: str
    title: str = ""
    state: str = ""
    outcome: str | None = None
    run_id: str | None = None
    flow_run_id: str | None = None
    note: str = ""


class SweepResult(BaseModel):
    backlog: str
    swept: list[SweptIssue] = Field(default_factory=list)
    skipped: list[SweptIssue] = Field(default_factory=list)


def run_id_for(issue_id: str) -> str:
    return validate_run_id(f"{issue_id[:36]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}")


def outcome_of(state) -> tuple[str, str]:
    """(outcome, message) of a finished Sisyphus run: its Completed message starts with the outcome
    (``ultrawork.agents.outcome.outcome_message``)."""
    message = (state.message or "") if state else ""
    outcome = outcome_in_message(message) if state is not None and state.is_completed() else None
    if outcome is not None:
        return outcome.value, message
    if state is not None and state.is_failed() and "never resumed" in message:   # Prefect fails expired pauses
        return "review-timed-out", message
    return "failed", f"{state.name if state else 'no state'}: {message}".strip()


async def check_deployment(name: str) -> None:
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise BacklogError(f"deployment {name!r} does not exist: run 'prefect deploy --all' in the ultrawork "
                               f"checkout (and start a worker of its pool) before sweeping") from None


async def follow(source: Backlog, claim: Claim, *, deployment: str, agents: list[str] | None, review_timeout: int,
                 poll_seconds: float, gate: asyncio.Semaphore, actor: str) -> SweptIssue:
    """Start the issue's run, then move the issue along as the run pauses for review and ends."""
    log = get_logger()
    issue = claim.issue
    run_id = run_id_for(issue.id)
    row = SweptIssue(issue=issue.id, title=issue.title, state=issue.state, run_id=run_id)
    params = {"task": issue.task, "repo": issue.repo, "agents": issue.agents or agents, "base": issue.base,
              "run_id": run_id, "review_timeout": review_timeout}

    async def record(trigger: str, **data) -> None:
        try:
            row.state = (await record_event(source, issue.id, trigger, actor, data)).state
        except BacklogError as exc:        # e.g. someone dropped the issue meanwhile
            row.note = f"could not record {trigger}: {exc}"
            log.warning("issue %s: %s", issue.id, row.note)

    await gate.acquire()
    holding = True
    try:
        try:
            flow_run = await run_deployment(deployment, parameters=params, timeout=0, flow_run_name=f"issue-{issue.id}",
                                            tags=["ultrawork", "backlog-sweep"])
        except Exception as exc:  # noqa: BLE001 - recorded on the issue, the sweep goes on
            row.outcome, row.note = "failed", f"could not start a run: {type(exc).__name__}: {exc}"
            await record("release", reason=row.note[:500])
            return row
        row.flow_run_id = str(flow_run.id)
        await record("run_started", run_id=run_id, flow_run_id=row.flow_run_id)
        log.info("issue %s: run %s (flow run %s)", issue.id, run_id, flow_run.name)
        async with get_client() as client:
            while True:
                flow_run = await client.read_flow_run(flow_run.id)
                state = flow_run.state
                if state is not None and state.is_paused() and row.state == "implement":
                    await record("review_requested", run_id=run_id, flow_run_id=row.flow_run_id)
                    if holding:                       # waiting for a human holds no sandbox
                        gate.release()
                        holding = False
                if state is not None and state.is_final():
                    break
                await asyncio.sleep(poll_seconds)
        row.outcome, message = outcome_of(state)
        if row.state == "implement" and row.outcome != "failed":   # reviewed between two polls
            await record("review_requested", run_id=run_id, flow_run_id=row.flow_run_id)
        trigger = outcome_trigger(row.outcome)
        data = {"run_id": run_id, "flow_run_id": row.flow_run_id, "outcome": row.outcome, "message": message[:500]}
        if trigger == "release":
            data["reason"] = message[:500] or row.outcome
        await record(trigger, **data)
        log.info("issue %s: run %s ended %s; issue is now %s", issue.id, run_id, row.outcome, row.state)
        return row
    finally:
        if holding:
            gate.release()


async def reconcile(source: Backlog, actor: str) -> list[SweptIssue]:
    """Every pass first settles the issues earlier sweeps left in flight (the sweep crashed, or a
    database stall outlasted its retries): a run paused for review puts its issue in ``review``; a
    finished run's outcome fires its event; a crashed or vanished run sends its issue back to the
    backlog, so the next pass runs it again. Runs still working are left to the sweep following them."""
    from uuid import UUID

    issues, _ = await scan_backlog(source)
    rows = []
    async with get_client() as client:
        for pending in runs_in_flight(issues):
            issue = pending.issue
            row = SweptIssue(issue=issue.id, title=issue.title, state=issue.state, run_id=pending.run_id,
                             flow_run_id=pending.flow_run_id, note="reconciled")
            try:
                state = (await client.read_flow_run(UUID(pending.flow_run_id))).state
            except (ObjectNotFound, ValueError):
                state = None
            if state is not None and not state.is_final():
                if state.is_paused() and issue.state == "implement":
                    await _record(source, row, "review_requested", actor, run_id=pending.run_id,
                                  flow_run_id=pending.flow_run_id)
                    rows.append(row)
                continue
            row.outcome, message = outcome_of(state) if state is not None else ("failed", "its flow run is gone")
            await _settle(source, row, actor, message)
            rows.append(row)
    if rows:
        get_logger().info("reconciled: %s", ", ".join(f"{r.issue} {r.outcome or 'review'} -> {r.state}" for r in rows))
    return rows


async def _record(source: Backlog, row: SweptIssue, trigger: str, actor: str, **data) -> None:
    try:
        row.state = (await record_event(source, row.issue, trigger, actor, data)).state
    except BacklogError as exc:        # e.g. someone moved or dropped the issue meanwhile
        row.note = f"could not record {trigger}: {exc}"
        get_logger().warning("issue %s: %s", row.issue, row.note)


async def _settle(source: Backlog, row: SweptIssue, actor: str, message: str) -> None:
    """Fire the event of ``row.outcome`` (after ``review_requested`` when the review was never recorded)."""
    ids = {"run_id": row.run_id, "flow_run_id": row.flow_run_id}
    if row.state == "implement" and row.outcome != "failed":
        await _record(source, row, "review_requested", actor, **ids)
    trigger = outcome_trigger(row.outcome)
    data = {**ids, "outcome": row.outcome, "message": message[:500]}
    if trigger == "release":
        data["reason"] = message[:500] or row.outcome
    await _record(source, row, trigger, actor, **data)


@flow(name="backlog-sweep", log_prints=True)
async def sweep(
    backlog: str | None = None,
    limit: int | None = None,
    concurrency: int | None = None,
    deployment: str = "sisyphus/sisyphus",
    agents: list[str] | None = None,
    review_timeout: int = 24 * 3600,
    poll_seconds: float = 10.0,
) -> SweepResult:
    """Run Sisyphus once for each eligible issue of a backlog and move each issue by its run's outcome.

    Args:
        backlog: A directory holding ``issues/<id>/issue.yaml`` (default ``$ULTRAWORK_HOME/backlog``),
            or ``github:OWNER/NAME?label=LABEL&repo=PATH`` for GitHub issues with a label.
        limit: Take at most this many issues in this sweep (default: every eligible one).
        concurrency: At most this many runs doing agent work at once (runs waiting for review do not count);
            default: the sandbox cap (the sandbox block's ``max_sandboxes``), which every run's sandboxes share
            whichever worker runs them, so the sweep grows with the cap and the pool's workers.
        deployment: The Sisyphus deployment each run is started from (``FLOW/DEPLOYMENT``).
        agents: Roles for issues that name none (default: chosen from each task).
        review_timeout: Seconds each run waits for its review before the issue goes back to the backlog.
        poll_seconds: How often the sweep checks on its runs.
    """
    log = get_logger()
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1 (or left out: every eligible issue)")
    config = await load_config()
    if concurrency is None:                     # the sandbox cap bounds agent work across every worker
        concurrency = await asyncio.to_thread(configured_size)
    source = open_backlog(backlog or default_backlog(), github=config.github)
    await check_deployment(deployment)                        # a sweep that cannot run claims nothing
    flow_run = get_run_context().flow_run
    actor = f"sweep {flow_run.name} ({flow_run.id})"

    reconciled = await reconcile(source, actor)
    issues, problems = await scan_backlog(source)
    claims, skips = await claim_issues(source, issues, actor, limit)
    gate = asyncio.Semaphore(concurrency)
    swept = await asyncio.gather(*(
        follow(source, c, deployment=deployment, agents=agents, review_timeout=review_timeout,
               poll_seconds=poll_seconds, gate=gate, actor=actor) for c in claims))

    skipped = [SweptIssue(issue=s.issue_id, note=s.reason) for s in skips]
    skipped += [SweptIssue(issue=getattr(p, "where", "") or "?", note=str(p)) for p in problems]
    result = SweepResult(backlog=source.name, swept=[*reconciled, *swept], skipped=skipped)
    rows = [{"issue": r.issue, "title": r.title, "outcome": r.outcome or "skipped", "state": r.state,
             "run": r.run_id or "", "note": r.note} for r in [*result.swept, *result.skipped]]
    await publish_sweep(rows, source.name)
    log.info("sweep of %s: %d run(s), %d reconciled; %s; %d skipped", source.name, len(swept), len(reconciled),
             ", ".join(f"{r.issue} {r.outcome} -> {r.state}" for r in swept) or "nothing claimed", len(skipped))
    return result
