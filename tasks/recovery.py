"""The recovery table: which error class gets which recovery, in one place.

{table}

Everything else (policy rejections, timeouts, bad input) is not retried: doing
the same thing again would fail the same way. Output floods are not an error:
the output is cut (head and tail kept, logging capped) and the step goes on,
so there is no output limit to raise.

Prefect's task retries do the retrying; ``task_options`` turns a row of the
table into ``@task`` keyword arguments with a ``retry_condition_fn`` closure
(a plain function: in Prefect 3.8 a partial or callable object silently turns
retries off).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ultrawork.agents.errors import AgentExecutionError
from ultrawork.gateway.errors import GatewayError
from ultrawork.model_agent.errors import BudgetExceeded, ModelCallError, ModelConfigError
from ultrawork.sandbox.errors import McpError, ResourceLimitExceeded, SandboxError
from ultrawork.workspace.errors import GitError, HookError

log = logging.getLogger("ultrawork.recovery")


@dataclass(frozen=True)
class Recovery:
    error: type[BaseException]
    action: str
    retries: int
    delays: list[float] = field(default_factory=lambda: [1.0])
    jitter: float | None = None
    when: Callable[[BaseException], bool] | None = None   # retried only if this says so
    note: str = ""                                        # says when, in the table above


RECOVERY_TABLE: list[Recovery] = [
    Recovery(AgentExecutionError, "retry the step", retries=1, delays=[1.0]),
    Recovery(SandboxError, "recreate the sandbox, then retry", retries=2, delays=[1.0, 2.0]),
    Recovery(GitError, "retry with exponential backoff and jitter", retries=4,
             delays=[0.5, 1.0, 2.0, 4.0], jitter=0.5),
    Recovery(HookError, "disable the hook for the run and continue", retries=0,
             note="the hook registry disables it"),
    Recovery(McpError, "restart the MCP server, then retry", retries=2, delays=[1.0, 2.0]),
    Recovery(GatewayError, "restart the egress gateway, then retry", retries=2, delays=[1.0, 2.0]),
    Recovery(ResourceLimitExceeded, "adjust limits: raise the limit it hit, recreate the sandbox, then retry",
             retries=1, delays=[1.0], when=lambda exc: getattr(exc, "raised", None) is not None,
             note="while the limit is below its ceiling: `limit_raise_*` of the sandbox settings"),
    Recovery(BudgetExceeded, "end the agent: its budget is spent (a retry would spend it again)", retries=0),
    Recovery(ModelConfigError, "end the agent: fix the model settings", retries=0),
    Recovery(ModelCallError, "retry the model agent with backoff", retries=2, delays=[2.0, 8.0], jitter=0.3),
]


def _table_markdown(rows: list[Recovery]) -> str:
    lines = ["| error class | recovery | retries |", "| --- | --- | --- |"]
    for row in rows:
        retries = f"{row.retries}" + (f" ({row.note})" if row.note else "")
        lines.append(f"| {row.error.__name__} | {row.action} | {retries} |")
    return "\n".join(lines)


__doc__ = __doc__.format(table=_table_markdown(RECOVERY_TABLE))


def recovery_for(exc: BaseException | None) -> Recovery | None:
    """The row of the table that applies to ``exc`` (most specific class first)."""
    if exc is None:
        return None
    for row in RECOVERY_TABLE:
        if isinstance(exc, row.error):
            return row
    return None


def will_retry(exc: BaseException, run_count: int, errors: tuple[type[BaseException], ...] | None = None) -> bool:
    """Whether attempt ``run_count`` failing with ``exc`` is retried (the rule ``task_options`` applies)."""
    row = recovery_for(exc)
    if row is None or (errors is not None and row.error not in errors) or run_count > row.retries:
        return False
    return row.when is None or row.when(exc)


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
        if not will_retry(exc, task_run.run_count, errors):
            return False
        row = recovery_for(exc)
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
