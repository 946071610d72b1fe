"""The repository's own checks, run on the integration branch in a hardened sandbox.

A throwaway clone of the target at the integration head (its git directory kept
apart and mounted read-only, as for an agent) is mounted read-write at
/workspace, capped on disk like an agent's work tree (``ultrawork.sandbox.disk``: it
runs code the agents wrote); the check command runs there with no network, under the
sandbox's limits and a timeout; the container and the clone are removed whatever happens.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ultrawork.agents.outcome import CheckResult
from ultrawork.workspace.clones import AgentClone, clone_on_branch
from ultrawork.workspace.plan import excerpt

from . import agent_tree, disk
from .access import GIT_DIR_TARGET, SANDBOX_GIT_ENV, grant_sandbox_access
from .disk_use import over_cap
from .engine import SandboxEngine
from .errors import ResourceLimitExceeded, SandboxTimeout
from .spec import DEFAULT_IMAGE, Limits, Mount, SandboxSpec

CHECK_ROLE = "check"


def run_check(engine: SandboxEngine, run, head: str, argv: list[str], *, timeout: float = 900.0,
              image: str = DEFAULT_IMAGE, limits: Limits | None = None, name: str = CHECK_ROLE) -> CheckResult:
    """Run ``argv`` on a clone of ``run.target`` at ``head``; its exit code decides. ``name`` keeps
    checks that run side by side apart (their clones, branches and sandboxes)."""
    folder = "checks" if name == CHECK_ROLE else f"checks-{name}"
    clone = AgentClone(Path(run.path) / folder, Path(run.private_dir) / f"{folder}-git")
    limits = limits or Limits()
    _remove(clone)
    sandbox = None
    started = time.monotonic()
    try:
        disk.cap_folder(clone.work_tree, limits.workspace_mb, run_id=run.run_id, kind="workspace")
        clone_on_branch(run.target, clone, f"ultrawork/{run.run_id}/{name}", head)
        grant_sandbox_access(clone.work_tree)
        spec = SandboxSpec(image=image, role=name, run_id=run.run_id, workspace=clone.work_tree,
                           workspace_mode="rw", limits=limits, exec_timeout=timeout,
                           mounts=[Mount(source=clone.git_dir, target=GIT_DIR_TARGET, read_only=True)],
                           env=dict(SANDBOX_GIT_ENV))
        sandbox = engine.create(spec)
        watched = {"/workspace": clone.work_tree}
        try:
            done = engine.execute(sandbox, list(argv), timeout, should_stop=lambda: _past_cap(watched))
            code, output = done.exit_code, "\n".join(s for s in (done.stdout, done.stderr) if s)
        except SandboxTimeout as exc:
            code, output = -1, f"{exc.stdout}\n{exc.stderr}\n[the check ran past its {timeout:.0f} s timeout]"
        except ResourceLimitExceeded as exc:
            code, output = -1, f"[the check was stopped: {exc}]"
        full = over_cap(watched)
        if full:
            code, output = code or -1, f"{output}\n[DiskLimitExceeded: {full[0]}]"
        tail, _ = excerpt(output)
        return CheckResult(command=list(argv), exit_code=code, passed=code == 0,
                           duration=time.monotonic() - started, output_tail=tail)
    finally:
        if sandbox is not None:
            engine.cleanup(sandbox)
        _remove(clone)


def _past_cap(watched: dict[str, Path]) -> str | None:
    """With the monitor fallback, why the check must stop (its work tree is past its cap); a
    loop-mounted image stops the writes itself."""
    if disk.disk_backend().kind != "monitor":
        return None
    full = over_cap(watched)
    return full[0] if full else None


def _remove(clone: AgentClone) -> None:
    disk.release(clone.work_tree)
    agent_tree.remove(clone.work_tree)      # the check wrote there
    shutil.rmtree(clone.git_dir, ignore_errors=True)
