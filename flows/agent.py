"""One agent's subflow, in the order of the seed's state machine.

branch -> submodule -> Plan.md -> sandbox -> deploy agent -> execute loop
-> commit -> finalize Plan.md -> cleanup (always).

A failing agent never raises into the orchestrator: whatever fails inside it
(a step, its setup, a git error past its retries, a workspace over its cap)
ends as a Failed state that carries its :class:`AgentOutcome`, so its siblings
go on and the review sees what happened. The sandbox is removed -- every one
of its processes gone -- before the host reads or commits the work tree.
"""

from __future__ import annotations

import asyncio
import time

from prefect import flow
from prefect.states import Completed, Failed

from ultrawork.agents.outcome import AgentOutcome
from ultrawork.agents.profiles import BUILTIN_AGENT, AgentProfile
from ultrawork.sandbox.access import agent_sandbox_spec
from ultrawork.runtime.logs import get_logger
from ultrawork.tasks.sandboxes import SandboxHandle, cleanup_sandbox, run_step, start_sandbox
from ultrawork.runtime.together import together
from ultrawork.tasks.workspaces import commit_work, create_workspace, finalize_plan, publish_branch
from ultrawork.workspace.names import agent_branch


def plan_excerpt(plan_text: str, limit: int = 1200) -> str:
    """The agent's own findings if it wrote any, else the tail of Plan.md."""
    start = plan_text.find("\n## Findings")
    text = plan_text[start:] if start >= 0 else plan_text[-limit:]
    end = text.find("<!-- ultrawork:", 1)
    return (text[:end] if end > 0 else text).strip()[:limit]


@flow(name="agent", flow_run_name="{profile.role}", validate_parameters=False)
async def agent(run_id: str, profile: AgentProfile, prompt: str):
    log = get_logger()
    role, started = profile.role, time.time()
    try:
        return await _run_agent(run_id, profile, prompt, started)
    except Exception as exc:  # noqa: BLE001 - whatever broke in this agent is its outcome, never its siblings'
        error = f"{type(exc).__name__}: {str(exc)[:1000]}"
        log.error("%s agent failed outside its steps: %s", role, error)
        outcome = AgentOutcome(role=role, status="failed", branch=agent_branch(run_id, role), errors=[error],
                               duration=time.time() - started, started_at=started, ended_at=time.time())
        return Failed(message=f"{role} agent failed: {error[:300]}", data=outcome)


async def _run_agent(run_id: str, profile: AgentProfile, prompt: str, started: float):
    log = get_logger()
    role = profile.role
    draft = {"image": profile.image, "workspace_mode": profile.workspace_mode, "network": profile.network,
             "limits": profile.limits.model_dump(), "exec_timeout": profile.timeout}
    # deploy agent: the prompt and the built-in agent, mounted read-only at /agent when the sandbox starts
    files = {"prompt.md": prompt, "builtin_agent.py": BUILTIN_AGENT.read_text()}

    def sandbox_spec(ws):  # grants the sandbox user its Plan.md folder (and a rw work tree)
        ws.plan_path.parent.mkdir(parents=True, exist_ok=True)
        return agent_sandbox_spec(ws, image=profile.image, workspace_mode=profile.workspace_mode,
                                  network=profile.network, limits=profile.limits, exec_timeout=profile.timeout,
                                  agent_files=files)

    # branch, submodule, Plan.md -- and the sandbox starts as soon as the clone exists, while the
    # submodule and Plan.md are committed (the run's superproject takes its agents one at a time)
    loop = asyncio.get_running_loop()
    cloned: asyncio.Future = loop.create_future()
    clones: list = []

    def on_cloned(ws) -> None:  # the setup task's worker thread
        clones.append(ws)
        loop.call_soon_threadsafe(lambda: cloned.done() or cloned.set_result(ws))

    setup = asyncio.ensure_future(create_workspace(run_id, role, profile.checklist, draft, on_cloned))
    handle: SandboxHandle | None = None
    early: asyncio.Future | None = None
    await asyncio.wait({setup, cloned}, return_when=asyncio.FIRST_COMPLETED)
    try:
        if cloned.done() and not setup.done():
            try:
                early_spec = await asyncio.to_thread(sandbox_spec, cloned.result())
            except OSError:  # that clone is already being discarded by a failed setup
                early_spec = None
            if early_spec is not None:
                handle = SandboxHandle(early_spec)
                early = asyncio.ensure_future(start_sandbox(handle))
        ws, new = await setup
    except BaseException:
        if handle is not None:   # the setup failed (or was cancelled): no sandbox outlives it
            await asyncio.shield(_discard_early(early, handle))
        raise
    ws.file_limit_mb, ws.workspace_limit_mb = profile.limits.file_mb, profile.limits.workspace_mb

    def prepare():  # git and file work, off the event loop the sibling agents share
        steps, commits = [profile.argv(run_id)], []
        if not new and any(s.startswith("changes committed") for s in ws.stages()):  # resumed: the work is in
            steps, commits = [], [c.sha for c in ws.commits()]
        elif not new:                                                    # resumed: drop a partial attempt
            ws.reset_worktree()
        return steps, commits, sandbox_spec(ws)                          # again: Plan.md exists now

    try:
        steps, commits, spec = await asyncio.to_thread(prepare)
    except BaseException:
        if handle is not None:
            await asyncio.shield(_discard_early(early, handle))
        raise
    if handle is not None and len(clones) > 1:   # setup was retried and cloned again: that sandbox
        await asyncio.shield(_discard_early(early, handle))             # has the first clone mounted
        handle, early = None, None
        log.info("%s: setup was retried after its sandbox started; that sandbox is removed, "
                 "a new one starts on the new clone", role)
    if handle is None:
        handle = SandboxHandle(spec)
    if not steps:
        log.info("%s: work was committed by an earlier attempt; finalizing it", role)
    errors: list[str] = []
    try:
        if early is not None:
            await early                                                  # sandbox + deploy agent
        elif steps:
            await start_sandbox(handle)
        for argv in steps:                                              # execute loop
            await run_step(handle, ws, argv, profile.timeout)
    except Exception as exc:  # noqa: BLE001 - recorded, reviewed, never fatal to siblings
        errors.append(f"{type(exc).__name__}: {exc}")
        log.error("%s agent failed: %s", role, errors[-1])
    finally:
        # every process of the sandbox is gone before the host reads or commits its work tree
        await asyncio.shield(cleanup_sandbox(handle))
    try:
        if steps:
            commits = await commit_work(ws)                             # nothing an agent did is lost
    except Exception as exc:  # noqa: BLE001 - e.g. the workspace outgrew its cap: the agent's outcome
        errors.append(f"{type(exc).__name__}: {exc}")
        log.error("%s: its work was not committed: %s", role, errors[-1])
    errors += ws.refused                                                # what the commit left out
    status = "failed" if errors else "succeeded"
    # the final Plan.md section and the branch in the target repository: both read the
    # committed branch, neither writes what the other reads
    _, published = await together(finalize_plan(ws, status, errors, handle.recoveries),
                                  publish_branch(run_id, role))
    outcome = AgentOutcome(
        role=role, status=status, branch=ws.branch, commits=commits, files_changed=published["files"],
        insertions=published["insertions"], deletions=published["deletions"],
        duration=time.time() - started, steps=len(steps),
        retries=max(0, handle.attempts - len(steps)),
        sandboxes_created=handle.created, errors=errors, recoveries=handle.recoveries,
        plan_path=str(ws.plan_path), plan_summary=plan_excerpt(await asyncio.to_thread(ws.plan.text)),
        started_at=started, ended_at=time.time(),
    )
    log.info("%s agent %s: %d commit(s) on %s (%s)", role, status, len(commits), ws.branch, published["sha"][:12])
    if errors:
        return Failed(message=f"{role} agent failed: {errors[-1][:300]}", data=outcome)
    return Completed(message=f"{role} agent succeeded", data=outcome)


async def _discard_early(early: asyncio.Future | None, handle: SandboxHandle) -> None:
    """Remove a sandbox started ahead of a setup that then failed or re-cloned."""
    if early is not None:
        await asyncio.gather(early, return_exceptions=True)
    await cleanup_sandbox(handle)
