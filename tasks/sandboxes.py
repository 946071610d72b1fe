"""Prefect tasks over the sandbox engine: start, deploy, run one step, clean up.

A :class:`SandboxHandle` is the agent's sandbox across retries: when a step
fails with a ``SandboxError`` the next attempt finds the container gone or
broken and recreates it (and redeploys the agent) before running the step
again -- the recovery the table in ``tasks.recovery`` names.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from agents.errors import AgentExecutionError
from sandbox import SandboxEngine, SandboxError, SandboxPolicy, SandboxSpec, validate_spec
from sandbox.engine import ExecResult, Sandbox
from sandbox.errors import ContainerGone
from sandbox.spec import ultrawork_home
from workspace.plan import StepRecord
from workspace.errors import ResourceLimitError

from .faults import fault
from .logs import get_logger
from .recovery import recovery_for, task_options

_ENGINE: SandboxEngine | None = None
_ENGINE_KEY: tuple[str, str] | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> SandboxEngine:
    """One engine per process (it holds the Docker client); its policy follows $ULTRAWORK_HOME."""
    global _ENGINE, _ENGINE_KEY
    key = (str(ultrawork_home()), os.environ.get("ULTRAWORK_WORKSPACE_ROOTS", ""))
    with _ENGINE_LOCK:
        if _ENGINE is None or _ENGINE_KEY != key:
            client = _ENGINE._client if _ENGINE is not None else None
            _ENGINE, _ENGINE_KEY = SandboxEngine(SandboxPolicy(), client=client), key
        return _ENGINE


def grant_sandbox_access(path: Path) -> None:
    """Let the sandbox user (uid/gid 1000) write under ``path`` -- but never its ``.git``.

    Files keep their host owner (so host git sees no "dubious ownership"); as
    root we hand the group to gid 1000 and make it group-writable, otherwise we
    make it writable for others. ``.git`` stays the host's: the agent edits the
    work tree, and the host alone commits.
    """
    todo = [path]
    while todo:
        p = todo.pop()
        if p.is_symlink():
            continue
        if os.geteuid() == 0:
            os.chown(p, -1, 1000)
            os.chmod(p, p.stat().st_mode | 0o060 | (0o010 if p.is_dir() else 0))
        else:
            os.chmod(p, p.stat().st_mode | 0o006 | (0o001 if p.is_dir() else 0))
        if p.is_dir():
            todo += [c for c in p.iterdir() if c.name != ".git"]


class SandboxHandle:
    """The sandbox of one agent: recreated on demand, counted, always cleaned up."""

    def __init__(self, spec: SandboxSpec, files: dict[str, bytes | str]):
        self.spec = spec
        self.files = files
        self.sandbox: Sandbox | None = None
        self.created = 0
        self.attempts = 0
        self.broken = False
        self.recoveries: list[str] = []

    def ensure(self, note: Callable[[str], None] | None = None) -> Sandbox:
        eng = engine()
        if self.sandbox is not None and (self.broken or not self._alive()):
            eng.cleanup(self.sandbox)
            self.sandbox = None
            if note:
                note("sandbox was gone or broken: recreated it (recovery: recreate the sandbox, then retry)")
        if self.sandbox is None:
            validate_spec(self.spec, eng.policy)
            self.sandbox = eng.create(self.spec)
            self.created += 1
            self.broken = False
            eng.deploy(self.sandbox, files=self.files)
        return self.sandbox

    def _alive(self) -> bool:
        try:
            return engine().is_running(self.sandbox)
        except SandboxError:
            return False

    def cleanup(self) -> None:
        if self.sandbox is not None:
            engine().cleanup(self.sandbox)
            self.sandbox = None


@task(name="start-sandbox", cache_policy=NO_CACHE, **task_options(SandboxError))
async def start_sandbox(handle: SandboxHandle) -> str:
    """Create the hardened container and deploy the agent into it."""
    sandbox = await asyncio.to_thread(handle.ensure)
    get_logger().info("sandbox %s ready for %s (image %s, workspace %s)", sandbox.name, handle.spec.role,
                      handle.spec.image, handle.spec.workspace_mode)
    return sandbox.name


def _monitor(handle: SandboxHandle, ws, stop: threading.Event, reason: list[str]) -> None:
    """resource-limit-monitor: feed stats to the safety hook until the step ends."""
    while not stop.wait(1.0):
        try:
            ws.check_resources(engine().stats(handle.sandbox))
        except ResourceLimitError as exc:
            reason.append(str(exc))
            return
        except SandboxError:
            return


@task(name="run-step", cache_policy=NO_CACHE, **task_options(AgentExecutionError, SandboxError))
async def run_step(handle: SandboxHandle, ws, argv: list[str], timeout: float) -> dict:
    """One step of the execute loop: safety hooks before, monitor during, isolation + Plan.md after."""
    log = get_logger()
    role = handle.spec.role
    handle.attempts += 1

    def note(text: str) -> None:
        handle.recoveries.append(text)
        ws.plan.append_note(text, kind="recovery")
        log.warning("%s: %s", role, text)

    sandbox = await asyncio.to_thread(handle.ensure, note)
    eng = engine()
    await asyncio.to_thread(ws.before_step, argv, policy_check=lambda: validate_spec(handle.spec, eng.policy))
    stop, reason = threading.Event(), []
    monitor = threading.Thread(target=_monitor, args=(handle, ws, stop, reason), daemon=True)
    monitor.start()

    def on_line(stream: str, line: str) -> None:
        log.info("[%s %s] %s", role, stream, line[:500])

    started = time.monotonic()
    try:
        fault("step", role=role, sandbox=sandbox)
        result: ExecResult = await asyncio.to_thread(
            eng.execute, sandbox, argv, timeout, None, None, on_line, lambda: reason[0] if reason else None)
    except BaseException as exc:
        if isinstance(exc, (SandboxError, ContainerGone)):
            handle.broken = True
        row = recovery_for(exc)
        action = row.action if row and row.retries else "no retry"
        await asyncio.to_thread(ws.record_step, StepRecord(argv, -1, time.monotonic() - started, "", str(exc)))
        ws.plan.append_note(f"step failed: {type(exc).__name__}: {exc} (recovery: {action})", kind="error")
        if row and row.retries:
            handle.recoveries.append(f"{type(exc).__name__}: {row.action}")
        raise
    finally:
        stop.set()
    await asyncio.to_thread(ws.record_step, StepRecord(argv, result.exit_code, result.duration,
                                                       result.stdout, result.stderr))
    if result.exit_code != 0:
        error = AgentExecutionError(role, argv, result.exit_code, result.stderr)
        ws.plan.append_note(f"step failed: {error} (recovery: retry the step)", kind="error")
        handle.recoveries.append(f"AgentExecutionError: retry the step")
        raise error
    return {"exit_code": result.exit_code, "duration": result.duration, "truncated": result.truncated}


@task(name="cleanup-sandbox", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def cleanup_sandbox(handle: SandboxHandle) -> None:
    await asyncio.to_thread(handle.cleanup)
