"""What a sandbox is asked to be: the spec a caller fills in and the policy checks.

The spec describes intent (image, role, workspace, limits, network...). It is
checked by :func:`ultrawork.sandbox.policy.validate_spec` before any Docker call, and the
engine adds the hardened defaults that no spec can turn off.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IMAGE_REPOSITORY = "ultrawork-sandbox"
IMAGE_VERSION = "0.1.0"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_VERSION}"

SANDBOX_UID = 1000
WORKSPACE_TARGET = "/workspace"
HOME_TARGET = "/home/agent"
# Every sandbox's environment: no bytecode, and the caches of common tools in $HOME (a tmpfs), not in
# /workspace, so running a repository's tests leaves nothing the host would commit.
CACHE_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONPYCACHEPREFIX": f"{HOME_TARGET}/.cache/pycache",
    "XDG_CACHE_HOME": f"{HOME_TARGET}/.cache",
    "PIP_CACHE_DIR": f"{HOME_TARGET}/.cache/pip",
    "npm_config_cache": f"{HOME_TARGET}/.cache/npm",
    "PYTEST_ADDOPTS": f"-o cache_dir={HOME_TARGET}/.cache/pytest",
    "MYPY_CACHE_DIR": f"{HOME_TARGET}/.cache/mypy",
    "RUFF_CACHE_DIR": f"{HOME_TARGET}/.cache/ruff",
}

from ultrawork.settings import ultrawork_home  # noqa: E402,F401 - its one definition, used with the labels

LABEL_MANAGED = "ultrawork.managed"
LABEL_RUN = "ultrawork.run"
LABEL_AGENT = "ultrawork.agent"
LABEL_OWNER = "ultrawork.owner"  # host:pid:start-ticks of the process that created it
LABEL_CREATED = "ultrawork.created"  # unix seconds
LABEL_HOME = "ultrawork.home"  # home_tag() of the $ULTRAWORK_HOME it belongs to: a reaper removes only its own
LABEL_DISK = "ultrawork.disk"  # the disk cap of its /agent folder (see ultrawork.sandbox.disk)
LABEL_MCP_BOUND = "ultrawork.mcp-bound"  # "true": made by an MCP server bound to a run, kept while that server lives




def home_tag() -> str:
    """A short, stable name of this ``$ULTRAWORK_HOME`` (the start of the SHA-256 of its resolved path)."""
    return hashlib.sha256(str(ultrawork_home().expanduser().resolve()).encode()).hexdigest()[:16]


class Limits(BaseModel):
    """Resource limits applied to the whole container."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(512, description="Memory limit in MiB; swap is disabled (memory-swap == memory).")
    cpus: float = Field(1.0, description="CPU quota in cores (NanoCpus).")
    pids: int = Field(256, description="Maximum number of processes and threads.")
    file_mb: int = Field(50, description="Largest file the host commits from the workspace, in MiB; "
                                         "a larger one is left out of the commit and named.")
    workspace_mb: int = Field(1024, description="Most a read-write workspace (without .git) may hold on the "
                                                "host's disk while the agent writes and when the host commits "
                                                "it, in MiB; reaching it fails the step (DiskLimitExceeded).")
    plan_mb: int = Field(32, description="Most the Plan.md folder (/plan) may hold while the agent writes, in "
                                         "MiB; only Plan.md is kept when the run ends.")
    agent_mb: int = Field(256, description="Most the sandbox's scratch folder /agent may hold, in MiB.")


class Mount(BaseModel):
    """An extra bind mount from the host into the sandbox."""

    model_config = ConfigDict(extra="forbid")

    source: Path
    target: str
    read_only: bool = True


class SandboxSpec(BaseModel):
    """A request for one agent's sandbox.

    Example:
        >>> SandboxSpec(role="explore", run_id="r1", workspace=Path("/tmp/ws"), workspace_mode="ro")
    """

    model_config = ConfigDict(extra="forbid")

    image: str = Field(DEFAULT_IMAGE, description="Image with python3, git, user 1000 and /workspace.")
    role: str = Field(description="Agent role, e.g. explore, librarian, oracle, frontend.")
    run_id: str = Field(description="Run the sandbox belongs to; labels the container.")
    workspace: Path | None = Field(None, description="Host directory mounted at /workspace.")
    workspace_mode: Literal["ro", "rw"] = Field("ro", description="Mount mode of the workspace.")
    mounts: list[Mount] = Field(default_factory=list, description="Extra bind mounts.")
    env: dict[str, str] = Field(default_factory=dict, description="Non-secret environment variables.")
    allow_env: list[str] = Field(
        default_factory=list, description="Env names allowed even though they look like secrets."
    )
    limits: Limits = Field(default_factory=Limits)
    network: str = Field("none", description="Docker network mode; 'none' unless the policy allows more.")
    exec_timeout: float = Field(600.0, description="Default timeout in seconds of one command.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra container labels.")
    # Fields a spec may carry (e.g. from a user-edited profile) that the policy refuses.
    privileged: bool = False
    cap_add: list[str] = Field(default_factory=list)
    security_opt: list[str] = Field(default_factory=list)
    pid_mode: str | None = None
    ipc_mode: str | None = None
