"""One MCP server session over the sandbox engine: what it may touch, and what it leaves behind.

A session is either *unbound* -- its sandboxes carry a private run label
``mcp-<random>``, it sees and acts on only the sandboxes it created, it may not
mount anything of ``$ULTRAWORK_HOME``, and its sandboxes are removed when it
closes -- or *bound* to a run (``ultrawork mcp --run RUN [--role ROLE]``): its
sandboxes are the run's (labelled with it, kept while the session lives and when
it ends), workspaces must lie in the agent's clone, every command is a step in
the agent's Plan.md, and sandboxes of other runs (or, with ``--role``, of other
agents) are refused.

Plain Python without MCP imports: `ultrawork.sandbox.mcp_server` only maps these methods
to tools. Commands go through `ultrawork.sandbox.steps.guarded_execute`, the same hooks the
flows' steps pass.
"""

from __future__ import annotations

import re
import secrets
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

from ultrawork.workspace.superproject import RunSuperproject

from .engine import AGENT_DIR, Sandbox, SandboxEngine
from .errors import McpError, RoleCapabilityError, SandboxError, SandboxPolicyError
from .access import agent_sandbox_spec, role_sandbox
from .policy import RUN_ID_RE, SandboxPolicy, check_mount_source, validate_spec
from .spec import DEFAULT_IMAGE, LABEL_MCP_BOUND, Limits, SandboxSpec, ultrawork_home
from .steps import guarded_execute

OUTPUT_LIMIT = 64 * 1024  # bytes kept per stream (head and tail) -- sized for a model's context
CLOSE_WAIT = 1.5  # seconds close() waits for creates in flight before removing
_ID = re.compile(r"^[0-9a-f]{12,64}$")


# -- typed results (the tools' structured output) ------------------------------------------
class SandboxCreated(BaseModel):
    sandbox_id: str = Field(description="Pass this to the other tools.")
    name: str
    run: str = Field(description="Run label of the sandbox.")
    role: str
    image: str
    workspace: str | None = Field(description="Host directory mounted at /workspace, if any.")
    workspace_mode: Literal["ro", "rw"]
    network: str
    limits: Limits
    removed_on_disconnect: bool = Field(description="True: removed when this MCP session ends; "
                                                    "False: kept, it belongs to the run.")


class Deployed(BaseModel):
    sandbox_id: str
    dest: str = Field(description="Directory inside the sandbox the files were copied to.")
    files: list[str] = Field(description="Paths deployed, relative to dest.")
    entrypoint: str | None = Field(description="Absolute path of the entrypoint inside the sandbox, "
                                               "ready to use as argv[0] (files are executable).")


class Executed(BaseModel):
    sandbox_id: str
    argv: list[str]
    exit_code: int = Field(description="The command's exit code (non-zero is a normal result, not an error).")
    stdout: str
    stderr: str
    duration_s: float
    truncated: bool = Field(description=f"True when stdout or stderr passed {OUTPUT_LIMIT // 1024} KiB: "
                                        "the middle was cut and replaced by a '[... N bytes truncated ...]' marker.")
    plan_step: int | None = Field(description="Number of this step's entry in the agent's Plan.md "
                                              "(None when the server is not bound to a run).")


class Cleaned(BaseModel):
    sandbox_id: str
    removed: bool = Field(description="False when the container was already gone.")


class SandboxEntry(BaseModel):
    sandbox_id: str
    name: str
    run: str
    role: str
    status: str = Field(description="Docker state: running, exited, ...")
    image: str
    age_s: float
    this_session: bool = Field(description="Created by this MCP session.")


class SandboxList(BaseModel):
    run: str = Field(description="The run whose sandboxes are listed.")
    sandboxes: list[SandboxEntry]


# -- the session -----------------------------------------------------------------------------
class McpSession:
    """The sandboxes one MCP server may act on; removes its own on `close` unless bound to a run."""

    def __init__(self, engine: SandboxEngine, run: RunSuperproject | None = None, role: str | None = None):
        self.engine = engine
        self.run = run
        self.role = role
        self.run_id = run.run_id if run is not None else f"mcp-{secrets.token_hex(8)}"
        self.closed = False
        self._own: dict[str, Sandbox] = {}
        self._agents: dict[str, object] = {}
        self._step_locks: dict[str, threading.Lock] = {}
        self._creating = 0
        self._slots: dict[str, object] = {}      # sandbox id -> its slot of the global sandbox cap
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)

    @classmethod
    def open(cls, run_id: str | None = None, role: str | None = None,
             engine: SandboxEngine | None = None) -> "McpSession":
        """A session, bound to ``run_id`` (and ``role``) when given; fails now on an unknown run or agent."""
        if role and not run_id:
            raise SandboxPolicyError("role", "--role needs --run: a role is an agent of a run")
        run = RunSuperproject.open(run_id) if run_id else None
        policy = SandboxPolicy()
        if run is not None and role:     # its agent's own network may be a gateway network the defaults lack
            policy.allowed_networks = sorted({"none", role_sandbox(run_id, role)["network"]})
        session = cls(engine or SandboxEngine(policy, output_limit=OUTPUT_LIMIT), run, role)
        if run is not None and role:
            session._agent(role)
        return session

    @property
    def bound(self) -> bool:
        return self.run is not None

    def describe(self) -> str:
        if not self.bound:
            return (f"Not bound to a run: sandboxes are labelled run {self.run_id} and removed when this "
                    "session ends.")
        who = f"agent {self.role!r} of " if self.role else ""
        return (f"Bound to {who}run {self.run_id!r}: sandboxes belong to the run and are kept when this "
                "session ends; every command is recorded as a step in the agent's Plan.md.")

    # -- tools ---------------------------------------------------------------------------
    def create(self, role: str, workspace: str | None = None, workspace_mode: Literal["ro", "rw"] | None = None,
               image: str | None = None, limits: Limits | None = None, network: str | None = None) -> SandboxCreated:
        self._check_open()
        if self.role and role != self.role:
            raise SandboxPolicyError("role", f"this server acts as agent {self.role!r} of run {self.run_id!r}, "
                                             f"not {role!r}")
        ws = self._agent(role) if self.bound else None
        if workspace is None and ws is not None:
            workspace = str(ws.path)
        path = self._host_path("workspace", workspace, ws) if workspace is not None else None
        policy = self.engine.policy
        if ws is not None:  # the same sandbox an agent of the run gets from the flows, never more
            ceiling = role_sandbox(self.run_id, role)
            workspace_mode, image, network, limits = within_role(role, ceiling, workspace_mode, image, network, limits)
            spec = agent_sandbox_spec(ws, image=image, workspace_mode=workspace_mode, network=network,
                                      limits=limits, exec_timeout=600.0, workspace=path, grant=False)
            spec.env.update(ceiling["env"])
            spec.allow_env = sorted(set(spec.allow_env) | set(ceiling["allow_env"]))
            spec.labels[LABEL_MCP_BOUND] = "true"   # the reaper keeps it while this server lives
            policy = policy.model_copy(update={"allowed_networks": sorted({"none", ceiling["network"]})})
        else:
            workspace_mode, image, network = workspace_mode or "ro", image or DEFAULT_IMAGE, network or "none"
            spec = SandboxSpec(image=image, role=role, run_id=self.run_id, workspace=path,
                               workspace_mode=workspace_mode, limits=limits or Limits(), network=network)
        validate_spec(spec, policy)
        from ultrawork.runtime.caps import SandboxSlot, release
        slot = SandboxSlot.take(f"{self.run_id}/{role}")
        with self._lock:
            self._creating += 1
        sandbox = None
        try:
            sandbox = self.engine.create(spec)
        finally:
            with self._lock:
                self._creating -= 1
                late = sandbox is not None and self.closed and not self.bound
                if sandbox is not None and not late:
                    self._own[sandbox.id] = sandbox
                    self._slots[sandbox.id] = slot
                else:
                    release(slot)
                self._changed.notify_all()
        if late:
            self.engine.cleanup(sandbox)
            raise McpError("the MCP session closed while the sandbox was being created; it was removed")
        if ws is not None:
            ws.plan.append_note(f"MCP session created sandbox {sandbox.name} (image {image}, workspace "
                                f"{workspace_mode}, network {network})", kind="sandbox")
        return SandboxCreated(sandbox_id=sandbox.id, name=sandbox.name, run=self.run_id, role=role, image=image,
                              workspace=str(path) if path else None, workspace_mode=workspace_mode,
                              network=network, limits=spec.limits, removed_on_disconnect=not self.bound)

    def deploy(self, sandbox_id: str, files: dict[str, str] | None = None, directory: str | None = None,
               entrypoint: str | None = None) -> Deployed:
        sandbox, ws = self._resolve(sandbox_id)
        if not files and not directory:
            raise SandboxPolicyError("files", "give files (relative path -> text) and/or a host directory")
        source = self._host_path("directory", directory, ws) if directory else None
        if entrypoint is not None:
            rel = PurePosixPath(entrypoint)
            known = {PurePosixPath(name) for name in files or {}}
            inside = not rel.is_absolute() and ".." not in rel.parts
            if not inside or (rel not in known and not (source is not None and (source / rel).is_file())):
                raise SandboxPolicyError("entrypoint", f"{entrypoint!r} is not one of the deployed files")
        names = self.engine.deploy(sandbox, files=files, directory=source)
        if ws is not None:
            ws.plan.append_note(f"MCP session deployed {len(names)} file(s) to {AGENT_DIR} in {sandbox.name}",
                                kind="sandbox")
        return Deployed(sandbox_id=sandbox.id, dest=AGENT_DIR, files=names,
                        entrypoint=f"{AGENT_DIR}/{PurePosixPath(entrypoint)}" if entrypoint else None)

    def execute(self, sandbox_id: str, argv: list[str], timeout: float | None = None,
                workdir: str | None = None) -> Executed:
        sandbox, ws = self._resolve(sandbox_id)
        with self._step_lock(sandbox.role) if ws is not None else nullcontext():  # one step at a time per Plan.md
            result = guarded_execute(self.engine, sandbox, argv, ws=ws, timeout=timeout, workdir=workdir)
            step = ws.plan.step_count() if ws is not None else None
        return Executed(sandbox_id=sandbox.id, argv=result.argv, exit_code=result.exit_code, stdout=result.stdout,
                        stderr=result.stderr, duration_s=round(result.duration, 3), truncated=result.truncated,
                        plan_step=step)

    def cleanup(self, sandbox_id: str) -> Cleaned:
        sandbox, ws = self._resolve(sandbox_id)
        removed = self.engine.cleanup(sandbox)
        with self._lock:
            self._own.pop(sandbox.id, None)
            slot = self._slots.pop(sandbox.id, None)
        if slot is not None:
            slot.release()
        if ws is not None:
            ws.plan.append_note(f"MCP session removed sandbox {sandbox.name}", kind="sandbox")
        return Cleaned(sandbox_id=sandbox.id, removed=removed)

    def list(self, run: str | None = None) -> SandboxList:
        self._check_open()
        if run is not None and not RUN_ID_RE.fullmatch(run):
            raise SandboxPolicyError("run", f"{run!r} is not a run id")
        if self.bound and run not in (None, self.run_id):
            raise SandboxPolicyError("run", f"this server is bound to run {self.run_id!r}")
        if not self.bound and run not in (None, self.run_id):
            raise SandboxPolicyError("run", "a server not bound to a run lists only the sandboxes it created "
                                            f"(run {self.run_id})")
        run = run or self.run_id
        with self._lock:
            own = set(self._own)
        entries = [SandboxEntry(sandbox_id=i.id, name=i.name, run=i.run_id, role=i.role, status=i.status,
                                image=i.image, age_s=round(i.age, 1), this_session=i.id in own)
                   for i in self.engine.list(run_id=run) if self.bound or i.id in own]
        return SandboxList(run=run, sandboxes=entries)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> list[str]:
        """End the session: unless bound to a run, remove every sandbox it made; return their names.
        Its slots of the global sandbox cap are given back either way (a run's kept sandboxes are the run's)."""
        with self._lock:
            self.closed = True
            slots, self._slots = list(self._slots.values()), {}
            if self.bound:
                for slot in slots:
                    if slot is not None:
                        slot.release()
                return []
            deadline = time.monotonic() + CLOSE_WAIT
            while self._creating and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))
            own, self._own = list(self._own.values()), {}
        removed = []
        try:
            leftovers = [(i.id, i.name) for i in self.engine.list(run_id=self.run_id)]
            for sid, name in [(s.id, s.name) for s in own] + leftovers:
                if self.engine.cleanup(sid):
                    removed.append(name)
        except Exception as exc:  # noqa: BLE001 - shutting down; say so, never raise
            print(f"ultrawork mcp: cleanup of run {self.run_id} failed: {exc} "
                  "('ultrawork sandboxes reap' removes what is left)", file=sys.stderr, flush=True)
        for slot in slots:
            if slot is not None:      # None: taken with no Prefect API, outside the cap
                slot.release()
        return removed

    # -- helpers -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise McpError("this MCP session is closed; restart the server")

    def _agent(self, role: str):
        with self._lock:
            if role not in self._agents:
                self._agents[role] = self.run.agent(role)
            return self._agents[role]

    def _step_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._step_locks.setdefault(key, threading.Lock())

    def _host_path(self, field: str, value: str, ws) -> Path:
        """The pinned host path for a mount or a deploy: it passes the policy's mount-source rule and
        lies in the agent's clone (bound) or outside ``$ULTRAWORK_HOME`` (unbound: runs are not its own)."""
        resolved = check_mount_source(field, Path(value), self.engine.policy)
        if ws is not None:
            clone = ws.path.resolve()
            if resolved != clone and not resolved.is_relative_to(clone):
                raise SandboxPolicyError(field, f"{value} is outside agent {ws.role!r}'s workspace {clone} "
                                                f"(this server is bound to run {self.run_id!r})")
            return resolved
        home = ultrawork_home().expanduser().resolve()
        if resolved == home or resolved.is_relative_to(home) or home.is_relative_to(resolved):
            raise SandboxPolicyError(field, f"{value} is in or holds ultrawork's home {home} (its runs); only a "
                                            "server bound to a run ('ultrawork mcp --run RUN --role ROLE') may "
                                            "mount its agent's workspace")
        return resolved

    def _resolve(self, sandbox_id: str) -> tuple[Sandbox, object | None]:
        """The sandbox behind an id this session may act on, and (bound) its agent workspace."""
        self._check_open()
        sid = sandbox_id.strip().lower()
        if not _ID.match(sid):
            raise SandboxPolicyError("sandbox_id", f"{sandbox_id!r} is not a sandbox id (12-64 hex digits "
                                                   "from create_sandbox or list_sandboxes)")
        with self._lock:
            mine = [s for key, s in self._own.items() if key.startswith(sid)]
        if len(mine) == 1:
            sandbox = mine[0]
        elif not self.bound:
            raise SandboxPolicyError("sandbox_id", f"no sandbox {sid[:12]} in this MCP session (it only acts on "
                                                   "sandboxes it created; see list_sandboxes)")
        else:
            try:
                sandbox = self.engine.attach(sid)
            except SandboxError:
                raise SandboxPolicyError("sandbox_id", f"no sandbox {sid[:12]} exists") from None
            if sandbox.run_id != self.run_id:
                raise SandboxPolicyError("sandbox_id", f"sandbox {sid[:12]} belongs to run {sandbox.run_id!r}; "
                                                       f"this server is bound to run {self.run_id!r}")
            if self.role and sandbox.role != self.role:
                raise SandboxPolicyError("sandbox_id", f"sandbox {sid[:12]} belongs to agent {sandbox.role!r}; "
                                                       f"this server acts as agent {self.role!r}")
        return sandbox, (self._agent(sandbox.role) if self.bound else None)


LIMIT_FIELDS = ("memory_mb", "cpus", "pids", "file_mb", "workspace_mb")


def within_role(role: str, ceiling: dict, workspace_mode: str | None, image: str | None, network: str | None,
                limits: Limits | None) -> tuple[str, str, str, Limits]:
    """What a sandbox of ``role`` may be, from what was asked (None: the role's own); raise
    `RoleCapabilityError` naming the first thing asked beyond the role's recorded sandbox."""
    mode = workspace_mode or ceiling["workspace_mode"]
    if mode == "rw" and ceiling["workspace_mode"] != "rw":
        raise RoleCapabilityError("workspace_mode", f"agent {role!r} mounts its workspace read-only; 'rw' is refused")
    image = image or ceiling["image"]
    if image != ceiling["image"]:
        raise RoleCapabilityError("image", f"agent {role!r} runs image {ceiling['image']!r}, not {image!r}")
    network = network or ceiling["network"]
    if network not in ("none", ceiling["network"]):
        raise RoleCapabilityError("network", f"agent {role!r} may use network 'none'"
                                             + (f" or {ceiling['network']!r}" if ceiling["network"] != "none" else "")
                                             + f", not {network!r}")
    cap: Limits = ceiling["limits"]
    limits = limits or cap
    for name in LIMIT_FIELDS:
        if getattr(limits, name) > getattr(cap, name):
            raise RoleCapabilityError(f"limits.{name}", f"{getattr(limits, name)} is above agent {role!r}'s "
                                                        f"{getattr(cap, name)}")
    return mode, image, network, limits
