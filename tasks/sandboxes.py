"""Prefect tasks over the sandbox engine: start, deploy, run one step, clean up.

A :class:`SandboxHandle` is the agent's sandbox across retries: when a step
fails with a ``SandboxError`` the next attempt finds the container gone or
broken and recreates it (with the same agent files mounted) before running the step
again; when it hits its memory or pids limit, the handle's spec gets the raised
limit first -- the recoveries the table in ``ultrawork.tasks.recovery`` names.

A step's output reaches the run's log in batches (several lines a record) and
at most ``LOG_LINES`` lines / ``LOG_BYTES`` bytes a step, then one marker line:
a flood costs the orchestrator neither memory nor log rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
import time
from typing import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from ultrawork.agents.errors import AgentExecutionError
from ultrawork.sandbox import SandboxEngine, SandboxError, SandboxSpec, validate_spec
from ultrawork.sandbox.engine import Sandbox
from ultrawork.sandbox.errors import ResourceLimitExceeded
from ultrawork.sandbox.limits import raise_limit
from ultrawork.sandbox.output import OutputLog
from ultrawork.sandbox.steps import guarded_execute
from ultrawork.sandbox.spec import ultrawork_home

from ultrawork.runtime.caps import SandboxSlot, release as release_slot
from ultrawork.runtime.config import active_limit_raise, active_policy
from ultrawork.failpoints import failpoint
from ultrawork.runtime.logs import get_logger
from ultrawork.tasks.recovery import recovery_for, task_options, will_retry
from ultrawork.gateway import GatewayError
from ultrawork.gateway.run import check_serving, gateway_networks, request_line, step_requests, through_gateway
from ultrawork.sandbox.errors import McpError
from ultrawork.sandbox.mcp_bridge import check_mcp, with_mcp_mount
from ultrawork.sandbox.access import record_role_sandbox

_ENGINE: SandboxEngine | None = None
_ENGINE_KEY: tuple[str, ...] | None = None
_ENGINE_LOCK = threading.Lock()

STEP_ERRORS = (AgentExecutionError, SandboxError, ResourceLimitExceeded, GatewayError, McpError)   # what a step retries
LOG_LINES = 2000              # most output lines one step sends to the run's log
LOG_BYTES = 256 * 1024        # most output bytes one step sends to the run's log
LOG_MARKER = "[output truncated: {dropped} more bytes not logged; the tail is in Plan.md]"
EGRESS_LINES = 500            # most gateway request lines one step sends to the run's log
EGRESS_POLL = 0.5             # seconds between reads of the gateway's record while a step runs
# A step holds its thread for as long as it runs (the exec is a blocking Docker call): steps get a pool
# of their own, so the default pool (cores + 4 threads) stays free for sandbox starts and git work.
STEP_THREADS = 64
_STEP_POOL = concurrent.futures.ThreadPoolExecutor(STEP_THREADS, thread_name_prefix="ultrawork-step")


async def in_step_pool(fn, /, *args, **kwargs):
    """``asyncio.to_thread`` on the steps' own pool (the caller's context, Prefect's run context included)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_STEP_POOL, call)


def engine() -> SandboxEngine:
    """One engine per process (it holds the Docker client); its policy follows $ULTRAWORK_HOME
    and the caps of the run's sandbox settings (``ultrawork.runtime.config.active_policy``)."""
    global _ENGINE, _ENGINE_KEY
    policy = active_policy()
    if gateway_networks():   # a run's egress gateway networks, for the agents that use it
        policy = policy.model_copy(update={"allowed_networks": [*policy.allowed_networks, *gateway_networks()]})
    key = (str(ultrawork_home()), os.environ.get("ULTRAWORK_WORKSPACE_ROOTS", ""), policy.model_dump_json())
    with _ENGINE_LOCK:
        if _ENGINE is None or _ENGINE_KEY != key:
            client = _ENGINE._client if _ENGINE is not None else None
            _ENGINE, _ENGINE_KEY = SandboxEngine(policy, client=client), key
        return _ENGINE


class SandboxHandle:
    """The sandbox of one agent: recreated on demand, counted, always cleaned up."""

    RECREATED = "sandbox was gone or broken: recreated it (recovery: recreate the sandbox, then retry)"

    def __init__(self, spec: SandboxSpec, files: dict[str, bytes | str] | None = None):
        self.spec = spec
        self.files = dict(files or {})
        self.sandbox: Sandbox | None = None
        self.created = 0
        self.attempts = 0
        self.broken = False
        self.recreate_why = self.RECREATED
        self.recoveries: list[str] = []
        self.slot: SandboxSlot | None = None    # of the global sandbox cap, held until cleanup
        self.first_command_at: float | None = None   # when its first step's command was started (unix time)

    def ensure(self, note: Callable[[str], None] | None = None) -> Sandbox:
        self.spec = through_gateway(self.spec, note)   # its gateway network and placeholders; restarted if down
        self.spec = with_mcp_mount(self.spec)            # its MCP servers' socket at /mcp, when offered
        eng = engine()
        if self.sandbox is not None and (self.broken or not self._alive()):
            eng.cleanup(self.sandbox)
            self.sandbox = None
            if note:
                note(self.recreate_why)
            self.recreate_why = self.RECREATED
        if self.sandbox is None:
            validate_spec(self.spec, eng.policy, mounts=False)   # before a slot is taken; create pins the mounts
            if self.slot is None:
                self.slot = SandboxSlot.take(f"{self.spec.run_id}/{self.spec.role}")
            record_role_sandbox(self.spec)         # the ceiling of what an MCP server of this agent may create
            self.sandbox = eng.create(self.spec)
            self.created += 1
            self.broken = False
            if self.files:   # files the spec does not already mount
                eng.deploy(self.sandbox, files=self.files)
        return self.sandbox

    def raise_limit(self, exc: ResourceLimitExceeded, retry_left: bool = True) -> str | None:
        """Give the next sandbox the raised limit ``exc`` hit; the sentence saying so, or None
        (and ``exc`` says why not) when that limit cannot be raised."""
        raised = raise_limit(self.spec.limits, exc.resource, active_limit_raise())
        if not retry_left and not isinstance(raised, str):
            raised = f"the step was already retried with raised limits ({exc.resource} now {self._shown(exc.resource)})"
        if isinstance(raised, str):
            exc.detail = f"{exc.detail}; not retried: {raised}"
            exc.args = (f"{exc.resource} limit exceeded: {exc.detail}",)
            return None
        limits, change = raised
        self.spec = self.spec.model_copy(update={"limits": limits})
        self.broken = True
        self.recreate_why = f"sandbox recreated with the {change.resource} limit raised to {change.after} {change.unit}".rstrip()
        exc.raised = str(change)
        return change.sentence()

    def _shown(self, resource: str) -> str:
        return f"{self.spec.limits.memory_mb} MiB" if resource == "memory" else str(getattr(self.spec.limits, resource, "?"))

    def _alive(self) -> bool:
        try:
            return engine().is_running(self.sandbox)
        except SandboxError:
            return False

    def cleanup(self) -> None:
        if self.sandbox is not None:
            engine().cleanup(self.sandbox)
            self.sandbox = None
        self.slot = release_slot(self.slot)


@task(name="start-sandbox", cache_policy=NO_CACHE, **task_options(SandboxError))
async def start_sandbox(handle: SandboxHandle) -> str:
    """Create the hardened container, the agent's files mounted read-only at /agent."""
    sandbox = await asyncio.to_thread(handle.ensure)
    get_logger().info("sandbox %s ready for %s (image %s, workspace %s)", sandbox.name, handle.spec.role,
                      handle.spec.image, handle.spec.workspace_mode)
    return sandbox.name


@task(name="run-step", cache_policy=NO_CACHE,
      **task_options(*STEP_ERRORS))
async def run_step(handle: SandboxHandle, ws, argv: list[str], timeout: float) -> dict:
    """One step of the execute loop (``ultrawork.sandbox.steps.guarded_execute``: safety hooks before,
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

    output = OutputLog(lambda stream, text: log.info("[%s %s] %s", role, stream, text),
                       max_lines=LOG_LINES, max_bytes=LOG_BYTES, marker=LOG_MARKER)
    egress = EgressLog(lambda text: log.info("[%s egress] %s", role, text))
    following = asyncio.ensure_future(egress.follow(handle.spec))

    def before_execute() -> None:
        handle.first_command_at = handle.first_command_at or time.time()
        failpoint("step", role=role, kill=lambda: engine().cleanup(sandbox))

    try:
        result = await in_step_pool(
            guarded_execute, engine(), sandbox, argv, ws=ws, timeout=timeout, output_log=output,
            before_execute=before_execute)
        if result.leftovers_killed:
            ws.plan.append_note(f"killed {result.leftovers_killed} process(es) the step left running", kind="sandbox")
        check_mcp(handle.spec)           # its MCP server died mid-step: McpError (restarted, then retried)
        if result.exit_code != 0:
            check_serving(handle.spec)   # the run's gateway died under the step: GatewayError
            raise AgentExecutionError(role, argv, result.exit_code, result.stderr)
    except Exception as exc:
        if isinstance(exc, SandboxError):
            handle.broken = True
        if getattr(exc, "leftovers_killed", 0):
            ws.plan.append_note(f"killed {exc.leftovers_killed} process(es) the step left running", kind="sandbox")
        context = TaskRunContext.get()
        attempt = context.task_run.run_count if context else 1
        row = recovery_for(exc)
        raised = handle.raise_limit(exc, attempt <= row.retries) if isinstance(exc, ResourceLimitExceeded) else None
        retried = will_retry(exc, attempt, STEP_ERRORS)
        action = row.action if retried else "no retry"
        ws.plan.append_note(f"step failed: {type(exc).__name__}: {exc} (recovery: {action})", kind="error")
        if raised:
            note(raised)
        elif retried:
            handle.recoveries.append(f"{type(exc).__name__}: {row.action}")
        raise
    finally:
        await egress.stop(following)
    return {"exit_code": result.exit_code, "duration": result.duration, "truncated": result.truncated,
            "leftovers_killed": result.leftovers_killed, "output_bytes": result.output_bytes,
            "log_records": output.records, "output_not_logged": output.dropped}


class EgressLog:
    """A step's gateway requests in the run's log while it runs: read from the gateway's record every
    ``EGRESS_POLL`` seconds, at most ``EGRESS_LINES`` lines a step, then one line with the count left out
    (each is in the run's egress record and summary). Never a header value."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit, self.lines, self.dropped = emit, 0, 0
        self._done = asyncio.Event()

    def take(self, spec) -> None:
        for record in step_requests(spec):
            if self.lines < EGRESS_LINES:
                self.lines += 1
                self.emit(request_line(record))
            else:
                self.dropped += 1

    async def follow(self, spec) -> None:
        while not self._done.is_set():
            await asyncio.to_thread(self.take, spec)
            try:
                await asyncio.wait_for(self._done.wait(), EGRESS_POLL)
            except asyncio.TimeoutError:
                pass
        await asyncio.to_thread(self.take, spec)          # what the step's last moments sent

    async def stop(self, following: asyncio.Future) -> None:
        self._done.set()
        await asyncio.gather(following, return_exceptions=True)
        if self.dropped:
            self.emit(f"[{self.dropped} more gateway requests of this step not logged; they are in the run's egress "
                      f"record and summary]")


@task(name="cleanup-sandbox", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def cleanup_sandbox(handle: SandboxHandle) -> None:
    await asyncio.to_thread(handle.cleanup)
