"""The attempts of each writer checked side by side and ranked (see ``ultrawork.agents.attempts``)."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ultrawork.agents.attempts import AttemptRanking, entry_for, groups, rank, ranking_markdown
from ultrawork.agents.outcome import AgentOutcome, CheckResult
from ultrawork.runtime.artifacts import artifact_key
from ultrawork.untrusted import ARTIFACT_BYTES, bounded
from ultrawork.runtime.logs import get_logger
from ultrawork.tasks.checks import run_checks
from ultrawork.workspace.gitcmd import run_git
from ultrawork.workspace.ledger import RunLedger
from ultrawork.workspace.superproject import RunSuperproject


def _branch_head(run_id: str, branch: str) -> str | None:
    target = RunSuperproject.open(run_id).target.path
    out = run_git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"], cwd=target, check=False)
    return out.stdout.strip() or None


async def _check(run_id: str, outcome: AgentOutcome, command: list[str] | None) -> CheckResult | None:
    if command is None or outcome.status != "succeeded":
        return None
    head = await asyncio.to_thread(_branch_head, run_id, outcome.branch)
    if head is None:
        return None
    return await run_checks.with_options(name=f"run-checks-{outcome.role}")(run_id, head, command,
                                                                           name=f"check-{outcome.role}")


@task(name="rank-attempts", cache_policy=NO_CACHE)
async def rank_attempts(run_id: str, ledger: RunLedger, outcomes: list[AgentOutcome],
                        check_command: list[str] | None, min_size: int = 2) -> list[AttemptRanking]:
    """Each attempt's checks on its branch (side by side, each holding a slot of the global sandbox
    cap), then the ranking of each writer's attempts; a ledger stage, so a resumed run checks nothing twice."""
    recorded = ledger.read("attempts")
    if recorded.get("rankings") is not None:
        return [AttemptRanking.model_validate(r) for r in recorded["rankings"]]
    by_role = {o.role: o for o in outcomes}
    members = groups([o.role for o in outcomes], min_size)
    tried = [by_role[name] for names in members.values() for name in names]
    checks = await asyncio.gather(*(_check(run_id, o, check_command) for o in tried))
    checked = dict(zip((o.role for o in tried), checks))
    rankings = [rank(first, [entry_for(by_role[n], checked[n]) for n in names]) for first, names in members.items()]
    for r in rankings:
        get_logger().info("attempts of %s, best first: %s", r.writer,
                          ", ".join(f"{e.role} ({'passed' if e.passed else 'not passed'})" for e in r.entries))
    await ledger.arecord("attempts", {"rankings": [r.model_dump(mode="json") for r in rankings]},
                         "attempts ranked: " + "; ".join(f"{r.writer}: {r.best.role} first" for r in rankings))
    await create_markdown_artifact(markdown=bounded(ranking_markdown(rankings), ARTIFACT_BYTES),
                                   key=artifact_key("attempts", run_id),
                                    description=f"Run {run_id}: each writer's attempts, ranked by the checks")
    return rankings
