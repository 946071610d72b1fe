"""The repository's checks on the integration branch, as a Prefect task (see ``ultrawork.sandbox.checks``)."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.cache_policies import NO_CACHE

from ultrawork.agents.outcome import CheckResult
from ultrawork.runtime.caps import SandboxSlot, release
from ultrawork.sandbox.checks import CHECK_ROLE, run_check
from ultrawork.workspace.superproject import RunSuperproject

from ultrawork.runtime.logs import get_logger
from ultrawork.tasks.sandboxes import engine


@task(name="run-checks", cache_policy=NO_CACHE)
async def run_checks(run_id: str, head: str, command: list[str], timeout: float = 900.0,
                     name: str = CHECK_ROLE) -> CheckResult:
    """Run ``command`` on ``head`` (the integration head, or an attempt's) in a hardened sandbox; never
    raises for a failing check. ``name`` keeps checks that run side by side apart."""
    def checked() -> CheckResult:
        slot = SandboxSlot.take(f"{run_id}/{name}")             # the check's sandbox counts in the cap too
        try:
            return run_check(engine(), RunSuperproject.open(run_id), head, command, timeout=timeout, name=name)
        finally:
            release(slot)
    result = await asyncio.to_thread(checked)
    log = get_logger()
    (log.info if result.passed else log.warning)(
        "checks %s on %s: exit %d in %.1fs\n%s", " ".join(command), head[:12], result.exit_code,
        result.duration, result.output_tail[-2000:])
    return result
