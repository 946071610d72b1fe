"""Prefect tasks over the run superproject and the agents' workspaces (git).

Git operations retry with exponential backoff and jitter (``ultrawork.tasks.recovery``);
bad input (``WorkspaceError``) is never retried.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from ultrawork.workspace.errors import GitError
from ultrawork.workspace.integration import shortstat
from ultrawork.workspace.remote import local_repository
from ultrawork.workspace.superproject import RunSuperproject

from ultrawork.failpoints import failpoint
from ultrawork.tasks.recovery import task_options

GIT_RETRIES = task_options(GitError)


@task(name="checkout-repository", cache_policy=NO_CACHE, **GIT_RETRIES)
async def checkout_repository(repo: str) -> str:
    """The repository the run works in: ``repo``'s path, or for a URL this worker's cache clone, fetched now."""
    return await asyncio.to_thread(local_repository, repo)


@task(name="create-run", cache_policy=NO_CACHE, **GIT_RETRIES)
async def create_run(run_id: str, repo: str, task_text: str, base: str, hooks: list[dict] | None = None,
                     remote: str | None = None) -> str:
    """The run's superproject (idempotent: an existing run with this id is reopened)."""
    def make() -> str:
        failpoint("git:create-run")
        try:
            return str(RunSuperproject.open(run_id).path)
        except Exception:  # noqa: BLE001 - not there yet
            return str(RunSuperproject.create(run_id, repo, task_text, base, hooks=hooks or [], remote=remote).path)
    return await asyncio.to_thread(make)


@task(name="create-workspace", cache_policy=NO_CACHE, **GIT_RETRIES)
async def create_workspace(run_id: str, role: str, checklist: list[str], spec: dict[str, Any],
                           on_cloned: Callable[[Any], None] | None = None):
    """Branch, clone, submodule and Plan.md for one agent (the setup hooks).

    Returns the workspace and whether it is new (else an earlier attempt made it).
    ``on_cloned(ws)`` is called from the worker thread once the clone exists (again
    on a retry, which re-clones)."""
    def cloned(ws) -> None:
        if on_cloned is not None:
            on_cloned(ws)
        failpoint("git:register-workspace", role=role)      # after the clone, before its submodule commit

    def make():
        failpoint("git:create-workspace", role=role)
        run = RunSuperproject.open(run_id)
        if role in run.roles():
            return run.agent(role), False
        return run.add_agent(role, checklist=checklist, sandbox_spec=spec, on_cloned=cloned), True
    return await asyncio.to_thread(make)


@task(name="commit-work", cache_policy=NO_CACHE, **GIT_RETRIES)
async def commit_work(ws) -> list[str]:
    """Commit what the agent changed to its branch (host-side, hooks disabled)."""
    def commit() -> list[str]:
        failpoint("git:commit", role=ws.role)
        return ws.commit_changes()
    return await asyncio.to_thread(commit)


@task(name="finalize-plan", cache_policy=NO_CACHE, **GIT_RETRIES)
async def finalize_plan(ws, outcome: str, errors: list[str], recoveries: list[str]) -> None:
    await asyncio.to_thread(ws.finalize, outcome, errors=errors, recoveries=recoveries)


@task(name="publish-branch", cache_policy=NO_CACHE, **GIT_RETRIES)
async def publish_branch(run_id: str, role: str) -> dict:
    """Make the agent's branch exist in the target repository (kept after the run); measure it."""
    def publish() -> dict:
        failpoint("git:publish", role=role)
        run = RunSuperproject.open(run_id)
        sha = run.publish_branch(role)
        files, insertions, deletions = shortstat(run.target.path, run.base_sha, sha)
        return {"sha": sha, "files": files, "insertions": insertions, "deletions": deletions}
    return await asyncio.to_thread(publish)
