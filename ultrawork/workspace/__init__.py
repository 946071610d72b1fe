"""Agent workspaces: run superproject, per-agent clones and branches, Plan.md, hooks.

Plain Python (no Prefect): `tasks/` wraps these calls with retries and logging.
"""

from ultrawork.workspace.agent import AgentWorkspace
from ultrawork.workspace.command_policy import DEFAULT_DENY_LIST, DeniedCommand, denied_reason
from ultrawork.workspace.errors import (BranchNameError, CommandDeniedError, GitError, HookError, ResourceLimitError,
                              SafetyViolation, UltraworkError, WorkspaceError, WorkspaceEscapeError)
from ultrawork.workspace.gitcmd import Identity, run_git
from ultrawork.workspace.hooks import (BUILTIN_HOOKS, HookContext, HookPoint, HookRegistry, HookRunReport, HookSpec,
                             hook, hooks_from_config, hooks_from_entry_points, load_hook)
from ultrawork.workspace.names import agent_branch, validate_branch_name, validate_role, validate_run_id
from ultrawork.workspace.plan import CommitInfo, PlanDocument, PlanFinal, PlanHeader, PlanSummary, StepRecord
from ultrawork.workspace.resources import ResourceMonitor, ResourceThresholds, ResourceVerdict
from ultrawork.workspace.superproject import RunSuperproject, run_path, ultrawork_home

__all__ = [
    "AgentWorkspace", "BUILTIN_HOOKS", "BranchNameError", "CommandDeniedError", "CommitInfo",
    "DEFAULT_DENY_LIST", "DeniedCommand", "GitError", "HookContext", "HookError", "HookPoint",
    "HookRegistry", "HookRunReport", "HookSpec", "Identity", "PlanDocument", "PlanFinal", "PlanHeader",
    "PlanSummary", "ResourceLimitError", "ResourceMonitor", "ResourceThresholds", "ResourceVerdict",
    "RunSuperproject", "SafetyViolation", "StepRecord", "UltraworkError", "WorkspaceError",
    "WorkspaceEscapeError", "agent_branch", "denied_reason", "hook", "hooks_from_config",
    "hooks_from_entry_points", "load_hook", "run_git", "run_path", "ultrawork_home",
    "validate_branch_name", "validate_role", "validate_run_id",
]
