"""The safety policy every sandbox spec must pass before any Docker call.

Rejections raise :class:`SandboxPolicyError` naming the offending field, so a
user editing a profile sees exactly what to change.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, Field

from .errors import SandboxPolicyError
from .mount_source import pin_mount_source
from ultrawork.secret_names import looks_secret
from ultrawork.workspace.names import ROLE_PATTERN, RUN_ID_PATTERN
from ultrawork.settings import settings

from .spec import LABEL_AGENT, LABEL_MANAGED, LABEL_MCP_BOUND, LABEL_RUN, SandboxSpec, ultrawork_home

ROLE_RE = ROLE_PATTERN              # one role rule: ultrawork.workspace.names
RUN_ID_RE = RUN_ID_PATTERN          # one run-id rule: ultrawork.workspace.names
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")

FORBIDDEN_TARGET_PREFIXES = ("/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib")
UNCONFINED_OPTS = ("seccomp=unconfined", "seccomp:unconfined", "apparmor=unconfined", "apparmor:unconfined")


def _default_roots() -> list[Path]:
    return [ultrawork_home() / "runs", *settings().extra_workspace_roots]


class SandboxPolicy(BaseModel):
    """Caps and allowances an operator sets; specs must stay inside them."""

    workspace_roots: list[Path] = Field(
        default_factory=_default_roots,
        description="Host directories strictly under which workspaces and mounts may live "
        "($ULTRAWORK_HOME/runs plus $ULTRAWORK_WORKSPACE_ROOTS).",
    )
    max_memory_mb: int = Field(8192, description="Highest memory limit a spec may ask for (MiB).")
    max_cpus: float = Field(float(os.cpu_count() or 1), description="Highest CPU quota a spec may ask for.")
    max_pids: int = Field(4096, description="Highest pids limit a spec may ask for.")
    max_exec_timeout: float = Field(6 * 3600.0, description="Longest command timeout a spec may ask for (s).")
    max_workspace_mb: int = Field(16384, description="Largest disk cap of a read-write workspace a spec may ask for (MiB).")
    max_plan_mb: int = Field(256, description="Largest disk cap of the Plan.md folder a spec may ask for (MiB).")
    max_agent_mb: int = Field(4096, description="Largest disk cap of /agent a spec may ask for (MiB).")
    allowed_networks: list[str] = Field(
        default_factory=lambda: ["none", "bridge"], description="Network modes a spec may use."
    )
    allowed_secret_env: list[str] = Field(
        default_factory=list, description="Secret-looking env names the operator allows everywhere."
    )


def check_mount_source(field: str, source: Path, policy: SandboxPolicy) -> Path:
    """The resolved, pinned path Docker gets for ``source`` (see :mod:`ultrawork.sandbox.mount_source`)."""
    return pin_mount_source(field, source, policy.workspace_roots)


def _check_target(field: str, target: str) -> None:
    if not target.startswith("/") or target == "/" or ".." in target.split("/") or ":" in target:
        raise SandboxPolicyError(field, f"{target!r} is not an allowed mount target")
    if any(target == p or target.startswith(p + "/") for p in FORBIDDEN_TARGET_PREFIXES):
        raise SandboxPolicyError(field, f"{target!r} would shadow a system directory")


def validate_spec(spec: SandboxSpec, policy: SandboxPolicy | None = None, *, mounts: bool = True) -> None:
    """Raise :class:`SandboxPolicyError` for the first field of ``spec`` the policy refuses.

    ``mounts=False`` leaves out pinning the mount sources (resolving and checking every component of
    each): the engine pins them when it creates the container, and a running container's mounts do not
    change, so the checks before a slot is taken and before each step skip that part."""
    policy = policy or SandboxPolicy()
    if not ROLE_RE.fullmatch(spec.role):
        raise SandboxPolicyError("role", f"{spec.role!r} must match {ROLE_RE.pattern}")
    if not RUN_ID_RE.fullmatch(spec.run_id):
        raise SandboxPolicyError("run_id", f"{spec.run_id!r} must match {RUN_ID_RE.pattern}")
    if not IMAGE_RE.match(spec.image):
        raise SandboxPolicyError("image", f"{spec.image!r} is not an image reference")
    if spec.privileged:
        raise SandboxPolicyError("privileged", "privileged containers are never allowed")
    if spec.cap_add:
        raise SandboxPolicyError("cap_add", f"adding capabilities {spec.cap_add} is not allowed")
    for opt in spec.security_opt:
        if opt.replace(" ", "").lower() in UNCONFINED_OPTS or "unconfined" in opt.lower():
            raise SandboxPolicyError("security_opt", f"{opt!r} turns off confinement")
        if "no-new-privileges" in opt and opt.rstrip().endswith(("false", "=0")):
            raise SandboxPolicyError("security_opt", f"{opt!r} re-enables privilege escalation")
    if spec.pid_mode:
        raise SandboxPolicyError("pid_mode", f"sharing a pid namespace ({spec.pid_mode!r}) is not allowed")
    if spec.ipc_mode:
        raise SandboxPolicyError("ipc_mode", f"sharing an ipc namespace ({spec.ipc_mode!r}) is not allowed")
    if spec.network == "host" or spec.network.startswith("container:"):
        raise SandboxPolicyError("network", f"network mode {spec.network!r} shares a namespace")
    if spec.network not in policy.allowed_networks:
        raise SandboxPolicyError("network", f"{spec.network!r} is not one of {policy.allowed_networks}")
    limits = spec.limits
    if not 16 <= limits.memory_mb <= policy.max_memory_mb:
        raise SandboxPolicyError("limits.memory_mb", f"{limits.memory_mb} is outside 16..{policy.max_memory_mb}")
    if not 0 < limits.cpus <= policy.max_cpus:
        raise SandboxPolicyError("limits.cpus", f"{limits.cpus} is outside (0, {policy.max_cpus}]")
    if not 8 <= limits.pids <= policy.max_pids:
        raise SandboxPolicyError("limits.pids", f"{limits.pids} is outside 8..{policy.max_pids}")
    for name, low, high in (("workspace_mb", 16, policy.max_workspace_mb), ("plan_mb", 4, policy.max_plan_mb),
                            ("agent_mb", 4, policy.max_agent_mb)):
        if not low <= getattr(limits, name) <= high:   # each a filesystem of that size on the host's disk
            raise SandboxPolicyError(f"limits.{name}", f"{getattr(limits, name)} is outside {low}..{high}")
    if not 0 < spec.exec_timeout <= policy.max_exec_timeout:
        raise SandboxPolicyError("exec_timeout", f"{spec.exec_timeout} is outside (0, {policy.max_exec_timeout}]")
    allowed = set(spec.allow_env) | set(policy.allowed_secret_env)
    for name in spec.env:
        if not ENV_NAME_RE.match(name):
            raise SandboxPolicyError(f"env.{name}", "is not a valid variable name")
        if looks_secret(name) and name not in allowed:
            raise SandboxPolicyError(f"env.{name}", "looks like a secret; secrets never enter a sandbox")
    for key, value in spec.labels.items():
        if key == LABEL_MCP_BOUND and value == "true":  # asks only to be kept while its creator lives
            continue
        if key in (LABEL_MANAGED, LABEL_RUN, LABEL_AGENT) or key.startswith("ultrawork."):
            raise SandboxPolicyError(f"labels.{key}", "ultrawork.* labels are set by the engine")
    if not mounts:
        return
    # Sources are replaced by their pinned, resolved paths: exactly what was checked is what Docker mounts.
    if spec.workspace is not None:
        spec.workspace = check_mount_source("workspace", spec.workspace, policy)
    targets = {"/workspace"} if spec.workspace is not None else set()
    for i, mount in enumerate(spec.mounts):
        mount.source = check_mount_source(f"mounts[{i}].source", mount.source, policy)
        _check_target(f"mounts[{i}].target", mount.target)
        if mount.target in targets:
            raise SandboxPolicyError(f"mounts[{i}].target", f"{mount.target} is mounted twice")
        targets.add(mount.target)
