"""One guarded step: a command in a sandbox wrapped in the safety and plan hooks.

The execute loop of the seed, for one command: container-safety-enforcer before,
resource-limit-monitor during, isolation-checker and plan-updater after. The
flows' ``run_step`` task and the MCP server both run a step through
:func:`guarded_execute`, so a command passes the same hooks whichever drives it.
Without an agent workspace (an MCP session not bound to a run) the enforcer
still runs -- spec policy plus command deny list -- and nothing is recorded.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Mapping, Sequence

from ultrawork.workspace.builtin_hooks import container_safety_enforcer
from ultrawork.workspace.command_policy import DEFAULT_DENY_LIST, DeniedCommand
from ultrawork.workspace.errors import ResourceLimitError
from ultrawork.workspace.hooks import HookContext, HookPoint
from ultrawork.workspace.plan import StepRecord

from .engine import ExecResult, Sandbox, SandboxEngine
from .errors import ResourceLimitExceeded, SandboxError
from .output import OutputLog
from .policy import validate_spec


def check_step(engine: SandboxEngine, sandbox: Sandbox, argv: Sequence[str], ws=None,
               deny_list: Sequence[DeniedCommand] = DEFAULT_DENY_LIST) -> None:
    """container-safety-enforcer: raise `CommandDeniedError` unless the spec and the command pass.

    With a workspace this is the workspace's ``before_step`` hook point (which
    also records a refusal in Plan.md and snapshots the tree for the isolation
    check); without one, the same built-in enforcer runs on its own.
    """
    def policy_check() -> None:
        validate_spec(sandbox.spec, engine.policy)

    if ws is not None:
        ws.before_step(argv, policy_check=policy_check, deny_list=deny_list)
    else:
        container_safety_enforcer(HookContext(HookPoint.BEFORE_STEP, None, argv=[str(a) for a in argv],
                                              policy_check=policy_check, deny_list=deny_list))


def _monitor(engine: SandboxEngine, sandbox: Sandbox, ws, stop: threading.Event,
             reason: list[ResourceLimitExceeded], interval: float) -> None:
    """resource-limit-monitor: feed stats to the safety hook until the step ends.

    Its verdict names the limit (the first word of each finding: memory, pids,
    cpu), so the step fails with that limit and the recovery can raise it.
    """
    while not stop.wait(interval):
        try:
            ws.check_resources(engine.stats(sandbox))
        except ResourceLimitError as exc:
            names = [f.split()[0] for f in exc.findings if f.split()]
            reason.append(ResourceLimitExceeded(names[0] if names else "monitor", str(exc)))
            return
        except SandboxError:
            return


def guarded_execute(
    engine: SandboxEngine,
    sandbox: Sandbox,
    argv: Sequence[str],
    *,
    ws=None,
    timeout: float | None = None,
    workdir: str | None = None,
    env: Mapping[str, str] | None = None,
    output_log: OutputLog | None = None,
    before_execute: Callable[[], None] | None = None,
    monitor_interval: float = 1.0,
    shown: Sequence[str] | None = None,
) -> ExecResult:
    """Run ``argv`` in ``sandbox`` between the hooks; with ``ws``, one Plan.md step entry either way
    (showing ``shown`` instead of ``argv`` when given: a readable form of an encoded command).

    A failed execution (timeout, limit, gone container) is recorded as a step
    with exit code -1 and the error as stderr, then re-raised. The isolation
    checker may raise a `SafetyViolation` after the step is recorded.
    """
    argv = list(argv)
    recorded = list(shown) if shown is not None else argv
    check_step(engine, sandbox, argv, ws)
    stop, reason = threading.Event(), []
    if ws is not None:
        threading.Thread(target=_monitor, args=(engine, sandbox, ws, stop, reason, monitor_interval),
                         name=f"monitor-{sandbox.name}", daemon=True).start()
    started = time.monotonic()
    try:
        if before_execute is not None:
            before_execute()
        result = engine.execute(sandbox, argv, timeout, workdir, env, output_log,
                                lambda: reason[0] if reason else None)
    except BaseException as exc:
        if ws is not None:
            stderr = "\n".join(s for s in (getattr(exc, "stderr", ""), str(exc)) if s)
            ws.record_step(StepRecord(recorded, -1, time.monotonic() - started, getattr(exc, "stdout", ""), stderr))
        raise
    finally:
        stop.set()
    if ws is not None:
        ws.record_step(StepRecord(recorded, result.exit_code, result.duration, result.stdout, result.stderr))
    return result
