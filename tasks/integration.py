"""Prefect tasks for the end of a run: merge approved branches, push, pull request."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.cache_policies import NO_CACHE

from ultrawork.workspace.errors import GitError
from ultrawork.workspace.github import GitHubTarget, PullRequestRef
from ultrawork.workspace.integration import (AgentBranch, IntegrationResult, integrate, integration_branch,
                                             publish_pull_request)
from ultrawork.workspace.remote import sync_cache
from ultrawork.workspace.superproject import RunSuperproject

from ultrawork.failpoints import failpoint
from ultrawork.tasks.recovery import task_options


@task(name="integrate", cache_policy=NO_CACHE, **task_options(GitError))
async def integrate_branches(run_id: str, approved: list[str]) -> IntegrationResult:
    """Merge the approved agents' branches into ``ultrawork/<run>/integration`` in the target repo."""
    def merge() -> IntegrationResult:
        failpoint("git:integrate")
        run = RunSuperproject.open(run_id)
        if run.remote:                      # a branch a person fixed on the remote is merged as it is there
            sync_cache(run.remote)
        branches = [AgentBranch(role, run.agent(role).branch, run.target.path) for role in approved]
        with run.pushing(integration_branch(run_id)):
            return integrate(run.target.path, run_id, run.base_sha, branches, when=run.meta["created_at"])
    return await asyncio.to_thread(merge)


@task(name="pull-request", cache_policy=NO_CACHE, **task_options(GitError))
async def open_pull_request_task(run_id: str, result: IntegrationResult, github: GitHubTarget,
                                 title: str, body: str) -> PullRequestRef:
    """Push the integration branch with a lease and open (or find) its pull request."""
    def publish() -> PullRequestRef:
        failpoint("git:push")
        return publish_pull_request(RunSuperproject.open(run_id).target.path, result, github, title, body)
    return await asyncio.to_thread(publish)
