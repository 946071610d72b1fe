"""Typed errors of the model agent, one class per way it can stop.

The retry policy lives in ``tasks/``: a `ModelConfigError` and a `BudgetExceeded`
are never retried (the same settings would fail the same way, or spend the
budget again); a `ModelCallError` (the provider failed or answered nonsense)
may be. Sandbox errors raised by a tool (`ultrawork.sandbox.errors.SandboxError`, a
`ultrawork.workspace.errors.SafetyViolation`) pass through unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ultrawork.workspace.errors import UltraworkError

if TYPE_CHECKING:
    from .agent import ModelAgentResult


class ModelAgentError(UltraworkError):
    """Base class of the model agent's errors."""


class ModelConfigError(ModelAgentError, ValueError):
    """The model settings are unusable (unknown provider, missing key, bad URL); raised before any call.

    Its message names the fields, never their values (a key must not reach a log).
    """


class _StoppedRun(ModelAgentError):
    """A run that stopped part-way: ``result`` holds what it did so far (usage, findings, history)."""

    def __init__(self, message: str, result: "ModelAgentResult | None" = None):
        super().__init__(message)
        self.result = result

    def __reduce__(self):  # picklable (persisted task results)
        return (type(self), (str(self), self.result), self.__dict__)

    @property
    def usage(self):
        return None if self.result is None else self.result.usage


class BudgetExceeded(_StoppedRun):
    """The agent hit one of its budgets; ``limit`` names it (max_requests, max_input_tokens,
    max_output_tokens, max_seconds; the run's run_max_requests, run_max_tokens, run_max_seconds).
    Never retried: a retry would spend the budget again."""

    def __init__(self, limit: str, message: str, result: "ModelAgentResult | None" = None):
        self.limit = limit
        super().__init__(message, result)

    def __reduce__(self):
        return (type(self), (self.limit, str(self), self.result), self.__dict__)


class ModelCallError(_StoppedRun):
    """The model provider failed (unreachable, an HTTP error, a malformed or unusable answer)."""
