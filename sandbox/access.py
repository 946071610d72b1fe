"""Giving the sandbox user write access to a host directory, without handing it ``.git``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

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


# The clone's git directory, host-owned, mounted read-only: git in the sandbox can read history,
# diff and status, but nothing it does reaches the directory host git uses (commits are the host's).
GIT_DIR_TARGET = "/git"
SANDBOX_GIT_ENV = {"GIT_DIR": GIT_DIR_TARGET, "GIT_WORK_TREE": "/workspace",
                   # trust the host-owned directory (command-scope config, not a file)
                   "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}


# runs/<run-id>/inbox/<role>/: the files an agent reads at /agent/<name> (its prompt, the built-in agent)
INBOX = "inbox"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def agent_file_mounts(ws, files: Mapping[str, str | bytes]) -> list:
    """Write ``files`` (name -> content) to the agent's inbox and mount each one read-only at
    ``/agent/<name>``: the agent reads them from its first step on, cannot change them, and
    no copy into the container is needed. A file that already holds the content is kept (a
    running sandbox has that file, not its name, mounted)."""
    from .engine import AGENT_DIR
    from .spec import Mount

    inbox = ws.run.path / INBOX / ws.role
    inbox.mkdir(parents=True, exist_ok=True)
    mounts = []
    for name, content in files.items():
        if not _FILE_NAME.fullmatch(name):
            raise ValueError(f"agent file name {name!r} must be a plain file name")
        data = content.encode() if isinstance(content, str) else content
        path = inbox / name
        if not (path.is_file() and not path.is_symlink() and path.read_bytes() == data):
            tmp = inbox / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.chmod(0o644)
            os.replace(tmp, path)
        mounts.append(Mount(source=path, target=f"{AGENT_DIR}/{name}", read_only=True))
    return mounts


def agent_sandbox_spec(ws, *, image: str, workspace_mode: str, network: str, limits, exec_timeout: float,
                       workspace: Path | None = None, agent_files: Mapping[str, str | bytes] | None = None):
    """The sandbox of one agent of a run: its clone's work tree at /workspace, its git directory
    read-only at /git, its Plan.md folder at /plan, and ``agent_files`` read-only at /agent
    (see :func:`agent_file_mounts`).

    Grants the sandbox user what it must write (the Plan.md folder; the clone's work
    tree when read-write) -- used by the flows and by an MCP session bound to a run.
    """
    from .disk import cap_agent_folders
    from .spec import Mount, SandboxSpec

    cap_agent_folders(ws, limits, workspace_mode)   # mount sources capped on the host's disk first
    grant_sandbox_access(ws.plan_path.parent)
    workspace = workspace or ws.path
    if workspace_mode == "rw":
        grant_sandbox_access(workspace)
    mounts = [Mount(source=ws.plan_path.parent, target="/plan", read_only=False),
              Mount(source=ws.git_dir, target=GIT_DIR_TARGET, read_only=True)]
    mounts += agent_file_mounts(ws, agent_files or {})
    return SandboxSpec(
        image=image, role=ws.role, run_id=ws.run.run_id, workspace=workspace, workspace_mode=workspace_mode,
        mounts=mounts, network=network, limits=limits, exec_timeout=exec_timeout, env=dict(SANDBOX_GIT_ENV),
    )
