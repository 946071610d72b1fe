"""Prefect tasks over the backlog (plain core in ``backlog/``): scan, claim, record an event, the summary."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.artifacts import create_table_artifact

from ultrawork.untrusted import table_rows
from prefect.cache_policies import NO_CACHE

from ultrawork.backlog import Backlog, BacklogError, Claim, Issue, Skip, claim_eligible

from ultrawork.runtime.logs import get_logger


@task(name="scan-backlog", cache_policy=NO_CACHE)
async def scan_backlog(source: Backlog) -> tuple[list[Issue], list[BacklogError]]:
    """Every readable issue; each unreadable one becomes a named error (logged, then skipped)."""
    issues, problems = await asyncio.to_thread(source.scan)
    log = get_logger()
    log.info("backlog %s: %d issue(s), %d unreadable", source.name, len(issues), len(problems))
    for problem in problems:
        log.warning("skipping: %s", problem)
    return issues, problems


@task(name="claim-issues", cache_policy=NO_CACHE)
async def claim_issues(source: Backlog, issues: list[Issue], actor: str,
                       limit: int | None) -> tuple[list[Claim], list[Skip]]:
    """One optimistic write per eligible issue; an issue another sweep took first is skipped."""
    claims, skips = await asyncio.to_thread(claim_eligible, source, issues, actor, limit)
    log = get_logger()
    for claim in claims:
        log.info("claimed issue %s (%s)", claim.issue.id, claim.issue.title or claim.issue.task.splitlines()[0][:60])
    for skip in skips:
        log.warning("skipped issue %s: %s", skip.issue_id, skip.reason)
    return claims, skips


@task(name="record-issue-event", cache_policy=NO_CACHE)
async def record_event(source: Backlog, issue_id: str, trigger: str, actor: str, data: dict) -> Issue:
    """Fire ``trigger`` on the issue as it is now (re-read and retried when another writer got there first)."""
    issue = await asyncio.to_thread(source.apply_latest, issue_id, trigger, actor, **data)
    get_logger().info("issue %s: %s -> %s (version %d)", issue_id, trigger, issue.state, issue.version)
    return issue


async def publish_sweep(rows: list[dict], backlog_name: str) -> None:
    await create_table_artifact(table=table_rows(rows or [{"issue": "-", "note": "nothing to sweep"}]), key="backlog-sweep",
                                description=f"What the sweep of {backlog_name} took and what became of it")
