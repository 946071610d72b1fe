"""Errors of an agent's own work (as opposed to its sandbox or its git)."""

from __future__ import annotations

from ultrawork.workspace.errors import UltraworkError


class AgentExecutionError(UltraworkError):
    """The agent's command exited non-zero; recovery retries the step."""

    def __init__(self, role: str, argv: list[str], exit_code: int, stderr: str):
        self.role = role
        self.argv = argv
        self.exit_code = exit_code
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-1][:300] if stderr.strip() else "no stderr"
        super().__init__(f"{role} agent command exited {exit_code}: {tail}")
