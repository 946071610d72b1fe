"""Giving the sandbox user write access to a host directory, without handing it ``.git``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

from . import agent_tree


def grant_sandbox_access(path: Path) -> None:
    """Let the sandbox user (uid/gid 1000) write under ``path`` -- never its ``.git``.

    Only while no sandbox has it mounted: by descriptor (`agent_tree.grant`), so that even a
    tree an agent wrote before cannot steer the grant to a host file."""
    agent_tree.grant(path)


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
                       workspace: Path | None = None, agent_files: Mapping[str, str | bytes] | None = None,
                       grant: bool = True):
    """The sandbox of one agent of a run: its clone's work tree at /workspace, its git directory
    read-only at /git, its Plan.md folder at /plan, and ``agent_files`` read-only at /agent
    (see :func:`agent_file_mounts`).

    With ``grant`` (the flows, before the agent's first sandbox starts on this clone) the
    sandbox user is given what it must write: the Plan.md folder, set up writable, and a
    read-write work tree. Without it (an MCP session, while the agent lives) nothing on
    the host changes: what the role may write was granted when its clone was set up.
    """
    from .disk import cap_agent_folders
    from .spec import Mount, SandboxSpec

    workspace = workspace or ws.path
    if grant:
        cap_agent_folders(ws, limits, workspace_mode)   # mount sources capped on the host's disk first
        agent_tree.prepare_folder(ws.plan_path.parent, writable=True)
        if workspace_mode == "rw":
            grant_sandbox_access(workspace)
    mounts = [Mount(source=ws.plan_path.parent, target="/plan", read_only=False),
              Mount(source=ws.git_dir, target=GIT_DIR_TARGET, read_only=True)]
    mounts += agent_file_mounts(ws, agent_files or {})
    return SandboxSpec(
        image=image, role=ws.role, run_id=ws.run.run_id, workspace=workspace, workspace_mode=workspace_mode,
        mounts=mounts, network=network, limits=limits, exec_timeout=exec_timeout, env=dict(SANDBOX_GIT_ENV),
    )


# -- what a role's sandbox is: recorded host-side, the ceiling of every sandbox made for that agent --
ROLE_SANDBOX_FILE = "sandbox.json"


def _role_record(run_id: str, role: str) -> Path:
    from ultrawork.settings import ultrawork_home

    return ultrawork_home() / "runs" / run_id / ".git" / "ultrawork" / "agents" / role / ROLE_SANDBOX_FILE


def record_role_sandbox(spec) -> None:
    """Record what the flows give ``spec``'s agent (image, workspace mode, network, limits,
    environment names) in the run's host-private folder: an MCP server bound to that agent
    creates nothing beyond it. Written before each of the agent's sandboxes is created."""
    record = {"image": spec.image, "workspace_mode": spec.workspace_mode, "network": spec.network,
              "limits": spec.limits.model_dump(), "env": dict(spec.env), "allow_env": list(spec.allow_env)}
    path = _role_record(spec.run_id, spec.role)
    if not path.parent.is_dir():
        return           # not an agent of a run this home holds (a check, an unbound MCP sandbox)
    tmp = path.with_name(f".{ROLE_SANDBOX_FILE}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def role_sandbox(run_id: str, role: str) -> dict:
    """What the flows recorded for the agent's sandbox; the read-only defaults (workspace 'ro',
    network 'none', default limits and image) when nothing is recorded yet."""
    from .spec import DEFAULT_IMAGE, Limits

    try:
        record = json.loads(_role_record(run_id, role).read_text())
    except (OSError, ValueError):
        record = {}
    return {"image": record.get("image", DEFAULT_IMAGE), "workspace_mode": record.get("workspace_mode", "ro"),
            "network": record.get("network", "none"), "limits": Limits(**record.get("limits", {})),
            "env": dict(record.get("env", {})), "allow_env": list(record.get("allow_env", []))}
