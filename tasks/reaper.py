"""The reaper as a Prefect task: the first thing every run does."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from prefect import task
from prefect.cache_policies import NO_CACHE

from ultrawork.sandbox import disk
from ultrawork.sandbox.reaper import reap, release_clones
from ultrawork.workspace.superproject import RunSuperproject

from ultrawork.runtime.logs import get_logger
from ultrawork.tasks.sandboxes import engine


@task(name="reap-stale-work", cache_policy=NO_CACHE)
async def reap_stale_work() -> list[str]:
    """Remove containers, clones and checkouts that runs no longer active left behind."""
    report = await asyncio.to_thread(reap, engine())
    removed = ([c.name for c in report.containers] + [str(p) for p in report.clones + report.checkouts]
               + [f"volume {v[:12]}" for v in report.volumes] + [f"network {n}" for n in report.networks]
               + [f"gateway rules {p.name}" for p in report.gateway_dirs])
    if removed:
        get_logger().info("reaped %d leftover(s) of inactive runs: %s", len(removed), ", ".join(removed))
    return removed


@task(name="release-clones", cache_policy=NO_CACHE)
async def release_run_clones(run_id: str) -> int:
    """A finished run keeps its branches and Plan.md files; its full clones go."""
    return len(await asyncio.to_thread(release_clones, RunSuperproject.open(run_id).path))


@asynccontextmanager
async def disk_released_on_failure(run_id: str):
    """Around a run: if it fails or is cancelled (not when it pauses for its review), its work trees
    and Plan.md folders are unmounted and their images removed (Plan.md kept); a resumed run mounts
    them again and checks the work trees out anew."""
    from prefect.exceptions import Pause

    try:
        yield
    except Pause:
        raise
    except BaseException:
        released = await asyncio.shield(asyncio.to_thread(disk.release_run, run_id))
        if released:
            get_logger().info("run %s stopped: released %d disk cap(s)", run_id, len(released))
        raise
