"""What a run has done, read from (and written to) its superproject: the source of truth for resume.

Each stage's result is a JSON file committed as one superproject commit, keyed
by the run id and the stage: ``orchestration.json`` (parameters, roles, the
process and flow runs that drove it), ``outcomes/<role>.json`` (an agent that
finished), ``review.json``, ``integration.json``, ``pull_request.json``. A
rerun of the same run reads them and skips what is done; the side effects
(merge, push, pull request) are idempotent by the same keys.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ultrawork.workspace.errors import UltraworkError, WorkspaceError
from ultrawork.workspace.gitcmd import run_git
from ultrawork.workspace.superproject import RunSuperproject, ultrawork_home


class RunNotFound(UltraworkError):
    """No run with that id under $ULTRAWORK_HOME/runs."""


class RunFinished(UltraworkError):
    """The run already reached its end; there is nothing to resume."""


class RunInconsistent(UltraworkError):
    """The superproject does not agree with itself (e.g. edited by hand); nothing was changed."""


class RunStillActive(UltraworkError):
    """The process driving the run is still alive."""


class RunLedger:
    def __init__(self, run: RunSuperproject):
        self.run = run
        self.path = run.path

    @classmethod
    def open(cls, run_id: str) -> "RunLedger":
        try:
            return cls(RunSuperproject.open(run_id))
        except WorkspaceError as exc:
            raise RunNotFound(f"no run {run_id!r} under {ultrawork_home() / 'runs'}") from exc

    # -- reading -------------------------------------------------------------------------
    def read(self, name: str) -> dict[str, Any]:
        return _read_json(self.path / f"{name}.json")

    @property
    def orchestration(self) -> dict[str, Any]:
        return self.read("orchestration")

    def outcome(self, role: str) -> dict[str, Any] | None:
        """The recorded outcome of an agent that finished, or None."""
        return self.read(f"outcomes/{role}") or None

    def finished(self) -> str | None:
        """Why the run is over (None while there is work left)."""
        return run_finished(self.path)

    # -- writing -------------------------------------------------------------------------
    def record(self, name: str, data: dict[str, Any], subject: str) -> None:
        """Write ``<name>.json`` and commit it as one stage (the key is the run id + the name)."""
        path = self.path / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        self.run.commit_stage(subject, [path])

    async def arecord(self, name: str, data: dict[str, Any], subject: str) -> None:
        """:meth:`record` off the event loop that a run's agents share."""
        await asyncio.to_thread(self.record, name, data, subject)

    # -- checking ------------------------------------------------------------------------
    def check_consistent(self) -> None:
        """Raise :class:`RunInconsistent` naming what does not fit; read-only."""
        problems: list[str] = []
        for name in ("run.json", "task.md", "orchestration.json"):
            if not (self.path / name).is_file():
                problems.append(f"{name} is missing")
        dirty = run_git(["status", "--porcelain", "--ignore-submodules=all", "--untracked-files=all",
                         "--", ".", ":(exclude)plans"], cwd=self.path).stdout.strip()
        if dirty:
            problems.append("uncommitted changes in the superproject: " + ", ".join(
                line[3:] for line in dirty.splitlines()[:10]))
        roles = self.orchestration.get("roles") or []
        registered = set(self.run.roles())
        target = self.run.target.path
        for role in roles:
            done = self.outcome(role)
            if done is None:
                continue
            if role not in registered:
                problems.append(f"{role} has an outcome but no workspace in .gitmodules")
                continue
            branch = done.get("branch", "")
            head = run_git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"], cwd=target,
                           check=False).stdout.strip()
            if not head:
                problems.append(f"{role}'s branch {branch} is missing from {target}")
                continue
            for sha in done.get("commits", []):
                if run_git(["merge-base", "--is-ancestor", sha, head], cwd=target, check=False).returncode != 0:
                    problems.append(f"{role}'s commit {sha[:12]} is not on {branch}")
        for role in registered - set(roles):
            problems.append(f"agent {role} is in .gitmodules but not in the run's plan")
        if problems:
            raise RunInconsistent(f"run {self.run.run_id} is inconsistent: " + "; ".join(problems))



def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise RunInconsistent(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RunInconsistent(f"{path} does not hold a JSON object")
    return data


def run_finished(run_dir: Path) -> str | None:
    """Why the run in ``run_dir`` is over, from its stage files alone (cheap: no git, no hooks)."""
    if _read_json(run_dir / "review.json").get("state") == "timed-out":
        return "its review timed out"
    integration = _read_json(run_dir / "integration.json")
    if not integration:
        return None
    if integration.get("outcome") != "merged":
        return f"its integration ended: {integration.get('outcome')}"
    pull_request = _read_json(run_dir / "pull_request.json")
    if _read_json(run_dir / "orchestration.json").get("github") and not pull_request:
        return None
    return "it was integrated" + (" and its pull request opened" if pull_request else "")
