"""The end of a run: merge the approved branches one by one, check, push, open the pull request.

``sisyphus`` calls :func:`finish_run` once the review is decided; the ``integrate``
flow (``ultrawork integrate RUN``) calls it again after a person resolved a
conflict on an agent's branch. Every stage is in the run's ledger and every side
effect is idempotent: the same branches give the same merge commits, a check
already run on the same head is not run again, a pull request already open is found.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed

from ultrawork.agents.outcome import AgentOutcome, CheckResult, RunOutcome, RunResult, Verdict, outcome_message
from ultrawork.tasks.checks import run_checks
from ultrawork.tasks.egress import gateway_removed
from ultrawork.runtime.config import load_config, use_config
from ultrawork.failpoints import failpoint
from ultrawork.tasks.integration import integrate_branches, open_pull_request_task
from ultrawork.runtime.logs import get_logger
from ultrawork.tasks.reaper import release_run_clones
from ultrawork.workspace.ledger import RunLedger, RunNotFound


async def finish_run(run_id: str, ledger: RunLedger, task: str, outcomes: list[AgentOutcome],
                     decided: list[Verdict], github, check_command: list[str] | None = None,
                     open_anyway: bool = False) -> RunResult:
    approved = [v.role for v in decided if v.approved]
    target_repo = ledger.run.where
    summary = RunResult(run_id=run_id, outcome=RunOutcome.INTEGRATED, target_repo=target_repo, agents=outcomes,
                        verdicts=decided, message="")
    aborted = [v for v in decided if v.choice == "abort"]
    if aborted:                                       # nothing is merged; every branch stays
        why = "; ".join(f"{v.role}: {v.comment}" for v in aborted if v.comment)
        summary.outcome = RunOutcome.ABORTED
        summary.message = (f"the reviewer aborted the run{f' ({why})' if why else ''}; nothing was merged, "
                           f"every branch is kept in {target_repo}")
        return summary
    result = await integrate_branches(run_id, approved)          # idempotent: same merges, same commits
    stage = {"outcome": result.outcome, "branch": result.branch, "head": result.head, "order": approved,
             "merged": result.merged, "left_out": result.left_out, "unmergeable": result.unmergeable}
    if ledger.read("integration") != stage:
        merged = ", ".join(result.merged) or "none"
        await ledger.arecord("integration", stage, f"integration: {result.outcome} ({merged} merged)")
    summary.merged, summary.left_out = result.merged, {**{r: [] for r in result.unmergeable}, **result.left_out}
    if result.outcome == "nothing-approved":
        summary.outcome, summary.message = RunOutcome.NOTHING_APPROVED, f"no agent approved; branches kept in {target_repo}"
        return summary
    if result.head:
        summary.integration_branch = result.branch
    if result.left_out or result.unmergeable:
        left = "; ".join([f"{role} (conflicts in {', '.join(files)})" for role, files in result.left_out.items()]
                         + [f"{role} (could not be merged: {why})" for role, why in result.unmergeable.items()])
        merged = f"{result.branch} holds {', '.join(result.merged)}" if result.merged else "nothing was merged"
        summary.outcome = RunOutcome.CONFLICT
        summary.message = (f"{merged}; left out: {left}. Resolve it on the agent's branch in {target_repo} "
                           f"(merge or rebase), then run 'ultrawork integrate {run_id}'")
        return summary
    summary.message = f"integration branch {result.branch} in {target_repo} ({', '.join(result.merged)})"
    if check_command:
        done = ledger.read("check")
        check = (CheckResult.model_validate(done["result"]) if done.get("head") == result.head
                 else await run_checks(run_id, result.head, check_command))
        if done.get("head") != result.head:
            await ledger.arecord("check", {"head": result.head, "result": check.model_dump()},
                         f"checks {'passed' if check.passed else 'failed'} on {result.head[:12]}")
        summary.check = check
        if not check.passed and not open_anyway:
            summary.outcome = RunOutcome.CHECK_FAILED
            summary.message += (f"; the checks failed (exit {check.exit_code}): no pull request. "
                                "The reviewer can choose to open it anyway")
            return summary
    if github is not None:
        body = "\n\n".join(f"## {o.role}\n\n{o.plan_summary}" for o in outcomes if o.role in approved)
        if summary.check is not None:
            c = summary.check
            body += (f"\n\n## Checks: {'passed' if c.passed else 'FAILED (opened anyway by the reviewer)'}\n\n"
                     f"`{' '.join(c.command)}` exited {c.exit_code}\n\n```text\n{c.output_tail[-3000:]}\n```")
        pr = await open_pull_request_task(run_id, result, github, f"ultrawork: {task.strip().splitlines()[0][:80]}",
                                          f"Run `{run_id}` merged {', '.join(result.merged)}.\n\n{body}")
        failpoint("stage:pull-request-opened")
        await ledger.arecord("pull_request", {"number": pr.number, "url": pr.url, "created": pr.created},
                     f"pull request #{pr.number}")
        summary.pull_request = pr.url
        summary.message += f"; pull request {pr.url}"
    return summary


async def ended(run_id: str, summary: RunResult):
    """The run is over: its branches and Plan.md files stay, its full clones go.
    The Completed message starts with the outcome; after an expired pause Prefect fails
    the run whatever it returns, so that result stays a plain value."""
    await release_run_clones(run_id)
    await gateway_removed(run_id)                     # its gateway was removed alongside the review
    get_logger().info("run %s: %s", run_id, summary.message)
    if summary.outcome == RunOutcome.REVIEW_TIMED_OUT:
        return summary
    return Completed(message=outcome_message(summary.outcome, summary.message), data=summary)


@flow(name="integrate", flow_run_name="{run_id}-integrate", log_prints=True)
async def integrate(run_id: str):
    """Integrate a reviewed run again: after a person resolved a conflict on an agent's branch
    (or rebased it), the branches the reviewer approved are merged in the recorded order."""
    ledger = RunLedger.open(run_id)
    review = ledger.read("review")
    if review.get("state") != "decided":
        raise RunNotFound(f"run {run_id} has no decided review to integrate")
    config = await load_config()
    use_config(config)
    roles = ledger.orchestration.get("roles") or []
    outcomes = [AgentOutcome.model_validate(ledger.outcome(r)) for r in roles if ledger.outcome(r)]
    decided = [Verdict.model_validate(v) for v in review["verdicts"]]
    params = ledger.orchestration.get("params") or {}
    summary = await finish_run(run_id, ledger, ledger.run.task, outcomes, decided, config.github,
                               params.get("check_command"), bool(review.get("open_anyway")))
    return await ended(run_id, summary)
