"""Host-side git operations on one agent's clone.

An agent clone is two places: its **work tree** (``agents/<role>``, mounted
into the sandbox: agent data, hostile) and its **git directory**
(``.git/modules/<role>`` of the run's superproject: host-owned, never
writable from a sandbox, mounted read-only at most). Every function here runs
git through `gitcmd.run_git` with an explicit ``--git-dir``/``--work-tree``,
so nothing the agent wrote in the work tree -- a ``.git`` file or directory,
``core.worktree``, attributes naming filters that no host-owned config
defines -- can redirect host git or make it run code. The host never trusts
the agent's index: commits are staged in a fresh host-private index.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from ultrawork.workspace.errors import WorkspaceError
from ultrawork.workspace.gitcmd import Identity, git_out, run_git
from ultrawork.workspace.plan import CommitInfo
from ultrawork.workspace.repo_guard import TargetRepo, read_regular_file, write_private_file


@dataclass(frozen=True)
class AgentClone:
    """An agent's clone: the work tree the sandbox edits and the host-owned git directory."""

    work_tree: Path
    git_dir: Path

    def gitfile(self) -> bytes:
        """The ``.git`` file the work tree holds, so people (and ``git submodule``) find the
        git directory from the work tree; host code never reads it."""
        return f"gitdir: {os.path.relpath(self.git_dir, self.work_tree)}\n".encode()


def _clone_git(clone: AgentClone, args: list[str], **kwargs):
    return run_git([f"--git-dir={clone.git_dir}", f"--work-tree={clone.work_tree}", *args],
                   cwd=clone.work_tree, safe_directory=clone.git_dir, **kwargs)


def clone_on_branch(target: TargetRepo, clone: AgentClone, branch: str, base_sha: str) -> None:
    """Clone the target into the (empty, existing) work tree, its git directory kept apart,
    and check out a new `branch` at `base_sha`.

    ``--no-hardlinks``: a hard-linked object file shared with the user's
    repository could be modified through the agent's mount.
    ``--template=``: no sample hooks, no info/exclude, so the baseline is empty.
    """
    clone.git_dir.parent.mkdir(parents=True, exist_ok=True)
    run_git(["clone", "--quiet", "--no-checkout", "--no-hardlinks", "--template=",
             f"--separate-git-dir={clone.git_dir}", "--", str(target.path), str(clone.work_tree)],
            cwd=clone.work_tree.parent, safe_directory=target.path)
    os.chmod(clone.git_dir, 0o755)
    write_private_file(clone.work_tree / ".git", clone.gitfile())
    _clone_git(clone, ["checkout", "--quiet", "-b", branch, base_sha])


def attach_head(clone: AgentClone, branch: str) -> None:
    """Put HEAD back on the agent branch, moving the branch to wherever the agent left HEAD."""
    ref = f"refs/heads/{branch}"
    current = _clone_git(clone, ["symbolic-ref", "-q", "HEAD"], check=False).stdout.strip()
    if current == ref:
        return
    head = _clone_git(clone, ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], check=False).stdout.strip()
    if head:
        _clone_git(clone, ["update-ref", "-m", "ultrawork: reattach agent branch", ref, head])
    _clone_git(clone, ["symbolic-ref", "HEAD", ref])


def commit_worktree(clone: AgentClone, branch: str, identity: Identity, message: str, scratch: Path,
                    exclude: list[str] | None = None) -> str | None:
    """Commit everything in the work tree to `branch`; return the new sha or None if unchanged.

    Staging happens in a fresh index built from HEAD in `scratch` (host-private),
    then replaces the clone's index, so a crafted index cannot make git read
    files outside the work tree. ``git add`` stores symlinks as links.
    ``exclude``: pathspecs git never reads (see `commit_guard.WorktreeScan.pathspecs`).
    """
    attach_head(clone, branch)
    scratch.mkdir(parents=True, exist_ok=True)
    index = scratch / f"index-{uuid.uuid4().hex}"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        # both in one process; "--": the two are revisions, whatever files the work tree holds
        head, head_tree = _clone_git(clone, ["rev-parse", "HEAD^{commit}", "HEAD^{tree}", "--"]).stdout.split()[:2]
        _clone_git(clone, ["read-tree", head], env=env)
        _clone_git(clone, ["add", "--all", "--", ".", *(exclude or [])], env=env)
        tree = _clone_git(clone, ["write-tree"], env=env).stdout.strip()
        new = None
        if tree != head_tree:
            new = _clone_git(clone, ["commit-tree", tree, "-p", head, "-m", message],
                             identity=identity).stdout.strip()
            _clone_git(clone, ["update-ref", "-m", "ultrawork: host commit", f"refs/heads/{branch}", new, head])
        data = read_regular_file(index, limit=1 << 31)
        if data is not None:
            write_private_file(clone.git_dir / "index", data)
        return new
    finally:
        if os.path.lexists(index):
            os.unlink(index)


def branch_head(clone: AgentClone, branch: str) -> str:
    return _clone_git(clone, ["rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}"]).stdout.strip()


def commits_between(clone: AgentClone, base: str, branch: str) -> list[CommitInfo]:
    """Commits on `branch` not reachable from `base`, oldest first."""
    out = _clone_git(clone, ["log", "--reverse", "--no-decorate", "--format=%H%x1f%s",
                             "--end-of-options", f"{base}..refs/heads/{branch}", "--"]).stdout
    return [CommitInfo(*line.split("\x1f", 1)) for line in out.splitlines() if "\x1f" in line]


STAT_FILES = 200          # files named in a diffstat (git sums up the rest): an agent can change a million


def diffstat(clone: AgentClone, base: str, branch: str) -> str:
    return _clone_git(clone, ["diff", "--stat", f"--stat-count={STAT_FILES}", "--no-ext-diff", "--no-textconv", "--no-color",
                              "--end-of-options", base, f"refs/heads/{branch}", "--"]).stdout.rstrip("\n")


def has_commit(clone: AgentClone, sha: str) -> bool:
    return _clone_git(clone, ["cat-file", "-e", f"{sha}^{{commit}}"], check=False).returncode == 0


def fetch_into_target(target: TargetRepo, clone: AgentClone, branch: str) -> str:
    """Make ``refs/heads/<branch>`` in the target repository point at the agent's branch.

    Objects are fsck-checked on the way in (``transfer.fsckObjects``), which
    rejects malicious trees (``.git`` entries, ``..`` paths) the agent may have made.
    """
    ref = f"refs/heads/{branch}"
    if not branch.startswith("ultrawork/"):
        raise WorkspaceError(f"refusing to publish {branch!r} outside the ultrawork/ namespace")
    run_git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
             "--", str(clone.git_dir), f"+{ref}:{ref}"], cwd=target.path, safe_directory=clone.git_dir,
            config=[("transfer.fsckObjects", "true"), ("fetch.fsckObjects", "true")])
    return git_out(["rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=target.path)


def reset_worktree(clone: AgentClone, branch: str) -> None:
    """Put the work tree back to the branch head (what a killed attempt left is dropped)."""
    attach_head(clone, branch)
    _clone_git(clone, ["reset", "--hard", "--quiet", f"refs/heads/{branch}"])
    _clone_git(clone, ["clean", "-ffdxq"])
