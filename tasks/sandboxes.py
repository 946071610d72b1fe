"""Prefect tasks over the sandbox engine: start, deploy, run one step, clean up.

A :class:`SandboxHandle` is the agent's sandbox across retries: when a step
fails with a ``SandboxError`` the next attempt finds the container gone or
broken and recreates it (with the same agent files mounted) before running the step
again -- the recovery the table in ``tasks.recovery`` names.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from agents.errors import AgentExecutionError
from sandbox import SandboxEngine, SandboxError, SandboxSpec, validate_spec
from sandbox.engine import Sandbox
from sandbox.steps import guarded_execute
from sandbox.spec import ultrawork_home

from .config import active_policy
from .faults import fault
from .logs import get_logger
from .recovery import recovery_for, task_options

_ENGINE: SandboxEngine | None = None
_ENGINE_KEY: tuple[str, ...] | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> SandboxEngine:
    """One engine per process (it holds the Docker client); its policy follows $ULTRAWORK_HOME
    and the caps of the run's sandbox settings (``tasks.config.active_policy``)."""
    global _ENGINE, _ENGINE_KEY
    policy = active_policy()
    key = (str(ultrawork_home()), os.environ.get("ULTRAWORK_WORKSPACE_ROOTS", ""), policy.model_dump_json())
    with _ENGINE_LOCK:
        if _ENGINE is None or _ENGINE_KEY != key:
            client = _ENGINE._client if _ENGINE is not None else None
            _ENGINE, _ENGINE_KEY = SandboxEngine(policy, client=client), key
        return _ENGINE


class SandboxHandle:
    """The sandbox of one agent: recreated on demand, counted, always cleaned up."""

    def __init__(self, spec: SandboxSpec, files: dict[str, bytes | str] | None = None):
        self.spec = spec
        self.files = dict(files or {})
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
            if self.files:   # files the spec does not already mount
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
    """Create the hardened container, the agent's files mounted read-only at /agent."""
    sandbox = await asyncio.to_thread(handle.ensure)
    get_logger().info("sandbox %s ready for %s (image %s, workspace %s)", sandbox.name, handle.spec.role,
                      handle.spec.image, handle.spec.workspace_mode)
    return sandbox.name


@task(name="run-step", cache_policy=NO_CACHE, **task_options(AgentExecutionError, SandboxError))
async def run_step(handle: SandboxHandle, ws, argv: list[str], timeout: float) -> dict:
    """One step of the execute loop (``sandbox.steps.guarded_execute``: safety hooks before,
    resource monitor during, isolation checker and Plan.md after); failures go to Plan.md
    with the recovery the table gives them."""
    log = get_logger()
    role = handle.spec.role
    handle.attempts += 1

    def note(text: str) -> None:
        handle.recoveries.append(text)
        ws.plan.append_note(text, kind="recovery")
        log.warning("%s: %s", role, text)

    sandbox = await asyncio.to_thread(handle.ensure, note)

    def on_line(stream: str, line: str) -> None:
        log.info("[%s %s] %s", role, stream, line[:500])

    try:
        result = await asyncio.to_thread(
            guarded_execute, engine(), sandbox, argv, ws=ws, timeout=timeout, on_line=on_line,
            before_execute=lambda: fault("step", role=role, sandbox=sandbox))
        if result.exit_code != 0:
            raise AgentExecutionError(role, argv, result.exit_code, result.stderr)
    except Exception as exc:
        if isinstance(exc, SandboxError):
            handle.broken = True
        row = recovery_for(exc)
        action = row.action if row and row.retries else "no retry"
        ws.plan.append_note(f"step failed: {type(exc).__name__}: {exc} (recovery: {action})", kind="error")
        if row and row.retries:
            handle.recoveries.append(f"{type(exc).__name__}: {row.action}")
        raise
    return {"exit_code": result.exit_code, "duration": result.duration, "truncated": result.truncated}


@task(name="cleanup-sandbox", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def cleanup_sandbox(handle: SandboxHandle) -> None:
    await asyncio.to_thread(handle.cleanup)
