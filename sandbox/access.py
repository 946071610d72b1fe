"""Giving the sandbox user write access to a host directory, without handing it ``.git``."""

from __future__ import annotations

import os
from pathlib import Path

from .spec import SANDBOX_UID


def grant_sandbox_access(path: Path) -> None:
    """Let the sandbox user (uid/gid 1000) write under ``path`` -- but never its ``.git``.

    Files keep their host owner (so host git sees no "dubious ownership"); as
    root we hand the group to gid 1000 and make it group-writable, otherwise we
    make it writable for others. ``.git`` stays the host's: the agent edits the
    work tree, and the host alone commits.
    """
    todo = [path]
    while todo:
        p = todo.pop()
        if p.is_symlink():
            continue
        if os.geteuid() == 0:
            os.chown(p, -1, SANDBOX_UID)
            os.chmod(p, p.stat().st_mode | 0o060 | (0o010 if p.is_dir() else 0))
        else:
            os.chmod(p, p.stat().st_mode | 0o006 | (0o001 if p.is_dir() else 0))
        if p.is_dir():
            todo += [c for c in p.iterdir() if c.name != ".git"]


# git inside the sandbox reads the host-owned .git; trust it (command-scope config, not a file).
SANDBOX_GIT_ENV = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}


def agent_sandbox_spec(ws, *, image: str, workspace_mode: str, network: str, limits, exec_timeout: float,
                       workspace: Path | None = None):
    """The sandbox of one agent of a run: its clone at /workspace, its Plan.md folder at /plan.

    Grants the sandbox user what it must write (the Plan.md folder; the clone's work
    tree when read-write) -- used by the flows and by an MCP session bound to a run.
    """
    from .spec import Mount, SandboxSpec

    grant_sandbox_access(ws.plan_path.parent)
    workspace = workspace or ws.path
    if workspace_mode == "rw":
        grant_sandbox_access(workspace)
    return SandboxSpec(
        image=image, role=ws.role, run_id=ws.run.run_id, workspace=workspace, workspace_mode=workspace_mode,
        mounts=[Mount(source=ws.plan_path.parent, target="/plan", read_only=False)], network=network,
        limits=limits, exec_timeout=exec_timeout, env=dict(SANDBOX_GIT_ENV),
    )
