"""Typed errors of the backlog: each names the issue (and the file or GitHub issue) it is about.

The sweep catches :class:`BacklogError` per issue, records why it skipped the
issue and goes on with the others.
"""

from __future__ import annotations

from ultrawork.workspace.errors import UltraworkError


class BacklogError(UltraworkError):
    """Something about the backlog or one of its issues is wrong."""


class IssueNotFound(BacklogError):
    """No issue with that id in the backlog."""


class IssueFileError(BacklogError):
    """An issue file (or GitHub issue) that cannot be read: bad YAML, a wrong field, a broken history."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


class UnknownStateError(IssueFileError):
    """A state name the machine does not know."""

    def __init__(self, where: str, state: object):
        self.state = state
        super().__init__(where, f"unknown state {state!r}")


class IllegalTransition(BacklogError):
    """The machine has no such transition from the issue's current state."""

    def __init__(self, issue_id: str, state: str, trigger: str, allowed: list[str], reason: str = ""):
        self.issue_id, self.state, self.trigger, self.allowed = issue_id, state, trigger, allowed
        why = reason or f"'{trigger}' is not allowed in state '{state}'"
        super().__init__(f"issue {issue_id} ({state}): {why} (allowed: {', '.join(allowed) or 'nothing'})")


class GuardFailed(IllegalTransition):
    """The transition exists but its guard refused this issue (e.g. a claim without a repository)."""

    def __init__(self, issue_id: str, state: str, trigger: str, allowed: list[str], reason: str):
        self.reason = reason
        super().__init__(issue_id, state, trigger, allowed, reason=f"'{trigger}' refused: {reason}")


class ConcurrencyError(BacklogError):
    """Optimistic lock: the issue changed since it was read; nothing was written."""

    def __init__(self, issue_id: str, expected: int, actual: int):
        self.issue_id, self.expected, self.actual = issue_id, expected, actual
        super().__init__(f"issue {issue_id} is at version {actual}, not {expected}: "
                         f"another writer changed it; re-read it and try again")


class UnknownLabelError(BacklogError):
    """A GitHub label the backlog needs does not exist in the repository."""

    def __init__(self, repository: str, label: str):
        self.repository, self.label = repository, label
        super().__init__(f"label {label!r} does not exist in {repository}: create it, or name another "
                         f"label for the backlog")
