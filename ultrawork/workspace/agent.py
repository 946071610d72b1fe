"""One agent's workspace: its clone, branch, Plan.md and per-step bookkeeping.

The methods follow the agent's lifecycle and run the hook points of
`ultrawork.workspace.hooks`: `before_step` -> (the sandbox runs the command while
`check_resources` is fed stats) -> `record_step`, repeated; then
`commit_changes` and `finalize`. Each recording method commits one stage to
the superproject. The clone's git directory is host-owned and outside the work
tree (``.git/modules/<role>`` of the superproject); host-side git on it always
runs after `prepare_host_git` has checked it against the baseline.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ultrawork.workspace import clones
from ultrawork.workspace.commit_guard import scan_worktree
from ultrawork.workspace.command_policy import DEFAULT_DENY_LIST, DeniedCommand
from ultrawork.workspace.errors import SafetyViolation, WorkspaceError
from ultrawork.workspace.gitcmd import Identity
from ultrawork.workspace.hooks import HookContext, HookPoint, HookRunReport
from ultrawork.workspace.isolation import (changed_paths, escaping_symlinks, git_metadata_findings,
                                 git_metadata_snapshot, host_anchor_findings, host_anchor_snapshot,
                                 nested_repositories, superproject_config_findings, tree_snapshot)
from ultrawork.workspace.plan import CommitInfo, PlanDocument, PlanFinal, StepRecord, utc_now
from ultrawork.workspace.repo_guard import git_dir_symlinks, read_regular_file, sanitize_clone, write_private_file
from ultrawork.workspace.stages import Stage, StageRecord, subject
from ultrawork.workspace.stages import parse as parse_stage
from ultrawork.workspace.resources import ResourceMonitor, ResourceThresholds, ResourceVerdict

if TYPE_CHECKING:
    from ultrawork.workspace.superproject import RunSuperproject

OUTCOME = re.compile(r"[a-z][a-z_-]{0,31}")


class AgentWorkspace:
    """``agents/<role>`` (a clone on ``ultrawork/<run>/<role>``) plus ``plans/<role>/Plan.md``."""

    def __init__(self, run: "RunSuperproject", role: str, branch: str,
                 thresholds: ResourceThresholds | None = None) -> None:
        self.run = run
        self.role = role
        self.branch = branch
        self.path = run.path / "agents" / role
        self.git_dir = run.path / ".git" / "modules" / role
        self.clone = clones.AgentClone(self.path, self.git_dir)
        self.plan_path = run.path / "plans" / role / "Plan.md"
        self.plan = PlanDocument(self.plan_path)
        self.state_dir = run.private_dir / "agents" / role
        self.identity = Identity(f"ultrawork-{role}", f"{role}@{run.run_id}.ultrawork.invalid")
        self.resource_monitor = ResourceMonitor(thresholds or ResourceThresholds())
        self.file_limit_mb, self.workspace_limit_mb = 50, 1024   # the commit's caps (the flow sets the profile's)
        self.refused: list[str] = []    # what the last commit refused, and why
        self.left_out: str | None = None  # the build and cache outputs it left out (named)

    def __repr__(self) -> str:
        return f"AgentWorkspace(run={self.run.run_id!r}, role={self.role!r}, branch={self.branch!r})"

    # -- baseline and host-git safety -------------------------------------------------
    def save_baseline(self) -> None:
        """Remember the host-written git metadata; isolation checks and resets compare to it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = read_regular_file(self.git_dir / "config")
        if config is None:
            raise WorkspaceError(f"{self.git_dir}/config is missing after clone")
        write_private_file(self.state_dir / "git-config.baseline", config)
        baseline = {"git": git_metadata_snapshot(self.git_dir),
                    "anchors": host_anchor_snapshot(self.run.target.git_dir, self.run.path)}
        (self.state_dir / "baseline.json").write_text(json.dumps(baseline))

    def _baseline(self) -> dict:
        return json.loads((self.state_dir / "baseline.json").read_text())

    def prepare_host_git(self) -> list[str]:
        """Reset agent-written git metadata before host git runs here; note what was reset."""
        baseline = read_regular_file(self.state_dir / "git-config.baseline")
        if baseline is None:
            raise WorkspaceError(f"no baseline for agent {self.role!r}; was it created by this run?")
        reset = sanitize_clone(self.clone, baseline)
        if reset:
            self.plan.append_note("host reset agent-written git metadata before host-side git: "
                                  + ", ".join(reset), kind="recovery")
        return reset

    def isolation_findings(self) -> list[str]:
        """Everything the isolation-checker reports (see `ultrawork.workspace.isolation`)."""
        findings = escaping_symlinks(self.path) + escaping_symlinks(self.plan_path.parent)
        findings += [f"plan directory holds a repository: plans/{self.role}/{p}"
                     for p in nested_repositories(self.plan_path.parent)]
        if os.path.isdir(self.git_dir) and not os.path.islink(self.git_dir):
            findings += [f"symlink inside the git directory: {p}" for p in git_dir_symlinks(self.git_dir)]
        if read_regular_file(self.path / ".git") != self.clone.gitfile():
            findings.append(f"agents/{self.role}/.git was replaced (host git never reads it; "
                            "the host puts it back)")
        baseline = self._baseline()
        findings += git_metadata_findings(baseline["git"], git_metadata_snapshot(self.git_dir),
                                          where=f"git directory of {self.role}", cwd=self.run.path)
        pre = self._pre_step()
        before = pre["anchors"] if pre else baseline["anchors"]
        findings += host_anchor_findings(before, host_anchor_snapshot(self.run.target.git_dir, self.run.path))
        findings += superproject_config_findings(self.run.path)
        return findings

    # -- steps -----------------------------------------------------------------------
    def _pre_step(self) -> dict | None:
        try:
            return json.loads((self.state_dir / "pre-step.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _run_point(self, ctx: HookContext) -> tuple[HookRunReport, SafetyViolation | None]:
        try:
            report, violation = self.run.hooks.run(ctx.point, ctx), None
        except SafetyViolation as exc:
            report, violation = exc.report, exc
        for error in report.failures:
            self.plan.append_note(str(error), kind="hook-failed")
        for name in report.disabled:
            self.plan.append_note(f"hook {name} failed {self.run.hooks.max_consecutive_failures} times in a "
                                  "row and is disabled for the rest of the run", kind="hook-disabled")
        unrecorded = ctx.findings[ctx.data.get("recorded_findings", 0):]
        if violation is not None and ctx.point in (HookPoint.AFTER_STEP, HookPoint.FINALIZE) and unrecorded:
            self.plan.append_note("safety hook stopped the agent: " + "; ".join(unrecorded), kind="safety")
        return report, violation

    def before_step(self, argv: Sequence[str], *, policy_check: Callable[[], None] | None = None,
                    deny_list: Sequence[DeniedCommand] = DEFAULT_DENY_LIST) -> HookRunReport:
        """Check a step before it runs (raises `CommandDeniedError`/`SafetyViolation`), then snapshot."""
        ctx = HookContext(HookPoint.BEFORE_STEP, self, argv=[str(a) for a in argv],
                          policy_check=policy_check, deny_list=deny_list)
        report, violation = self._run_point(ctx)
        if violation is not None:
            self.plan.append_note(f"step refused before it ran: {violation}", kind="safety")
            self.run.commit_stage(subject(self.role, Stage.STEP, "refused"), [self.plan_path])
            raise violation
        self.resource_monitor.reset()
        snapshot = {"argv": ctx.argv, "at": utc_now(), "tree": tree_snapshot(self.path),
                    "anchors": host_anchor_snapshot(self.run.target.git_dir, self.run.path)}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "pre-step.json").write_text(json.dumps(snapshot))
        return report

    def check_resources(self, stats: Any, *, now: float | None = None,
                        thresholds: ResourceThresholds | None = None) -> ResourceVerdict:
        """Feed one stats snapshot; raises `ResourceLimitError` when the step must stop."""
        if thresholds is not None:
            self.resource_monitor.thresholds = thresholds
        ctx = HookContext(HookPoint.DURING_STEP, self, stats=stats, now=now)
        _, violation = self._run_point(ctx)
        if violation is not None:
            self.plan.append_note(f"step stopped: {violation}", kind="safety")
            raise violation
        return ctx.data["resource_verdict"]

    def record_step(self, step: StepRecord) -> HookRunReport:
        """After a step: isolation check, Plan.md entry, superproject commit; then raise any violation."""
        pre = self._pre_step()
        files = step.files_changed
        if files is None and pre is not None:
            files = changed_paths(pre["tree"], tree_snapshot(self.path))
        ctx = HookContext(HookPoint.AFTER_STEP, self, step=step, files_changed=files)
        report, violation = self._run_point(ctx)
        detail = (f"{ctx.step_number} (exit {step.exit_code})" if ctx.step_number
                  else f"recorded (exit {step.exit_code})")
        if violation is not None:
            detail += " - stopped by safety hook"
        self.run.commit_stage(subject(self.role, Stage.STEP, detail), [self.plan_path])
        (self.state_dir / "pre-step.json").unlink(missing_ok=True)
        if violation is not None:
            raise violation
        return report

    # -- results ---------------------------------------------------------------------
    def commits(self) -> list[CommitInfo]:
        """Commits on the agent branch since the run's base, oldest first."""
        self.prepare_host_git()
        return clones.commits_between(self.clone, self.run.base_sha, self.branch)

    def diffstat(self) -> str:
        """``git diff --stat`` of the agent branch against the run's base."""
        self.prepare_host_git()
        return clones.diffstat(self.clone, self.run.base_sha, self.branch)

    def reset_worktree(self) -> None:
        """Start the agent again from its branch head (a resumed run redoes an unfinished agent)."""
        self.prepare_host_git()
        clones.reset_worktree(self.clone, self.branch)

    def stages(self) -> list[StageRecord]:
        """This agent's superproject stages so far, oldest first."""
        return [r for r in map(parse_stage, self.run.history()) if r is not None and r.role == self.role]

    def reached(self, stage: Stage) -> bool:
        """Whether this agent's record has ``stage`` (e.g. its changes are committed)."""
        return any(r.stage == stage for r in self.stages())

    def commit_changes(self, message: str | None = None) -> list[str]:
        """Commit whatever the agent left in its clone; return the branch's commits new to the run record."""
        self.prepare_host_git()
        message = message or (f"ultrawork({self.role}): work from run {self.run.run_id}\n\n"
                              f"Committed host-side after the agent's last step.\n\n"
                              f"Ultrawork-Run: {self.run.run_id}\nUltrawork-Role: {self.role}\n")
        scan = scan_worktree(self.path, file_limit=self.file_limit_mb << 20,
                             total_limit=self.workspace_limit_mb << 20)
        for note in scan.notes():
            self.plan.append_note(note, kind="refused")
        self.refused = scan.notes()
        self.left_out = scan.left_out_note()
        if self.left_out:
            self.plan.append_note(self.left_out, kind="left out")
        clones.commit_worktree(self.clone, self.branch, self.identity, message, self.state_dir / "tmp",
                               exclude=scan.pathspecs())
        recorded = self.run.recorded_commit(self.role)
        since = recorded if recorded and clones.has_commit(self.clone, recorded) else self.run.base_sha
        new = [c.sha for c in clones.commits_between(self.clone, since, self.branch)]
        self.run.commit_stage(subject(self.role, Stage.CHANGES_COMMITTED, f"({len(new)} new commit(s))"),
                              [self.plan_path], agents=[self])
        return new

    def finalize(self, outcome: str, *, errors: Sequence[str] = (), recoveries: Sequence[str] = ()) -> HookRunReport:
        """Write the final Plan.md section and commit the ``finalized`` stage."""
        if not isinstance(outcome, str) or not OUTCOME.fullmatch(outcome):
            raise WorkspaceError(f"invalid outcome {outcome!r}")
        final = PlanFinal(outcome, commits=self.commits(), diffstat=self.diffstat(),
                          errors=[str(e) for e in errors], recoveries=[str(r) for r in recoveries])
        ctx = HookContext(HookPoint.FINALIZE, self, final=final)
        report, violation = self._run_point(ctx)
        self.run.commit_stage(subject(self.role, Stage.FINALIZED, f"({outcome})"), [self.plan_path], agents=[self])
        if violation is not None:
            raise violation
        return report
