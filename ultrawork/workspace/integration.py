"""Merging approved agent branches into one integration branch, and pushing it.

Everything happens host-side in a throwaway clone with hooks disabled (see
``gitcmd``). Merge commits carry the run's timestamp, so integrating the same
branches again gives the same commit: a retried integration is a no-op, not
a second history.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import GitError, UltraworkError
from .gitcmd import Identity, git_out, run_git
from .github import GitHubTarget, PullRequestRef, open_pull_request

INTEGRATOR = Identity("ultrawork-integration", "integration@ultrawork.invalid")


class PushRejected(UltraworkError):
    """The remote branch moved under us; the push was refused by its lease and not forced."""


@dataclass
class AgentBranch:
    role: str
    branch: str
    source: Path  # a repository that has the branch (the agent's clone or the target)


@dataclass
class IntegrationResult:
    outcome: Literal["merged", "conflict", "nothing-approved"]
    branch: str
    repository: Path
    merged: list[str] = field(default_factory=list)
    left_out: dict[str, list[str]] = field(default_factory=dict)   # role -> its conflicting files
    unmergeable: dict[str, str] = field(default_factory=dict)      # role -> why its branch could not be merged
    head: str | None = None

    @property
    def conflict_role(self) -> str | None:
        return next(iter(self.left_out), None)

    @property
    def conflicts(self) -> list[str]:
        return sorted({f for files in self.left_out.values() for f in files})


RECEIVE_PACK_NO_HOOKS = "git -c core.hooksPath=/dev/null receive-pack"


def shortstat(repo: Path, base: str, ref: str) -> tuple[int, int, int]:
    """(files changed, insertions, deletions) between ``base`` and ``ref`` in ``repo``."""
    out = git_out(["diff", "--shortstat", "--no-ext-diff", "--no-textconv", "--end-of-options", base, ref, "--"],
                  cwd=repo)
    numbers = {kind: int(n) for n, kind in re.findall(r"(\d+) (file|insertion|deletion)", out)}
    return numbers.get("file", 0), numbers.get("insertion", 0), numbers.get("deletion", 0)


def integration_branch(run_id: str) -> str:
    return f"ultrawork/{run_id}/integration"


def _dated(when: str) -> dict[str, str]:
    return {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}


def checkout_prefix(run_id: str) -> str:
    """Temporary checkouts carry their home's tag: a reaper removes only its own home's (see sandbox.reaper)."""
    from ultrawork.sandbox.spec import home_tag

    return f"ultrawork-integrate-{home_tag()}-{run_id}-"


def integrate(target: Path, run_id: str, base_commit: str, approved: list[AgentBranch], when: str) -> IntegrationResult:
    """Merge ``approved`` branches one by one, in the given order, onto ``base_commit`` and store
    the result as the integration branch in ``target``.

    A branch that conflicts with what is merged so far is left out (its files named) and the
    others still go in: the outcome is then ``conflict``. Merges are dated by the run, so the
    same branches give the same commits: integrating again after a person resolved a conflict
    on the agent's branch extends the integration branch (a fast-forward), and integrating
    again with nothing new changes nothing. An integration branch moved by anything else is
    never overwritten (`PushRejected`).
    """
    branch = integration_branch(run_id)
    result = IntegrationResult("nothing-approved", branch, target)
    if not approved:
        return result
    scratch = Path(tempfile.mkdtemp(prefix=checkout_prefix(run_id)))
    try:
        run_git(["init", "--quiet", "--template=", str(scratch)], cwd=scratch)
        run_git(["fetch", "--quiet", "--no-tags", "--", str(target), base_commit], cwd=scratch)
        run_git(["checkout", "--quiet", "-B", branch, base_commit], cwd=scratch)
        for agent in approved:
            try:
                merged = _merge_one(scratch, agent, when)
            except (GitError, OSError) as exc:   # whatever the reason: this agent is left out, named
                run_git(["merge", "--abort"], cwd=scratch, check=False)
                run_git(["reset", "--quiet", "--hard", "HEAD"], cwd=scratch, check=False)
                result.unmergeable[agent.role] = _why(exc)
                continue
            if merged:
                result.left_out[agent.role] = merged
                continue
            result.merged.append(agent.role)
        result.outcome = "conflict" if result.left_out or result.unmergeable else "merged"
        if not result.merged:
            return result
        head = git_out(["rev-parse", "HEAD"], cwd=scratch)
        existing = run_git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"],
                           cwd=target, check=False).stdout.strip()
        if existing and existing != head and run_git(
                ["merge-base", "--is-ancestor", existing, head], cwd=scratch, check=False).returncode != 0:
            raise PushRejected(f"{branch} already exists in {target} at {existing[:12]} with other commits; "
                               "not overwriting it")
        if existing != head:
            # the target's side of the push runs with hooks off too: its receive-pack is ours
            run_git(["push", "--quiet", f"--receive-pack={RECEIVE_PACK_NO_HOOKS}", "--", str(target),
                     f"HEAD:refs/heads/{branch}"], cwd=scratch)
        result.head = head
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _merge_one(scratch: Path, agent: AgentBranch, when: str) -> list[str]:
    """Merge ``agent``'s branch into the scratch clone's HEAD; its conflicting files (the merge
    aborted), or [] when it merged. Any other failure raises."""
    run_git(["fetch", "--quiet", "--no-tags", "--", str(agent.source), f"refs/heads/{agent.branch}"], cwd=scratch)
    merge = run_git(["merge", "--no-ff", "--no-edit", "-m", f"Merge {agent.role} agent work ({agent.branch})",
                     "FETCH_HEAD"], cwd=scratch, identity=INTEGRATOR, env=_dated(when), check=False)
    if merge.returncode == 0:
        return []
    files = [f for f in git_out(["diff", "--name-only", "--diff-filter=U"], cwd=scratch).split("\n") if f]
    if not files:
        raise GitError(merge.argv, merge.returncode, merge.stderr, merge.stdout)
    run_git(["merge", "--abort"], cwd=scratch)
    return files


def _why(exc: BaseException) -> str:
    """One short line saying why a branch could not be merged (git's own words, bounded)."""
    text = getattr(exc, "stderr", "") or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def push_with_lease(repo: Path, branch: str, sha: str, github: GitHubTarget) -> bool:
    """Push ``sha`` to ``branch`` on the GitHub remote unless it is already there.

    The lease says the branch must not exist yet; a branch that moved to some
    other commit is reported with :class:`PushRejected`, never forced.
    Returns True when something was pushed.
    """
    auth = github.git_auth_env()
    remote = run_git(["ls-remote", "--", github.git_url, f"refs/heads/{branch}"], cwd=repo, env=auth).stdout.split()
    if remote and remote[0] == sha:
        return False
    if remote:
        raise PushRejected(f"{branch} on {github.repository} is at {remote[0][:12]}, not {sha[:12]}; not forcing")
    pushed = run_git(["push", "--quiet", f"--force-with-lease=refs/heads/{branch}:", "--", github.git_url,
                      f"{sha}:refs/heads/{branch}"], cwd=repo, env=auth, check=False)
    if pushed.returncode != 0:
        if "stale info" in pushed.stderr or "rejected" in pushed.stderr:
            raise PushRejected(f"the push of {branch} to {github.repository} was rejected by its lease")
        raise GitError(pushed.argv, pushed.returncode, pushed.stderr)
    return True


def publish_pull_request(repo: Path, result: IntegrationResult, github: GitHubTarget,
                         title: str, body: str) -> PullRequestRef:
    """Push the integration branch (idempotently) and open or find its pull request."""
    assert result.outcome == "merged" and result.head
    push_with_lease(repo, result.branch, result.head, github)
    return open_pull_request(github, result.branch, title, body)
