"""One guarded step: a command in a sandbox wrapped in the safety and plan hooks.

The execute loop of the seed, for one command: container-safety-enforcer before,
resource-limit-monitor during, isolation-checker and plan-updater after. Each
folder the sandbox can write is watched against its disk cap (``ultrawork.sandbox.disk``, ``disk_use``): a
step that fills one is stopped and ends with ``DiskLimitExceeded``. The
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
from ultrawork.workspace.errors import DiskLimitExceeded, ResourceLimitError
from ultrawork.workspace.hooks import HookContext, HookPoint
from ultrawork.workspace.plan import StepRecord

from . import disk, disk_use
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
    def policy_check() -> None:     # its mounts were pinned when the engine created it
        validate_spec(sandbox.spec, engine.policy, mounts=False)

    if ws is not None:
        ws.before_step(argv, policy_check=policy_check, deny_list=deny_list)
    else:
        container_safety_enforcer(HookContext(HookPoint.BEFORE_STEP, None, argv=[str(a) for a in argv],
                                              policy_check=policy_check, deny_list=deny_list))


DISK_INTERVAL = 0.25    # seconds between two looks at the disk caps (a statvfs, or a bounded walk)


def _monitor(engine: SandboxEngine, sandbox: Sandbox, ws, stop: threading.Event,
             reason: list[ResourceLimitExceeded], interval: float, folders: dict) -> None:
    """resource-limit-monitor: feed stats to the safety hook until the step ends, and stop the
    step once a folder it writes reached its disk cap.

    Its verdict names the limit (the first word of each finding: memory, pids,
    cpu), so the step fails with that limit and the recovery can raise it.
    """
    # a statvfs every 0.25 s; the monitor fallback's walk of a big tree costs more: once a second
    tick = min(interval, DISK_INTERVAL if disk.disk_backend().kind == "loop" else 1.0) if folders else interval
    next_stats = time.monotonic() + interval
    while not stop.wait(tick):
        try:
            hit = disk_use.over_cap(folders) if folders else None
        except OSError:
            hit = None
        if hit:
            error = ResourceLimitExceeded("disk", hit[0])
            error.folder = hit[1]
            reason.append(error)
            return
        if ws is None or time.monotonic() < next_stats:
            continue
        next_stats = time.monotonic() + interval
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
    folders = disk_use.sandbox_folders(sandbox)
    if ws is not None or folders:
        threading.Thread(target=_monitor, args=(engine, sandbox, ws, stop, reason, monitor_interval, folders),
                         name=f"monitor-{sandbox.name}", daemon=True).start()
    started = time.monotonic()
    try:
        if before_execute is not None:
            before_execute()
        result = engine.execute(sandbox, argv, timeout, workdir, env, output_log,
                                lambda: reason[0] if reason else None)
    except BaseException as exc:
        full = _disk_limit(folders, ws, exc)
        if ws is not None:
            stderr = "\n".join(s for s in (getattr(exc, "stderr", ""), str(full or exc)) if s)
            ws.record_step(StepRecord(recorded, -1, time.monotonic() - started, getattr(exc, "stdout", ""), stderr))
        if full is not None:
            raise full from exc
        raise
    finally:
        stop.set()
    full = _disk_limit(folders, ws)
    if ws is not None:
        stderr = "\n".join(s for s in (result.stderr, str(full or "")) if s)
        ws.record_step(StepRecord(recorded, -1 if full else result.exit_code, result.duration, result.stdout, stderr))
    if full is not None:
        raise full
    return result


def _disk_limit(folders: dict, ws, exc: BaseException | None = None) -> DiskLimitExceeded | None:
    """The step's ``DiskLimitExceeded`` if it filled a capped folder (seen now or by the monitor);
    a Plan.md folder it filled is cleared first (only Plan.md stays) so the host can record the step."""
    hit = None
    if isinstance(exc, ResourceLimitExceeded) and exc.resource == "disk":
        hit = (exc.detail, getattr(exc, "folder", None))
    try:
        now = disk_use.over_cap(folders) if folders else None
    except OSError:
        now = None
    hit = now or hit
    if hit is None:
        return None
    done = []
    if hit[1] is not None:
        try:
            done += disk_use.make_room(hit[1])
        except OSError as error:
            done.append(f"could not clear {hit[1].name}: {error.strerror}")
    error = DiskLimitExceeded(hit[0] + (f" ({'; '.join(done)})" if done else ""))
    if ws is not None and done:
        try:
            ws.plan.append_note("; ".join(done), kind="disk")
        except OSError:
            pass
    return error
