"""Validation of every name that reaches git or the filesystem.

User text (run ids, roles, branch names, base refs) is checked here before any
git command or directory creation, so a bad name leaves nothing behind. The
allowlists are deliberately stricter than git's own rules; git's
``check-ref-format --branch`` is consulted as well, with the name as a plain
argument.
"""

from __future__ import annotations

import re
from pathlib import Path

from ultrawork.workspace.errors import BranchNameError, GitError, WorkspaceError
from ultrawork.workspace.gitcmd import run_git

BRANCH_PREFIX = "ultrawork"
BRANCH_MAX_LENGTH = 200
ROLE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
BRANCH_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
BASE_REF_CHARS = re.compile(r"[A-Za-z0-9._/~^-]{1,200}")


def validate_role(role: object) -> str:
    """A role names a directory, a branch component and an email local part."""
    if not isinstance(role, str) or not ROLE_PATTERN.fullmatch(role):
        raise WorkspaceError(f"invalid role {role!r}: must match {ROLE_PATTERN.pattern}")
    return role


def validate_run_id(run_id: object) -> str:
    """A run id names a directory under $ULTRAWORK_HOME/runs and a branch component."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise WorkspaceError(f"invalid run id {run_id!r}: must match {RUN_ID_PATTERN.pattern}")
    _check_branch_syntax(f"{BRANCH_PREFIX}/{run_id}/probe")
    return run_id


def agent_branch(run_id: str, role: str) -> str:
    """The branch an agent works on: ``ultrawork/<run-id>/<role>``."""
    return f"{BRANCH_PREFIX}/{validate_run_id(run_id)}/{validate_role(role)}"


def _check_branch_syntax(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise BranchNameError(f"invalid branch name {name!r}: empty")
    if len(name) > BRANCH_MAX_LENGTH:
        raise BranchNameError(f"invalid branch name: longer than {BRANCH_MAX_LENGTH}")
    if not BRANCH_CHARS.fullmatch(name):
        raise BranchNameError(f"invalid branch name {name!r}: only [A-Za-z0-9._/-] allowed")
    if ".." in name or "@{" in name or "//" in name:
        raise BranchNameError(f"invalid branch name {name!r}: '..', '@{{' or '//'")
    if name.endswith(("/", ".")):
        raise BranchNameError(f"invalid branch name {name!r}: trailing '/' or '.'")
    for component in name.split("/"):
        if not component or component.startswith(("-", ".")) or component.endswith(".lock"):
            raise BranchNameError(
                f"invalid branch name {name!r}: component {component!r} is empty, "
                "starts with '-' or '.', or ends with '.lock'")
    if name == "HEAD" or name == "@":
        raise BranchNameError(f"invalid branch name {name!r}: reserved")
    return name


def validate_branch_name(name: object, *, cwd: Path | None = None) -> str:
    """Allowlist first (no git call for bad text), then ``git check-ref-format --branch``."""
    checked = _check_branch_syntax(name)
    result = run_git(["check-ref-format", "--branch", checked], cwd=cwd or Path("/"), check=False)
    if result.returncode != 0:
        raise BranchNameError(f"invalid branch name {checked!r}: rejected by git check-ref-format")
    return checked


def validate_agent_branch(name: object, *, cwd: Path | None = None) -> str:
    """Agent branches must live under ``ultrawork/`` so publishing never touches user branches."""
    checked = validate_branch_name(name, cwd=cwd)
    if not checked.startswith(BRANCH_PREFIX + "/"):
        raise BranchNameError(f"agent branch {checked!r} must start with {BRANCH_PREFIX}/")
    return checked


def resolve_base_ref(repo: Path, base: object) -> str:
    """Resolve a base ref to a commit sha in `repo`, refusing option-like or odd text."""
    if not isinstance(base, str) or not BASE_REF_CHARS.fullmatch(base) or base.startswith("-"):
        raise WorkspaceError(f"invalid base ref {base!r}")
    try:
        out = run_git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{base}^{{commit}}"],
                      cwd=repo).stdout.strip()
    except GitError as exc:
        raise WorkspaceError(f"base ref {base!r} does not name a commit in {repo}") from exc
    if not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", out):
        raise WorkspaceError(f"base ref {base!r} did not resolve to a commit")
    return out
