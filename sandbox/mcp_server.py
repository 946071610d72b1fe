"""The MCP server: the five sandbox tools over stdio, for OpenCode, Claude Code or any MCP client.

A thin adapter: each tool maps its typed arguments to one `McpSession` method
(run in a worker thread) and returns that method's typed result as structured
output. Typed ultrawork errors -- policy rejections, unknown sandboxes,
timeouts, limits, refused commands -- come back as MCP tool errors; the server
stays up. Started by ``ultrawork mcp [--run RUN_ID] [--role ROLE]``; see
``docs/mcp.md`` for registering it with a client.

Cleanup: when the client disconnects (stdin EOF) or the server gets SIGTERM,
SIGINT or SIGHUP, the sandboxes this server created are removed -- unless it is
bound to a run, which owns them. Calls still running are abandoned, not awaited,
so removal is prompt. A server killed with SIGKILL leaves its sandboxes to
``ultrawork sandboxes reap`` (their owner process is gone).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from typing import Annotated, Any, Callable, Literal

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from ultrawork.workspace.errors import SafetyViolation, UltraworkError

from .errors import ContainerGone, EngineUnavailable, ResourceLimitExceeded, SandboxPolicyError, SandboxTimeout
from .mcp_session import Cleaned, Deployed, Executed, McpSession, SandboxCreated, SandboxList
from .spec import Limits

SERVER_NAME = "ultrawork-sandbox"

INSTRUCTIONS = """\
Hardened Docker sandboxes for running commands: no network unless asked for, no capabilities, a read-only
root file system, a non-root user, memory/CPU/process limits. Typical use: create_sandbox (optionally
mounting a host workspace at /workspace), deploy_agent_to_sandbox (files into /agent), then
execute_in_sandbox as often as needed, and cleanup_sandbox when done. Every command passes the
container-safety enforcer first (spec policy and a deny list: no network tools, no git push, no docker,
no sudo...). Commands are argument lists, never shell strings: wrap in ["sh", "-c", "..."] when you need
a shell. {session}"""

# What the model should do next, by error kind (the recovery table, in words).
HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (SandboxPolicyError, "fix the named argument and call again"),
    (SandboxTimeout, "the command was killed; pass a larger timeout or split the work"),
    (ResourceLimitExceeded, "create a sandbox with higher limits, or make the command use less"),
    (ContainerGone, "the sandbox is gone; create a new one"),
    (EngineUnavailable, "the Docker engine is down; nothing was created"),
    (SafetyViolation, "a safety hook refused or stopped the step; do not retry it unchanged"),
)


def explain(exc: BaseException) -> str:
    """A tool-error message a model can act on: the error kind, what happened, what to do."""
    hint = next((h for kind, h in HINTS if isinstance(exc, kind)), "")
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SandboxTimeout):
        for name, tail in (("stdout", exc.stdout[-2000:]), ("stderr", exc.stderr[-2000:])):
            text += f"\n--- {name} before the kill (tail) ---\n{tail}" if tail.strip() else ""
    return f"{text}\n(what to do: {hint})" if hint else text


def _nul_argument(name: str, value: Any) -> str | None:
    """The argument (``name``, ``name['key']``, ``name[i]``) holding a NUL byte, if any."""
    if isinstance(value, str):
        return name if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{name}[{key!r}]"
            found = _nul_argument(where, key) or _nul_argument(where, item)
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _nul_argument(f"{name}[{i}]", item)
            if found:
                return found
    return None


async def _call(method: Callable[..., Any], **kwargs: Any) -> Any:
    """Run a blocking session method in a worker thread; typed errors become tool errors.

    An argument with a NUL byte (no path, name or command can hold one) is refused by name
    first. The thread is abandoned if the call is cancelled (client gone), so shutdown and
    cleanup never wait for a long command.
    """
    for name, value in kwargs.items():
        where = _nul_argument(name, value)
        if where:
            raise ToolError(explain(SandboxPolicyError(where, "contains a NUL byte, which no path, name or "
                                                              "command argument may hold")))
    try:
        return await anyio.to_thread.run_sync(functools.partial(method, **kwargs), abandon_on_cancel=True)
    except UltraworkError as exc:
        raise ToolError(explain(exc)) from exc
    except Exception as exc:  # docker/requests errors the engine did not type
        if type(exc).__module__.split(".")[0] in ("docker", "requests", "urllib3"):
            raise ToolError(f"Docker engine error: {type(exc).__name__}: {exc}") from exc
        raise


SandboxId = Annotated[str, Field(description="The sandbox_id create_sandbox returned (or list_sandboxes shows).")]


def build_server(session: McpSession) -> MCPServer:
    """The MCP server with the five tools bound to ``session``."""
    mcp = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS.format(session=session.describe()), version="0.1.0",
                    log_level="WARNING")

    @mcp.tool(annotations=ToolAnnotations(title="Create a sandbox", destructive_hint=False, open_world_hint=False))
    async def create_sandbox(
        role: Annotated[str, Field(description="Agent role the sandbox is for: lower case letters, digits, '-' or "
                                               "'_', e.g. 'explore', 'frontend'. Labels the container; when the "
                                               "server is bound to a role it must be that role.")],
        workspace: Annotated[str | None, Field(description="Absolute host path mounted at /workspace (the "
                                               "container's working directory). It must lie under the allowed "
                                               "workspace roots; when bound to a run, inside the agent's clone, "
                                               "which is also the default. Omit for no workspace.")] = None,
        workspace_mode: Annotated[Literal["ro", "rw"] | None, Field(description="Mount the workspace read-only "
                                                                    "('ro') or writable ('rw'). Default: 'ro', or "
                                                                    "when bound to an agent, its role's own; a "
                                                                    "read-only role is refused 'rw'.")] = None,
        image: Annotated[str | None, Field(description="Image with python3, git, user 1000 and /workspace. "
                                                       "Default: the sandbox image, or the agent's own when "
                                                       "bound; a bound agent may use no other.")] = None,
        limits: Annotated[Limits | None, Field(description="Resource limits (memory_mb, cpus, pids); defaults "
                                               "512 MiB, 1 CPU, 256 processes, or the agent's own when bound, "
                                               "which none may exceed.")] = None,
        network: Annotated[str | None, Field(description="'none' (default, offline), or when bound to an agent "
                                             "its own network (its egress gateway's); 'bridge' only when not "
                                             "bound and the policy allows it.")] = None,
    ) -> SandboxCreated:
        """Start a hardened, offline sandbox container and return its sandbox_id.

        The spec is checked against the safety policy before anything is created; a rejection names the
        argument to fix. Each sandbox is isolated: nothing runs as root, the root file system is
        read-only (/tmp, $HOME, /agent and a 'rw' workspace are writable).
        """
        return await _call(session.create, role=role, workspace=workspace, workspace_mode=workspace_mode,
                           image=image, limits=limits, network=network)

    @mcp.tool(annotations=ToolAnnotations(title="Deploy files into a sandbox", destructive_hint=False,
                                          idempotent_hint=True, open_world_hint=False))
    async def deploy_agent_to_sandbox(
        sandbox_id: SandboxId,
        files: Annotated[dict[str, str] | None, Field(description="Files to write, relative path -> text "
                                                      "content, e.g. {'run.py': 'print(1)'}. Written under "
                                                      "/agent, executable, owned by the sandbox user.")] = None,
        directory: Annotated[str | None, Field(description="Absolute host directory whose files are copied "
                                               "into /agent (same roots rule as a workspace).")] = None,
        entrypoint: Annotated[str | None, Field(description="Relative path of the program to run among the "
                                                "deployed files; returned as an absolute path for argv[0].")]
        = None,
    ) -> Deployed:
        """Copy an agent's files (and/or a host directory) into /agent inside the sandbox.

        Give at least one of files or directory. Existing files with the same path are replaced.
        """
        return await _call(session.deploy, sandbox_id=sandbox_id, files=files, directory=directory,
                           entrypoint=entrypoint)

    @mcp.tool(annotations=ToolAnnotations(title="Run a command in a sandbox", destructive_hint=True,
                                          open_world_hint=False))
    async def execute_in_sandbox(
        sandbox_id: SandboxId,
        argv: Annotated[list[str], Field(min_length=1, description="The command as a list of strings, e.g. "
                                         "['python3', '/agent/run.py'] or ['sh', '-c', 'ls | wc -l']. "
                                         "Never a single shell string.")],
        timeout: Annotated[float | None, Field(gt=0, description="Seconds before the command and all its "
                                               "children are killed (default 600).")] = None,
        workdir: Annotated[str | None, Field(description="Absolute working directory inside the sandbox "
                                             "(default /workspace, or $HOME without a workspace).")] = None,
    ) -> Executed:
        """Run one command inside the sandbox and return its exit code, stdout, stderr and duration.

        Safety hooks run around it: the command is refused before it starts if the deny list or the
        sandbox policy rejects it; when the server is bound to a run, the isolation checker runs after it
        and the step is recorded in the agent's Plan.md. A non-zero exit code is a normal result. Output
        is bounded per stream: past the limit its middle is replaced by a '[... N bytes truncated ...]'
        marker and truncated is true. Running past the timeout, or past a resource limit, is a tool error.
        """
        return await _call(session.execute, sandbox_id=sandbox_id, argv=argv, timeout=timeout, workdir=workdir)

    @mcp.tool(annotations=ToolAnnotations(title="Remove a sandbox", destructive_hint=True, idempotent_hint=True,
                                          open_world_hint=False))
    async def cleanup_sandbox(sandbox_id: SandboxId) -> Cleaned:
        """Stop and remove the sandbox container and its scratch volumes. Its workspace files on the host stay."""
        return await _call(session.cleanup, sandbox_id=sandbox_id)

    @mcp.tool(annotations=ToolAnnotations(title="List sandboxes", read_only_hint=True, open_world_hint=False))
    async def list_sandboxes(
        run: Annotated[str | None, Field(description="Run label to list; default: this session's run (the bound "
                                         "run, or this session's own label). A bound server lists only its "
                                         "run.")] = None,
    ) -> SandboxList:
        """List the sandboxes of a run with their status, role, image and age; this_session marks the ones
        this server created (it can act on those, and, when bound, on all of its run's)."""
        return await _call(session.list, run=run)

    return mcp


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def serve(run_id: str | None = None, role: str | None = None) -> None:
    """Serve the tools on stdin/stdout until the client disconnects or a signal arrives; then clean up."""
    session = McpSession.open(run_id, role)
    server = build_server(session)

    def stop(signum: int, _frame: Any) -> None:
        session.close()
        _exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        server.run("stdio")
    finally:
        session.close()
    if threading.active_count() > 1:  # abandoned calls' threads must not keep the process alive
        _exit(0)
