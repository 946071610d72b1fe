"""The nine built-in hooks. Order and failure policy live in `ultrawork.workspace.hooks`.

Each hook is a small function over a `HookContext`; the git, plan and safety
work itself is done by the modules named in each body.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from ultrawork.workspace.clones import clone_on_branch
from ultrawork.workspace.command_policy import denied_reason
from ultrawork.workspace.errors import CommandDeniedError, ResourceLimitError, WorkspaceError, WorkspaceEscapeError
from ultrawork.workspace.names import validate_agent_branch, validate_role, validate_run_id
from ultrawork.workspace.plan import PlanDocument, PlanHeader
from ultrawork.workspace.stages import Stage, subject

if TYPE_CHECKING:
    from ultrawork.workspace.hooks import HookContext


# -- git hooks (setup) ---------------------------------------------------------------
def branch_name_validator(ctx: "HookContext") -> None:
    """Refuse a bad role, run id or branch before anything is created."""
    ws = ctx.workspace
    validate_role(ws.role)
    validate_run_id(ws.run.run_id)
    validate_agent_branch(ws.branch, cwd=ws.run.path)


def pre_task_branch_creator(ctx: "HookContext") -> None:
    """Claim ``agents/<role>`` atomically, cap its disk, clone the target there, create the branch.

    The Plan.md folder and (for a read-write sandbox) the work tree get their disk caps before
    the clone (``ultrawork.sandbox.disk``): the clone is written into the capped folder."""
    ws = ctx.workspace
    ws.path.parent.mkdir(exist_ok=True)
    try:
        os.mkdir(ws.path)
    except FileExistsError:
        raise WorkspaceError(f"agent workspace {ws.path} already exists") from None
    ctx.data["claimed"] = True  # from here on a failed setup cleans up after itself
    if ctx.sandbox_spec is not None:
        from ultrawork.sandbox.disk import cap_agent_folders
        from ultrawork.sandbox.spec import Limits

        cap_agent_folders(ws, Limits(**(ctx.sandbox_spec.get("limits") or {})),
                          ctx.sandbox_spec.get("workspace_mode", "ro"))
    shutil.rmtree(ws.git_dir, ignore_errors=True)   # what a setup that died before its cleanup left
    clone_on_branch(ws.run.target, ws.clone, ws.branch, ws.run.base_sha)
    ws.save_baseline()
    if ctx.data.get("on_cloned"):  # the clone is on disk: a sandbox may be started on it now
        ctx.data["on_cloned"](ws)


def submodule_creator(ctx: "HookContext") -> None:
    """Register the clone as a submodule (branch recorded) and commit that stage."""
    ctx.workspace.run.register_submodule(ctx.workspace)


# -- plan hooks ------------------------------------------------------------------------
def plan_file_creator(ctx: "HookContext") -> None:
    ws = ctx.workspace
    run = ws.run
    PlanDocument.create(ws.plan_path, PlanHeader(
        run_id=run.run_id, role=ws.role, branch=ws.branch, base_ref=run.base_ref,
        base_sha=run.base_sha, task=run.task, checklist=list(ctx.checklist),
        sandbox_spec=ctx.sandbox_spec))
    run.commit_stage(subject(ws.role, Stage.PLAN_CREATED), [ws.plan_path])


def plan_updater(ctx: "HookContext") -> None:
    ctx.step_number = ctx.workspace.plan.append_step(
        ctx.step, files_changed=ctx.files_changed, findings=ctx.findings)
    ctx.data["recorded_findings"] = len(ctx.findings)


def plan_finalizer(ctx: "HookContext") -> None:
    ctx.workspace.plan.finalize(ctx.final)


# -- safety hooks ----------------------------------------------------------------------
def container_safety_enforcer(ctx: "HookContext") -> None:
    """Before a step: the sandbox spec passes policy and the command is not denied."""
    if ctx.policy_check is not None:
        try:
            ctx.policy_check()
        except Exception as exc:
            raise CommandDeniedError(f"sandbox spec fails policy: {exc}",
                                     findings=[f"sandbox policy: {exc}"]) from exc
    reason = denied_reason(ctx.argv or [], ctx.deny_list)
    if reason:
        raise CommandDeniedError(f"command denied ({reason}): {ctx.argv!r}",
                                 findings=[f"denied command: {reason}"])


def resource_limit_monitor(ctx: "HookContext") -> None:
    verdict = ctx.workspace.resource_monitor.observe(ctx.stats, ctx.now)
    ctx.data["resource_verdict"] = verdict
    if verdict.stop:
        raise ResourceLimitError("resource limit exceeded: " + "; ".join(verdict.reasons),
                                 findings=verdict.reasons)


def isolation_checker(ctx: "HookContext") -> None:
    findings = ctx.workspace.isolation_findings()
    if findings:
        raise WorkspaceEscapeError(f"{len(findings)} isolation finding(s) in {ctx.workspace.role}: "
                                   + "; ".join(findings[:5]), findings=findings)
