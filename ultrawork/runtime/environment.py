"""One agent's environment -- branch, clone, Plan.md, sandbox -- as one object its subflow drives.

Each method is one state of the seed's machine and calls the Prefect tasks that do it
(``tasks.workspaces``, ``tasks.sandboxes``), so the agent flow reads as the machine itself.

One optimisation lives here, out of the flow's way: the sandbox starts as soon as the
agent's clone exists, while the run's superproject (which takes its agents one at a time)
still commits the submodule and Plan.md. If that setup then fails, or is retried and
clones again, the sandbox started ahead is removed and a new one starts on the new clone.

A writer prepared while the research runs (``ultrawork.runtime.prompts``) sets up the same
way, but starts its sandbox ahead only once its run's research agents hold theirs, and only
if a slot of the sandbox cap is free then: a writer waiting for its findings never holds a
slot the research it waits for needs.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ultrawork.agents.outcome import AgentOutcome
from ultrawork.agents.profiles import BUILTIN_AGENT, AgentProfile
from ultrawork.runtime.caps import CapFull, SandboxSlot
from ultrawork.runtime.logs import get_logger
from ultrawork.runtime.prompts import prompt_for_writer, research_seated, seated, waiting, write_in_place
from ultrawork.runtime.together import together
from ultrawork.sandbox.access import INBOX, agent_sandbox_spec
from ultrawork.sandbox.spec import SandboxSpec
from ultrawork.tasks.sandboxes import SandboxHandle, cleanup_sandbox, run_step, start_sandbox
from ultrawork.tasks.workspaces import commit_work, create_workspace, finalize_plan, publish_branch
from ultrawork.workspace.names import agent_branch
from ultrawork.workspace.stages import Stage
from ultrawork.untrusted import bounded, bounded_list, read_agent_file

ERROR_BYTES = 4000          # one error of an agent (it quotes the step's stderr) as its outcome holds it
MAX_REFUSED = 50            # files the commit left out, listed in the outcome
PLAN_READ_BYTES = 1 << 20   # of Plan.md, read for its findings


def plan_excerpt(plan_text: str, limit: int = 1200) -> str:
    """The agent's own findings if it wrote any, else the tail of Plan.md."""
    start = plan_text.find("\n## Findings")
    text = plan_text[start:] if start >= 0 else plan_text[-limit:]
    end = text.find("<!-- ultrawork:", 1)
    return (text[:end] if end > 0 else text).strip()[:limit]


class AgentEnvironment:
    """The branch, clone, Plan.md and sandbox of one agent of one run, and what happened in them."""

    def __init__(self, run_id: str, profile: AgentProfile, prompt: str):
        self.run_id, self.profile, self.role = run_id, profile, profile.role
        self.started = time.time()
        # deploy agent: the prompt and the built-in agent, mounted read-only at /agent when the sandbox starts
        self.files = {"prompt.md": prompt, "builtin_agent.py": BUILTIN_AGENT.read_text()}
        self.ws: Any = None                    # the agent's workspace (clone + Plan.md), once set up
        self.handle: SandboxHandle | None = None
        self.steps: list[list[str]] = []       # what the execute loop runs (none when resumed after commit)
        self.commits: list[str] = []
        self.errors: list[str] = []
        self._ahead: asyncio.Future | None = None   # the sandbox started before the setup finished
        self._granted: Any = None                    # the clone granted before that sandbox started
        self._clones: list = []

    # -- branch -> submodule -> Plan.md ----------------------------------------------------
    async def set_up(self) -> None:
        """Create (or, on resume, reopen) the workspace; the sandbox starts as soon as the clone exists."""
        profile = self.profile
        draft = {"image": profile.image, "workspace_mode": profile.workspace_mode, "network": profile.network,
                 "limits": profile.limits.model_dump(), "exec_timeout": profile.timeout}
        loop = asyncio.get_running_loop()
        cloned: asyncio.Future = loop.create_future()

        def on_cloned(ws) -> None:  # the setup task's worker thread; again on a retry, which re-clones
            self._clones.append(ws)
            loop.call_soon_threadsafe(lambda: cloned.done() or cloned.set_result(ws))

        setup = asyncio.ensure_future(create_workspace(self.run_id, self.role, profile.checklist, draft, on_cloned))
        await asyncio.wait({setup, cloned}, return_when=asyncio.FIRST_COMPLETED)
        try:
            if cloned.done() and not setup.done():
                await self._start_ahead(cloned.result())
            self.ws, new = await setup
            self.ws.file_limit_mb, self.ws.workspace_limit_mb = profile.limits.file_mb, profile.limits.workspace_mb
            spec = await asyncio.to_thread(self._prepare, new)
        except BaseException:      # the setup failed (or was cancelled): no sandbox outlives it
            await asyncio.shield(self.remove_sandbox())
            raise
        if self.handle is not None and len(self._clones) > 1:   # retried and cloned again: the sandbox
            await asyncio.shield(self.remove_sandbox())           # started ahead has the first clone mounted
            self.handle = None
            get_logger().info("%s: setup was retried after its sandbox started; that sandbox is removed, "
                              "a new one starts on the new clone", self.role)
        if self.handle is None:
            self.handle = SandboxHandle(spec)
        if not self.steps:
            get_logger().info("%s: work was committed by an earlier attempt; finalizing it", self.role)

    def _spec(self, ws, *, grant: bool = True) -> SandboxSpec:
        """The sandbox's spec; with ``grant``, gives the sandbox user its Plan.md folder (and a rw work
        tree) first -- once per clone, before any sandbox on that clone runs anything."""
        p = self.profile
        return agent_sandbox_spec(ws, image=p.image, workspace_mode=p.workspace_mode, network=p.network,
                                  limits=p.limits, exec_timeout=p.timeout, agent_files=self.files, grant=grant)

    async def _start_ahead(self, ws) -> None:
        slot = None
        if waiting(self.run_id, self.role):          # prepared during the research: once the research is
            await research_seated(self.run_id)       # seated, and only with a slot free at once
            try:
                slot = await asyncio.to_thread(SandboxSlot.take, f"{self.run_id}/{self.role}", False)
            except CapFull:
                get_logger().info("%s: no sandbox slot free while the research runs; its sandbox starts "
                                  "when its prompt arrives", self.role)
                return
        try:
            spec = await asyncio.to_thread(self._spec, ws)
        except OSError:            # that clone is already being discarded by a failed setup
            if slot is not None:
                slot.release()
            return
        self._granted = ws
        self.handle = SandboxHandle(spec)
        self.handle.slot = slot
        self._ahead = asyncio.ensure_future(start_sandbox(self.handle))

    async def prompt_arrives(self) -> None:
        """A writer prepared during the research: its prompt (the findings) replaces the placeholder
        in the file its sandbox has mounted, before its first step."""
        prompt = await prompt_for_writer(self.run_id, self.role)
        if prompt is None:
            return
        self.started = time.time()      # its time counts from its prompt, as a writer's always did
        self.files["prompt.md"] = prompt
        if self.ws is not None:
            inbox = self.ws.run.path / INBOX / self.ws.role / "prompt.md"
            await asyncio.to_thread(write_in_place, inbox, prompt)

    def _prepare(self, new: bool) -> SandboxSpec:
        """What is left to do (git and file work, off the event loop the sibling agents share)."""
        if not new and not os.path.lexists(self.ws.path / ".git"):   # its disk cap was released (the run
            self.ws.reset_worktree()                                    # stopped): the branch checked out again
        if not new and self.ws.reached(Stage.CHANGES_COMMITTED):     # resumed: the work is in
            self.commits = [c.sha for c in self.ws.commits()]
        else:
            if not new and not self._continues_conversation():         # resumed: drop a partial attempt
                self.ws.reset_worktree()
            self.steps = [self.profile.argv(self.run_id)]
        # the clone the sandbox started ahead on was granted before that sandbox started (and Plan.md
        # is created agent-writable): no grant runs while a sandbox has it mounted
        return self._spec(self.ws, grant=self._granted is not self.ws or not new)

    def _continues_conversation(self) -> bool:
        """A model agent whose saved conversation goes on keeps the work tree that conversation made."""
        from ultrawork.model_agent.journal import ConversationJournal

        return self.profile.agent == "model" and ConversationJournal(self.ws.state_dir).in_progress(1) is not None

    # -- sandbox -> deploy agent -> execute loop ------------------------------------------
    async def start_sandbox(self) -> None:
        try:
            if self._ahead is not None:
                await self._ahead
            elif self.steps:
                await start_sandbox(self.handle)
        finally:
            seated(self.run_id, self.role)      # a research agent: the writers may take free slots now

    async def run_step(self, argv: list[str]) -> dict:
        return await run_step(self.handle, self.ws, argv, self.profile.timeout)

    def step_failed(self, exc: BaseException) -> None:
        """A step failed past its retries: the agent's outcome, never its siblings'."""
        self.errors.append(bounded(f"{type(exc).__name__}: {exc}", ERROR_BYTES))
        get_logger().error("%s agent failed: %s", self.role, self.errors[-1])

    async def remove_sandbox(self) -> None:
        """Cleanup: the sandbox and every one of its processes are gone (idempotent)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await asyncio.gather(ahead, return_exceptions=True)
        if self.handle is not None and self.handle.sandbox is not None:
            await cleanup_sandbox(self.handle)

    # -- commit -> finalize --------------------------------------------------------------
    async def commit(self) -> None:
        """Commit what the agent left on its branch (host-side, after the sandbox is gone)."""
        if not self.steps:
            return
        try:
            self.commits = await commit_work(self.ws)                    # nothing an agent did is lost
        except Exception as exc:  # noqa: BLE001 - e.g. the workspace outgrew its cap: the agent's outcome
            self.errors.append(bounded(f"{type(exc).__name__}: {exc}", ERROR_BYTES))
            get_logger().error("%s: its work was not committed: %s", self.role, self.errors[-1])
        self.errors += bounded_list(self.ws.refused, MAX_REFUSED)      # what the commit left out

    async def finalize(self) -> AgentOutcome:
        """The final Plan.md section and the branch in the target repository, then the outcome.

        Both read the committed branch; neither writes what the other reads."""
        status = "failed" if self.errors else "succeeded"
        handle = self.handle
        recoveries = list(handle.recoveries)
        _, published = await together(finalize_plan(self.ws, status, self.errors, recoveries),
                                      publish_branch(self.run_id, self.role))
        outcome = AgentOutcome(
            role=self.role, status=status, branch=self.ws.branch, commits=self.commits,
            files_changed=published["files"], insertions=published["insertions"], deletions=published["deletions"],
            duration=time.time() - self.started, steps=len(self.steps),
            retries=max(0, handle.attempts - len(self.steps)),
            sandboxes_created=handle.created, errors=self.errors, recoveries=recoveries,
            plan_path=str(self.ws.plan_path), plan_summary=plan_excerpt(await asyncio.to_thread(self._plan_text)),
            started_at=self.started, ended_at=time.time(),
            setup_seconds=round(handle.first_command_at - self.started, 3) if handle.first_command_at else None)
        get_logger().info("%s agent %s: %d commit(s) on %s (%s)", self.role, status, len(self.commits),
                          self.ws.branch, published["sha"][:12])
        return outcome

    def _plan_text(self) -> str:
        """The agent's Plan.md, read up to a cap (its findings are excerpted from it)."""
        plan = read_agent_file(self.ws.plan_path, PLAN_READ_BYTES)
        return "" if plan is None else plan.text

    def failed_outright(self, exc: BaseException) -> AgentOutcome:
        """Whatever broke outside the steps (setup, a git error past its retries): the agent's outcome."""
        error = f"{type(exc).__name__}: {str(exc)[:1000]}"
        get_logger().error("%s agent failed outside its steps: %s", self.role, error)
        return AgentOutcome(role=self.role, status="failed", branch=agent_branch(self.run_id, self.role),
                            errors=[error], duration=time.time() - self.started, started_at=self.started,
                            ended_at=time.time())
