"""Typed errors of the workspace core.

One class per error kind, so `tasks/` can pick a retry policy by class alone.
Every ultrawork error derives from `UltraworkError`; the sandbox package
imports that base from here so the whole product shares one root.
"""

from __future__ import annotations

from typing import Any, Sequence


class UltraworkError(Exception):
    """Root of every error ultrawork raises on purpose."""


class GitError(UltraworkError):
    """A git command failed; carries the argv and stderr for the log."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, stdout: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no stderr"
        super().__init__(f"git exited {returncode}: {' '.join(self.command)}: {detail}")

    @property
    def command(self) -> list[str]:
        """The argv without the ``-c key=value`` hardening pairs, for readable messages."""
        shown, skip = [], False
        for arg in self.argv:
            if skip:
                skip = False
            elif arg == "-c":
                skip = True
            else:
                shown.append(arg)
        return shown


class WorkspaceError(UltraworkError):
    """Bad input or state: not a repository, bad role, run id or base ref, unsafe repo."""


class BranchNameError(WorkspaceError):
    """A branch name failed validation; raised before any git call creates anything."""


class HookError(UltraworkError):
    """A hook failed. Non-safety hooks are disabled after repeated failures."""

    def __init__(self, message: str, *, hook: str = "", point: str = "") -> None:
        self.hook = hook
        self.point = point
        self.report: Any = None  # the HookRunReport of the point, when raised by the registry
        super().__init__(message)


class SafetyViolation(HookError):
    """A safety hook refused or failed: the agent's step must stop (fail closed)."""

    def __init__(self, message: str, *, hook: str = "", point: str = "",
                 findings: Sequence[str] = ()) -> None:
        super().__init__(message, hook=hook, point=point)
        self.findings = list(findings)


class WorkspaceEscapeError(SafetyViolation):
    """The agent reached, or tried to reach, outside its workspace."""


class CommandDeniedError(SafetyViolation):
    """The step's command is on the deny list, or the sandbox spec failed policy."""


class ResourceLimitError(SafetyViolation):
    """A container resource limit stayed exceeded longer than the grace period."""


class DiskLimitExceeded(WorkspaceError):
    """The agent's workspace outgrew its cap (size or file count): nothing of it is committed."""
