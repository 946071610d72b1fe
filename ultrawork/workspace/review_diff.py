"""An agent's change as a reviewer reads it: ``git diff --stat`` and a bounded patch.

Read from host-owned git only: the agent's git directory (``.git/modules/<role>`` of
the run's superproject) while the run has it, else the target repository, where the
agent's branch was published. Git runs there as on a bare repository
(``core.bare=true``): no work tree, so no attributes, index or ``.git`` file an agent
wrote is read, and ``--no-textconv --no-ext-diff`` keep any diff driver from running.
The patch is agent data: it is cut at a bound (the command for the rest is named)
and its control characters are made visible, so it can neither flood nor steer a
terminal.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ultrawork.workspace.errors import GitError, WorkspaceError
from ultrawork.workspace.gitcmd import git_argv, hardened_env, run_git
from ultrawork.workspace.superproject import RunSuperproject
from ultrawork.untrusted import fence_for, read_stream, visible

PATCH_LINES = 400         # lines of patch shown at the decision
PATCH_BYTES = 64_000      # and never more than this many bytes of it
DIFF_OPTIONS = ["--no-color", "--no-ext-diff", "--no-textconv", "--submodule=short"]
STAT_BYTES = 64_000       # of ``git diff --stat`` (an agent can change a million files)


@dataclass
class AgentDiff:
    run_id: str
    role: str
    branch: str
    base: str
    head: str
    source: str            # the repository read: the agent's git directory or the target
    target_repo: str
    stat: str
    patch: str             # the first PATCH_LINES lines (control characters made visible)
    truncated: bool        # the patch goes on past what is shown
    changed_lines: int     # insertions + deletions in all

    @property
    def empty(self) -> bool:
        return not self.stat.strip()

    @property
    def rest_command(self) -> str:
        return f"git -C {self.target_repo} diff {self.base[:12]} {self.branch}"

    def text(self) -> str:
        """The terminal form: stat, patch, and the command for the rest."""
        if self.empty:
            return f"{self.role}: no change on {self.branch}\n"
        out = f"{self.role}: {self.branch} ({self.base[:12]}..{self.head[:12]})\n{self.stat}\n\n{self.patch}"
        if self.truncated:
            out += f"\n… the patch goes on ({self.changed_lines} changed lines in all); the whole diff: {self.rest_command}\n"

        return out

    def markdown(self, max_lines: int | None = None) -> str:
        """The artifact form (``max_lines`` shortens the patch further, for the review form)."""
        if self.empty:
            return f"No change on `{self.branch}`.\n"
        lines = self.patch.splitlines()
        shown = lines[:max_lines] if max_lines is not None else lines
        fence = fence_for(self.patch + "\n" + self.stat)
        out = (f"`{self.branch}` against the run's base `{self.base[:12]}`\n\n{fence}text\n{self.stat}\n{fence}\n\n"
               f"{fence}diff\n" + "\n".join(shown) + f"\n{fence}\n")
        if self.truncated or len(shown) < len(lines):
            out += (f"\n… the patch goes on ({self.changed_lines} changed lines in all). The whole diff: "
                    f"`{self.rest_command}` (or `ultrawork diff {self.run_id} {self.role}`)\n")
        return out


def _git_dir(run: RunSuperproject, role: str, branch: str) -> Path:
    """The host-owned repository that has ``branch``: the agent's git directory, else the target's."""
    own = run.path / ".git" / "modules" / role
    for candidate in (own, run.target.git_dir):
        if candidate.is_dir() and not candidate.is_symlink() and run_git(
                ["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"],
                cwd=candidate, check=False, **_bare(candidate)).returncode == 0:
            return candidate
    raise WorkspaceError(f"the branch {branch} of agent {role!r} is neither in its git directory nor in "
                         f"{run.target.path}")


def _bare(git_dir: Path) -> dict:
    return {"config": [("core.bare", "true")], "safe_directory": git_dir}


def _args(git_dir: Path, args: list[str]) -> list[str]:
    return [f"--git-dir={git_dir}", *args]


def _bounded_git(git_dir: Path, args: list[str], max_bytes: int) -> tuple[str, bool]:
    """At most ``max_bytes`` of git's output; git is stopped once that is read."""
    argv = git_argv(_args(git_dir, args), **_bare(git_dir))
    proc = subprocess.Popen(argv, cwd=str(git_dir), env=hardened_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        got = read_stream(proc.stdout, max_bytes)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return got.text, got.cut


def _bounded_patch(git_dir: Path, base: str, head: str, max_lines: int, max_bytes: int) -> tuple[str, bool]:
    """The first ``max_lines`` lines (at most ``max_bytes``) of the patch."""
    text, cut = _bounded_git(git_dir, ["diff", "--patch", *DIFF_OPTIONS, "--end-of-options", base, head, "--"],
                             max_bytes)
    lines = text.split("\n")                  # newlines only: a CR or U+2028 in a line stays in it, shown
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) > max_lines:
        lines, cut = lines[:max_lines], True
    return visible("\n".join(lines)), cut


def agent_diff(run: RunSuperproject, role: str, max_lines: int = PATCH_LINES,
               max_bytes: int = PATCH_BYTES) -> AgentDiff:
    """The change on ``role``'s branch since the run's base, read from host-owned git only."""
    ws = run.agent(role)
    git_dir = _git_dir(run, role, ws.branch)

    def git(args: list[str]) -> str:
        return run_git(_args(git_dir, args), cwd=git_dir, **_bare(git_dir)).stdout

    head = git(["rev-parse", "--verify", f"refs/heads/{ws.branch}^{{commit}}"]).strip()
    base = run.base_sha
    stat, stat_cut = _bounded_git(git_dir, ["diff", "--stat=100", "--stat-count=1000", *DIFF_OPTIONS, "--end-of-options", base, head,
                                            "--"], STAT_BYTES)
    stat = visible(stat.rstrip("\n")) + ("\n… (more files changed; the whole list: git diff --stat)" if stat_cut else "")
    short = git(["diff", "--shortstat", *DIFF_OPTIONS, "--end-of-options", base, head, "--"])
    changed = sum(int(n) for n in re.findall(r"(\d+) (?:insertion|deletion)", short))
    patch, cut = _bounded_patch(git_dir, base, head, max_lines, max_bytes) if stat else ("", False)
    source = "its git directory" if git_dir.name == role and git_dir.parent.name == "modules" else "the target"
    return AgentDiff(run.run_id, role, ws.branch, base, head, source, str(run.target.path), stat, patch,
                     cut, changed)


def diff_or_error(run: RunSuperproject, role: str, **kwargs) -> AgentDiff | str:
    """The diff, or why there is none (an agent whose setup failed has no branch)."""
    try:
        return agent_diff(run, role, **kwargs)
    except (WorkspaceError, GitError) as exc:
        return f"no diff for {role}: {exc}"
