"""The recovery table: which error class gets which recovery, in one place.

| error class            | recovery                                   | retries |
| ---------------------- | ------------------------------------------ | ------- |
| AgentExecutionError    | retry the step                             | 1       |
| SandboxError           | recreate the sandbox, then retry           | 2       |
| GitError               | retry with exponential backoff and jitter  | 4       |
| HookError              | disable the hook for the run and continue  | 0 (the hook registry disables it) |
| McpError               | restart the MCP server, then retry         | 2       |

Everything else (policy rejections, timeouts, resource limits, bad input) is
not retried: doing the same thing again would fail the same way.

Prefect's task retries do the retrying; ``task_options`` turns a row of the
table into ``@task`` keyword arguments with a ``retry_condition_fn`` closure
(a plain function: in Prefect 3.8 a partial or callable object silently turns
retries off).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agents.errors import AgentExecutionError
from sandbox.errors import McpError, SandboxError
from workspace.errors import GitError, HookError

log = logging.getLogger("ultrawork.recovery")


@dataclass(frozen=True)
class Recovery:
    error: type[BaseException]
    action: str
    retries: int
    delays: list[float] = field(default_factory=lambda: [1.0])
    jitter: float | None = None


RECOVERY_TABLE: list[Recovery] = [
    Recovery(AgentExecutionError, "retry the step", retries=1, delays=[1.0]),
    Recovery(SandboxError, "recreate the sandbox, then retry", retries=2, delays=[1.0, 2.0]),
    Recovery(GitError, "retry with exponential backoff and jitter", retries=4,
             delays=[0.5, 1.0, 2.0, 4.0], jitter=0.5),
    Recovery(HookError, "disable the hook for the run and continue", retries=0),
    Recovery(McpError, "restart the MCP server, then retry", retries=2, delays=[1.0, 2.0]),
]


def recovery_for(exc: BaseException | None) -> Recovery | None:
    """The row of the table that applies to ``exc`` (most specific class first)."""
    if exc is None:
        return None
    for row in RECOVERY_TABLE:
        if isinstance(exc, row.error):
            return row
    return None


def _exception_of(state: Any) -> BaseException | None:
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - reading a result may itself raise the error
        return exc
    return result if isinstance(result, BaseException) else None


def task_options(*errors: type[BaseException]) -> dict[str, Any]:
    """``@task`` keyword arguments that retry exactly the given error classes, per the table."""
    rows = [row for row in RECOVERY_TABLE if row.error in errors]
    if len(rows) != len(errors):
        raise ValueError(f"no recovery row for {set(errors) - {r.error for r in rows}}")
    longest = max(rows, key=lambda r: r.retries)
    jitter = max((r.jitter or 0.0) for r in rows) or None

    def retry_condition(task, task_run, state) -> bool:
        exc = _exception_of(state)
        row = recovery_for(exc)
        if row is None or row not in rows or task_run.run_count > row.retries:
            return False
        log.warning("%s failed (attempt %d): %s: %s -> %s", task.name, task_run.run_count,
                    type(exc).__name__, exc, row.action)
        return True

    options: dict[str, Any] = {
        "retries": longest.retries,
        "retry_delay_seconds": longest.delays,
        "retry_condition_fn": retry_condition,
    }
    if jitter:
        options["retry_jitter_factor"] = jitter
    return options
