"""The chaos harness's one seam: ``failpoint(point)`` calls in product paths, off unless ``ULTRAWORK_FAULTS`` is set.

``ULTRAWORK_FAULTS`` holds a JSON list of rules; each fires at a named point
(``step``, ``git:<operation>``, ``stage:<name>``) for an optional role, a
number of ``times``, and does one ``action``:

- ``kill_container``: remove the agent's container from outside (SandboxError path)
- ``agent_fail``: the step fails as if the agent exited 1 (AgentExecutionError)
- ``git_error``: the git operation fails (GitError)
- ``sandbox_error``: the engine reports a failure (SandboxError)
- ``mcp_error``: the MCP server fails (McpError)
- ``kill_process``: SIGKILL the orchestrating process
- ``engine_pause``: stop (SIGSTOP) the local Docker engine for ``seconds``, then continue it

A rule fires on its matching calls number ``after + 1`` to ``after + times``
(``after`` defaults to 0), so "after two agents finished" is ``"after": 1``.

Counts are kept in ``ULTRAWORK_FAULTS_STATE`` (a JSON file) when set, so a
fault that killed a process does not fire again in the resumed one.
With no ``ULTRAWORK_FAULTS`` every call is a no-op.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from pathlib import Path
from typing import Any

from ultrawork.agents.errors import AgentExecutionError
from ultrawork.sandbox.errors import McpError, SandboxError
from ultrawork.settings import settings
from ultrawork.workspace.errors import GitError

_MEMORY: dict[str, int] = {}


def _rules() -> list[dict[str, Any]]:
    raw = settings().faults
    return json.loads(raw) if raw else []


def _take(index: int, times: int, after: int = 0) -> bool:
    """Count one matching call of rule ``index``; True when this call is one that fires."""
    state_file = settings().faults_state
    key = str(index)
    if not state_file:
        _MEMORY[key] = count = _MEMORY.get(key, 0) + 1
        return after < count <= after + times
    path = Path(state_file)
    path.touch(exist_ok=True)
    with open(path, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        text = fh.read()
        state = json.loads(text) if text.strip() else {}
        state[key] = count = state.get(key, 0) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(state))
        fh.flush()
        os.fsync(fh.fileno())
    return after < count <= after + times


def failpoint(point: str, role: str | None = None, **context: Any) -> None:
    """Fire the first matching rule for ``point`` (and ``role``), if any; nothing at all without
    ``ULTRAWORK_FAULTS``. ``kill_container`` calls the ``kill`` the caller passes (the product's
    own removal of its sandbox), so this module needs no engine."""
    if not os.environ.get("ULTRAWORK_FAULTS"):
        return
    for index, rule in enumerate(_rules()):
        if rule.get("at") != point or (rule.get("role") and rule.get("role") != role):
            continue
        if not _take(index, int(rule.get("times", 1)), int(rule.get("after", 0))):
            continue
        action = rule["action"]
        message = f"injected fault at {point}" + (f" ({role})" if role else "")
        if action == "kill_container":
            context["kill"]()
        elif action == "agent_fail":
            raise AgentExecutionError(role or "?", ["<injected>"], 1, message)
        elif action == "git_error":
            raise GitError(["git", point], 128, message)
        elif action == "sandbox_error":
            raise SandboxError(message)
        elif action == "mcp_error":
            raise McpError(message)
        elif action == "kill_process":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "engine_pause":
            pause_engine(float(rule.get("seconds", 10)))
        else:
            raise ValueError(f"unknown fault action {action!r}")
        return


def pause_engine(seconds: float) -> None:
    """SIGSTOP the local dockerd for ``seconds`` (a timer sends SIGCONT); needs the same host and root."""
    import subprocess
    import threading

    pids = [int(p) for p in subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True,
                                           text=True).stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)

    def resume() -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    timer = threading.Timer(seconds, resume)
    timer.daemon = False  # the engine must come back even if the caller finishes first
    timer.start()
