"""Typed errors of the sandbox engine.

One class per error kind of the product's recovery table, so the retry policy
in ``tasks/`` can decide by type: a ``SandboxError`` means "recreate the
sandbox, then retry"; a ``SandboxPolicyError`` is never retried.
"""

from __future__ import annotations

from ultrawork.workspace.errors import UltraworkError


class SandboxError(UltraworkError):
    """The engine is unreachable, an image is missing, or a container failed."""


class EngineUnavailable(SandboxError):
    """No Docker engine answered."""


class ImageMissing(SandboxError):
    """The sandbox image is not present on the engine."""


class ContainerGone(SandboxError):
    """The sandbox's container died or was removed from outside."""


class SandboxPolicyError(UltraworkError):
    """A sandbox spec broke the safety policy; raised before any Docker call."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"sandbox policy rejects {field}: {problem}")


class RoleCapabilityError(SandboxPolicyError):
    """A sandbox asked for more than its agent's role is given (a wider mount, another network,
    higher limits, another image); raised before any Docker call."""

    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.args = (f"beyond the role: {field}: {problem}",)


class SandboxTimeout(UltraworkError):
    """A command ran past its timeout and was killed."""

    def __init__(self, argv: list[str], timeout: float, stdout: str = "", stderr: str = ""):
        self.argv = argv
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        self.leftovers_killed = 0
        super().__init__(f"command {argv[:3]!r}... ran past its {timeout:g}s timeout and was killed")

    def __reduce__(self):  # picklable (persisted task results): rebuilt from its fields
        return (type(self), (self.argv, self.timeout, self.stdout, self.stderr), self.__dict__)


class ResourceLimitExceeded(UltraworkError):
    """A command was stopped by a resource limit (OOM kill, pids exhausted, the resource monitor).

    ``resource`` names the limit (``memory``, ``pids``, ...). ``raised`` says how
    the recovery raised it for the next attempt ("512 MiB -> 1024 MiB"); it stays
    None when the limit cannot be raised, and then the step is not retried.
    """

    def __init__(self, resource: str, detail: str, exit_code: int | None = None, raised: str | None = None):
        self.resource = resource
        self.detail = detail
        self.exit_code = exit_code
        self.raised = raised
        self.leftovers_killed = 0
        super().__init__(f"{resource} limit exceeded: {detail}")

    def __reduce__(self):
        return (type(self), (self.resource, self.detail, self.exit_code, self.raised), self.__dict__)


class McpError(UltraworkError):
    """The MCP server over the sandboxes failed; recovery restarts it, then retries."""
