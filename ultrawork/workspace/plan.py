"""Plan.md: the agent's human-readable record, shared with the agent itself.

The file lives in the superproject (``plans/<role>/Plan.md``) and is mounted
writable into the sandbox at ``/plan/Plan.md``, so the agent may add its own
notes. The host therefore only ever *appends* (``O_APPEND``, never a rewrite),
re-reads the file before each append, and never follows a symlink the agent
put in its place. Host-written sections carry a one-line machine marker
(``<!-- ultrawork:<kind> {json} -->``) that `PlanDocument.summary` parses back;
marker-like text inside task, output or error text is neutralised first.
"""

from __future__ import annotations

import json
import errno
import os
import re
import shlex
import stat
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from ultrawork.secret_names import looks_secret
from ultrawork.workspace.errors import WorkspaceError
from ultrawork.sandbox import agent_tree
from ultrawork.sandbox.spec import SANDBOX_UID
from ultrawork.workspace.repo_guard import read_regular_file

EXCERPT_LINES = 40
EXCERPT_BYTES = 4096
MAX_LISTED_FILES = 100
_MARKER = re.compile(r"^<!-- ultrawork:(header|step|note|final) (\{.*\}) -->$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CHECK_ITEM = re.compile(r"^\s*- \[([ xX])\] (.*)$")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StepRecord:
    """One command the agent ran in its sandbox, as the sandbox reported it."""

    argv: Sequence[str]
    exit_code: int
    duration: float
    stdout: str = ""
    stderr: str = ""
    files_changed: list[str] | None = None  # None: the workspace measures it


@dataclass
class PlanHeader:
    run_id: str
    role: str
    branch: str
    base_ref: str
    base_sha: str
    task: str
    checklist: list[str] = field(default_factory=list)
    sandbox_spec: Mapping[str, Any] | None = None
    created_at: str = field(default_factory=utc_now)


@dataclass
class CommitInfo:
    sha: str
    subject: str


@dataclass
class PlanFinal:
    outcome: str
    commits: list[CommitInfo] = field(default_factory=list)
    diffstat: str = ""
    errors: list[str] = field(default_factory=list)
    recoveries: list[str] = field(default_factory=list)
    finished_at: str = field(default_factory=utc_now)


@dataclass
class PlanSummary:
    """What the review screen needs, parsed back from the host's markers."""

    run_id: str | None = None
    role: str | None = None
    branch: str | None = None
    created_at: str | None = None
    steps: int = 0
    failed_steps: int = 0
    last_exit_code: int | None = None
    notes: int = 0
    checklist: list[tuple[str, bool]] = field(default_factory=list)
    finalized: bool = False
    outcome: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    commits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    recoveries: list[str] = field(default_factory=list)


def neutralize(text: str) -> str:
    """Make untrusted text safe to embed: no control codes, no forged host markers."""
    text = _CONTROL.sub("", _ANSI.sub("", text.replace("\r\n", "\n")))
    return text.replace("<!-- ultrawork:", "<!-- ultrawork-quoted:")


def code_span(text: str) -> str:
    text = neutralize(text).replace("\n", " ")
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks} {text} {ticks}" if ticks != "`" else f"`{text}`"


def code_block(text: str, info: str = "text") -> str:
    text = neutralize(text)
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def excerpt(text: str, lines: int = EXCERPT_LINES, limit: int = EXCERPT_BYTES) -> tuple[str, bool]:
    """The last `lines` lines and at most `limit` bytes of `text`; flag whether it was cut."""
    tail = "\n".join(text.rstrip("\n").split("\n")[-lines:])
    raw = tail.encode("utf-8", "replace")
    if len(raw) > limit:
        tail = raw[-limit:].decode("utf-8", "ignore")
    return tail, tail != text.rstrip("\n")


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        items = []
        for key, inner in value.items():
            items += _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return items
    if prefix.split(".")[-1].lower() in ("env", "environment") and isinstance(value, (list, tuple)):
        pairs = dict(str(v).partition("=")[::2] for v in value)
        return _flatten(pairs, prefix)
    return [(prefix, value)]


def render_sandbox_spec(spec: Mapping[str, Any] | None) -> str:
    """Render a sandbox spec mapping; values of secret-looking names are never shown."""
    if not spec:
        return "_no sandbox spec given_"
    lines = []
    for key, value in _flatten(spec):
        if looks_secret(key):
            shown = "<redacted>"
        else:
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
        lines.append(f"- {code_span(key)}: {code_span(str(shown))}")
    return "\n".join(lines)


def _marker(kind: str, data: Mapping[str, Any]) -> str:
    payload = json.dumps(data, sort_keys=True, default=str).replace(">", "\\u003e")
    return f"<!-- ultrawork:{kind} {payload} -->"


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"  - {neutralize(i).replace(chr(10), ' ')}" for i in items) if items else "  - none"


class PlanDocument:
    """Append-only access to one agent's Plan.md."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path, header: PlanHeader) -> "PlanDocument":
        doc = cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            raise WorkspaceError(f"{path} already exists")
        checklist = "\n".join(f"- [ ] {neutralize(item).replace(chr(10), ' ')}"
                              for item in header.checklist) or "_no checklist given_"
        meta = {k: v for k, v in asdict(header).items() if k not in ("task", "checklist", "sandbox_spec")}
        doc._append(
            f"# Plan: {header.role} (run {header.run_id})\n\n{_marker('header', meta)}\n\n"
            f"- Run: {code_span(header.run_id)}\n- Role: {code_span(header.role)}\n"
            f"- Branch: {code_span(header.branch)}\n"
            f"- Base: {code_span(header.base_ref)} ({code_span(header.base_sha[:12])})\n"
            f"- Created: {header.created_at}\n\n## Task\n\n{neutralize(header.task).strip()}\n\n"
            f"## Acceptance checklist\n\n<!-- ultrawork:checklist -->\n{checklist}\n"
            f"<!-- ultrawork:/checklist -->\n\n## Sandbox\n\n{render_sandbox_spec(header.sandbox_spec)}\n\n"
            f"## Steps\n\n_Entries are appended by the host after every step; "
            f"the agent may add notes anywhere below._\n", create=True)
        return doc

    def text(self) -> str:
        data = read_regular_file(self.path, limit=64 << 20)
        return "" if data is None else data.decode("utf-8", "replace")

    def _lines(self, limit: int = 64 << 20, longest: int = 1 << 20):
        """The file's lines, read in chunks (up to ``limit`` bytes); a line longer than ``longest``
        (an agent's flood, never a host marker) is skipped rather than held."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            rest, skipping, read = b"", False, 0
            while read < limit and (chunk := os.read(fd, min(1 << 16, limit - read))):
                read += len(chunk)
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    if not skipping:
                        yield line.decode("utf-8", "replace")
                    skipping = False
                if len(rest) > longest:
                    rest, skipping = b"", True
            if not skipping:
                yield rest.decode("utf-8", "replace")
        finally:
            os.close(fd)

    def _last_byte(self) -> bytes:
        """The file's last byte (the agent's Plan.md can be large: it is not read to append to it)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return b""
        try:
            st = os.fstat(fd)
            return os.pread(fd, 1, st.st_size - 1) if stat.S_ISREG(st.st_mode) and st.st_size else b""
        except OSError:
            return b""
        finally:
            os.close(fd)

    def _append(self, markdown: str, *, create: bool = False) -> None:
        """Append without clobbering; a non-regular Plan.md (symlink, fifo, folder) is replaced, also
        when it is swapped for one between the check and the open (the open never follows it)."""
        for _ in range(3):
            try:
                return self._append_once(markdown, create=create)
            except OSError as exc:
                if create or exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOTDIR,
                                               errno.EEXIST, errno.ENOENT):
                    raise
        return self._append_once(markdown, create=create)

    def _append_once(self, markdown: str, *, create: bool = False) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT | os.O_EXCL if create else 0)
        prefix = ""
        if not create:
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                if st is not None:
                    agent_tree.remove(self.path)   # never follows a link inside it
                flags |= os.O_CREAT | os.O_EXCL
                prefix = ("# Plan.md (recreated by the host)\n\n> The previous Plan.md was missing "
                          "or not a regular file; the host replaced it.\n\n")
            else:
                last = self._last_byte()
                prefix = "\n" if last not in (b"", b"\n") else ""
        fd = os.open(self.path, flags, 0o666)
        try:
            if flags & os.O_CREAT:      # the host's new file: the agent may write it, set on its descriptor
                _agent_writable(fd)
            os.write(fd, (prefix + markdown.rstrip("\n") + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def step_count(self) -> int:
        return self.summary().steps

    def append_step(self, step: StepRecord, *, files_changed: list[str] | None = None,
                    findings: Sequence[str] = (), at: str | None = None) -> int:
        """Append one timestamped step entry; return its number."""
        number = self.step_count() + 1
        at = at or utc_now()
        files = files_changed if files_changed is not None else step.files_changed
        data = {"n": number, "at": at, "exit_code": step.exit_code, "duration_s": round(step.duration, 3),
                "files_changed": None if files is None else len(files), "findings": len(findings)}
        lines = [f"### Step {number} ({at})", "", _marker("step", data), "",
                 f"- Command: {code_span(shlex.join(str(a) for a in step.argv))}",
                 f"- Exit code: {step.exit_code}", f"- Duration: {step.duration:.2f} s"]
        if files is None:
            lines.append("- Files changed: not measured")
        else:
            shown = ", ".join(code_span(f) for f in files[:MAX_LISTED_FILES]) or "none"
            more = f" and {len(files) - MAX_LISTED_FILES} more" if len(files) > MAX_LISTED_FILES else ""
            lines.append(f"- Files changed ({len(files)}): {shown}{more}")
        if findings:
            lines += ["- Safety findings (step stopped):", _bullets(list(findings))]
        for name, stream in (("stdout", step.stdout), ("stderr", step.stderr)):
            if stream.strip():
                tail, cut = excerpt(stream)
                label = f"last {EXCERPT_LINES} lines / {EXCERPT_BYTES} bytes" if cut else "complete"
                lines += [f"- Output ({name}, {label}):", "", code_block(tail)]
        self._append("\n" + "\n".join(lines) + "\n")
        return number

    def append_note(self, text: str, *, kind: str = "note") -> None:
        """A host event worth a line in the record (hook failures, recoveries)."""
        at = utc_now()
        self._append(f"\n{_marker('note', {'kind': kind, 'at': at})}\n"
                     f"> **{kind}** ({at}): {neutralize(text).replace(chr(10), ' ')}\n")

    def finalize(self, final: PlanFinal) -> None:
        """Append the final section: outcome, commits, diffstat, duration, errors, recoveries."""
        summary = self.summary()
        duration = None
        if summary.created_at:
            start = datetime.strptime(summary.created_at, "%Y-%m-%dT%H:%M:%SZ")
            end = datetime.strptime(final.finished_at, "%Y-%m-%dT%H:%M:%SZ")
            duration = (end - start).total_seconds()
        data = {"outcome": final.outcome, "finished_at": final.finished_at, "duration_s": duration,
                "commits": [c.sha for c in final.commits], "errors": final.errors,
                "recoveries": final.recoveries}
        commits = [f"  - {code_span(c.sha[:12])} {neutralize(c.subject)}" for c in final.commits]
        lines = ["", "## Final", "", _marker("final", data), "",
                 f"- Outcome: **{neutralize(final.outcome)}**", f"- Finished: {final.finished_at}",
                 f"- Duration: {'unknown' if duration is None else f'{duration:.0f} s'}",
                 f"- Steps: {summary.steps} ({summary.failed_steps} failed)",
                 f"- Commits on the branch since base ({len(final.commits)}):",
                 "\n".join(commits) or "  - none", "- Diffstat:", "",
                 code_block(final.diffstat or "(no changes)"), "",
                 "- Errors:", _bullets(final.errors), "- Recoveries:", _bullets(final.recoveries)]
        self._append("\n".join(lines) + "\n")

    def summary(self) -> PlanSummary:
        """Parse the host markers (the last final section wins) and the checklist."""
        out = PlanSummary()
        in_checklist = False
        for line in self._lines():
            if line == "<!-- ultrawork:checklist -->":
                in_checklist, out.checklist = True, []
                continue
            if line == "<!-- ultrawork:/checklist -->":
                in_checklist = False
                continue
            if in_checklist and (item := _CHECK_ITEM.match(line)):
                out.checklist.append((item.group(2), item.group(1) != " "))
                continue
            match = _MARKER.match(line)
            if not match:
                continue
            try:
                data = json.loads(match.group(2))
            except ValueError:
                continue
            kind = match.group(1)
            if kind == "header":
                out.run_id, out.role, out.branch = data.get("run_id"), data.get("role"), data.get("branch")
                out.created_at = data.get("created_at")
            elif kind == "step":
                out.steps += 1
                out.last_exit_code = data.get("exit_code")
                out.failed_steps += 1 if data.get("exit_code") not in (0, None) else 0
            elif kind == "note":
                out.notes += 1
            elif kind == "final":
                out.finalized, out.outcome = True, data.get("outcome")
                out.finished_at, out.duration_s = data.get("finished_at"), data.get("duration_s")
                out.commits = list(data.get("commits") or [])
                out.errors, out.recoveries = list(data.get("errors") or []), list(data.get("recoveries") or [])
        return out


def _agent_writable(fd: int) -> None:
    """Plan.md is the agent's to write: group gid 1000 (as root) or others, read-write."""
    if os.geteuid() == 0:
        os.fchown(fd, -1, SANDBOX_UID)
        os.fchmod(fd, 0o664)
    else:
        os.fchmod(fd, 0o666)
