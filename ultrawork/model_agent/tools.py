"""The model agent's tools: every one is a command inside the agent's sandbox.

The loop runs on the host; what the model asks for runs in the sandbox through
a `SandboxTools` (``run(argv, timeout) -> (exit_code, stdout, stderr)``), so the
sandbox's limits, mounts and hooks apply to the model's actions exactly as to
any agent's. `GuardedSandboxTools` runs each one through
`ultrawork.sandbox.steps.guarded_execute` (deny list, policy, resource monitor, one Plan.md
step entry). File work is done by `in_sandbox.py`, mounted read-only at
``/agent/model_tools.py``; content crosses as base64 argv parts (at most
`MAX_CONTENT_BYTES` per call), never through a shell. What goes back to the
model is cut to `MAX_RESULT_CHARS` (head and tail).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from pydantic_ai import RunContext, Tool

HELPER_NAME = "model_tools.py"
HELPER_PATH = f"/agent/{HELPER_NAME}"
# Pass these as ``agent_files`` to `ultrawork.sandbox.access.agent_sandbox_spec` for a model agent's sandbox.
SANDBOX_FILES = {HELPER_NAME: (Path(__file__).parent / "in_sandbox.py").read_text()}

MAX_CONTENT_BYTES = 128 * 1024      # one write_file / apply_patch / write_findings call (write larger files in parts)
ARG_PART_CHARS = 64 * 1024          # base64 per argument (Linux caps one argument at 128 KiB)
MAX_RESULT_CHARS = 16_000           # returned to the model: the first 4,000 and the last 12,000 characters
_HEAD_CHARS = 4_000
MAX_READ_LINES = 400
MAX_LIST_ENTRIES = 500
MAX_SEARCH_HITS = 200


class SandboxTools(Protocol):
    """Runs one command in the agent's sandbox: ``argv`` as a list (no shell), for at most ``timeout``
    seconds (None: the implementation's own bound). The sandbox must hold `SANDBOX_FILES` under /agent."""

    def run(self, argv: Sequence[str], timeout: float | None) -> tuple[int, str, str]: ...


class GuardedSandboxTools:
    """`SandboxTools` over a live sandbox: each command is one guarded step recorded in the agent's Plan.md.

    A refused command, a timeout and a hit resource limit come back as a failed result the
    model sees (and Plan.md records); an isolation breach (`SafetyViolation`) or a dead
    sandbox (`SandboxError`) stops the agent and reaches the caller unchanged.
    """

    def __init__(self, engine, sandbox, ws=None, timeout: float = 120.0) -> None:
        from .errors import ModelConfigError

        targets = {m.target for m in sandbox.spec.mounts}
        if HELPER_PATH not in targets:
            raise ModelConfigError(f"sandbox {sandbox.name} has no {HELPER_PATH}: build its spec with "
                                   "agent_files=model_agent.SANDBOX_FILES")
        self.engine, self.sandbox, self.ws, self.timeout = engine, sandbox, ws, float(timeout)

    def run(self, argv: Sequence[str], timeout: float | None) -> tuple[int, str, str]:
        from ultrawork.sandbox.errors import ResourceLimitExceeded, SandboxTimeout
        from ultrawork.sandbox.steps import guarded_execute
        from ultrawork.workspace.errors import CommandDeniedError

        seconds = self.timeout if timeout is None else max(1.0, min(self.timeout, timeout))
        try:
            result = guarded_execute(self.engine, self.sandbox, list(argv), ws=self.ws, timeout=seconds,
                                     shown=readable(argv))
        except CommandDeniedError as exc:
            return -1, "", f"refused before it ran by the sandbox's safety policy: {exc}"
        except SandboxTimeout as exc:
            return -1, exc.stdout, f"{exc.stderr}\n[killed: ran past its {seconds:g}s timeout]".lstrip()
        except ResourceLimitExceeded as exc:
            return -1, "", f"[stopped: {exc}]"
        return result.exit_code, result.stdout, result.stderr


# where the base64 parts of a file-tool command begin: write PATH MODE PARTS..., patch PARTS..., findings PARTS...
_CONTENT_AT = {"write": 5, "patch": 3, "findings": 3}
EXCERPT_CHARS = 200


def readable(argv: Sequence[str]) -> list[str] | None:
    """A file-tool command as Plan.md shows it: the content it carries as a short excerpt, not base64."""
    argv = list(argv)
    start = _CONTENT_AT.get(argv[2]) if len(argv) > 2 and argv[:2] == ["python3", HELPER_PATH] else None
    if start is None or len(argv) < start:
        return None
    try:
        data = base64.b64decode("".join(argv[start:]), validate=True)
    except ValueError:
        return None
    text = data.decode("utf-8", "replace")
    excerpt = text[:EXCERPT_CHARS] + ("..." if len(text) > EXCERPT_CHARS else "")
    return argv[:start] + [f"<{len(data)} bytes: {excerpt!r}>"]


def bounded(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """``text`` cut to its head and tail, saying how much was left out."""
    if len(text) <= limit:
        return text
    tail = limit - _HEAD_CHARS
    return f"{text[:_HEAD_CHARS]}\n[... {len(text) - limit} characters left out ...]\n{text[-tail:]}"


@dataclass
class ToolDeps:
    """What the tools of one run share: the sandbox, the run's deadline and the findings written."""

    tools: SandboxTools
    role: str
    writable: bool
    deadline: float | None = None            # time.monotonic() when the run's max_seconds is up
    findings: list[str] = field(default_factory=list)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


def _run(deps: ToolDeps, argv: list[str]) -> tuple[int, str, str]:
    remaining = deps.remaining()
    if remaining is not None and remaining <= 0:
        return -1, "", "[not run: the agent's time budget is used up]"
    return deps.tools.run(argv, remaining)


def _helper(deps: ToolDeps, *args: str) -> tuple[bool, str]:
    code, out, err = _run(deps, ["python3", HELPER_PATH, *args])
    if code == 0:
        return True, bounded(out)
    return False, bounded(f"error (exit code {code}): {err.strip() or out.strip() or 'no output'}")


def _parts(text: str) -> list[str] | str:
    data = text.encode("utf-8")
    if len(data) > MAX_CONTENT_BYTES:
        return (f"error: {len(data)} bytes is over the {MAX_CONTENT_BYTES}-byte limit of one call; "
                "send it in parts (write_file with append=true)")
    encoded = base64.b64encode(data).decode("ascii")
    return [encoded[i:i + ARG_PART_CHARS] for i in range(0, len(encoded), ARG_PART_CHARS)] or [""]


def list_files(ctx: RunContext[ToolDeps], path: str = ".") -> str:
    """List the files and folders under a path of the workspace (recursive, .git left out).

    Args:
        path: Folder, relative to /workspace or absolute.
    """
    return _helper(ctx.deps, "list", path, str(MAX_LIST_ENTRIES))[1]


def read_file(ctx: RunContext[ToolDeps], path: str, start: int = 1, end: int | None = None) -> str:
    """Read lines of a text file, numbered (a tab separates the number from the line).

    Args:
        path: File, relative to /workspace or absolute.
        start: First line (1-based).
        end: Last line (inclusive); at most 400 lines are returned per call.
    """
    start = max(1, start)
    end = start + MAX_READ_LINES - 1 if end is None else min(end, start + MAX_READ_LINES - 1)
    return _helper(ctx.deps, "read", path, str(start), str(end))[1]


def search(ctx: RunContext[ToolDeps], pattern: str, path: str = ".") -> str:
    """Search text files for a Python regular expression; prints path:line: text for each match.

    Args:
        pattern: Python regular expression.
        path: File or folder to search, relative to /workspace or absolute.
    """
    return _helper(ctx.deps, "search", pattern, path, str(MAX_SEARCH_HITS))[1]


def run_command(ctx: RunContext[ToolDeps], argv: list[str]) -> str:
    """Run a program in the sandbox (working directory /workspace, no network).

    Args:
        argv: Program and arguments as a list, e.g. ["python3", "-m", "pytest", "-q"]; no shell
            unless you run one yourself (["sh", "-c", "..."]).
    """
    if not argv or not argv[0]:
        return "error: argv must be a non-empty list of strings, the program first"
    code, out, err = _run(ctx.deps, list(argv))
    return bounded(f"exit code: {code}\n--- stdout ---\n{out}\n--- stderr ---\n{err}")


def write_file(ctx: RunContext[ToolDeps], path: str, content: str, append: bool = False) -> str:
    """Write a text file in the workspace (creating folders), replacing it or appending to it.

    Args:
        path: File, relative to /workspace or absolute.
        content: The text to write (at most 128 KiB per call).
        append: Append to the file instead of replacing it.
    """
    parts = _parts(content)
    if isinstance(parts, str):
        return parts
    return _helper(ctx.deps, "write", path, "append" if append else "replace", *parts)[1]


def apply_patch(ctx: RunContext[ToolDeps], unified_diff: str) -> str:
    """Apply a unified diff (as `git diff` prints it, paths a/... b/... relative to /workspace).

    Args:
        unified_diff: The patch text (at most 128 KiB).
    """
    parts = _parts(unified_diff if unified_diff.endswith("\n") else unified_diff + "\n")
    if isinstance(parts, str):
        return parts
    return _helper(ctx.deps, "patch", *parts)[1]


def write_findings(ctx: RunContext[ToolDeps], markdown: str) -> str:
    """Append findings (markdown) to the agent's Plan.md, the record the reviewer reads.

    Args:
        markdown: The findings, e.g. a bullet list with file:line references.
    """
    parts = _parts(markdown)
    if isinstance(parts, str):
        return parts
    ok, result = _helper(ctx.deps, "findings", *parts)
    if ok:
        ctx.deps.findings.append(markdown.strip())
    return result


TOOLS = [Tool(fn, takes_ctx=True, sequential=True)
         for fn in (list_files, read_file, search, run_command, write_file, apply_patch, write_findings)]


def describe_call(name: str, args: object, limit: int = 300) -> str:
    """A tool call's arguments as short text for the turn record (content is cut, never replayed)."""
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text)} characters]"
