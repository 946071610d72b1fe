"""The plain part of a sweep: open a backlog, pick and claim eligible issues, map run outcomes.

No Prefect here: ``flows/sweep.py`` adds the runs, the concurrency limit and the artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from ultrawork.workspace.github import GitHubTarget

from .errors import BacklogError, ConcurrencyError, IllegalTransition
from .issue import Issue
from .machine import OUTCOME_TRIGGERS
from .store import Backlog, FileBacklog

GITHUB_PREFIX = "github:"


def default_backlog() -> str:
    """``$ULTRAWORK_HOME/backlog``: where a sweep looks when it is not told."""
    from ultrawork.sandbox.spec import ultrawork_home

    return str(ultrawork_home() / "backlog")


def open_backlog(spec: str | Path, github: GitHubTarget | None = None) -> Backlog:
    """``PATH`` (a directory holding ``issues/``) or ``github:OWNER/NAME[?label=L&repo=PATH]``.

    A GitHub backlog uses the token and API URL of ``github`` (the GitHub settings
    block or ``ULTRAWORK_GITHUB_*``); its repository may differ from the one pull
    requests go to.
    """
    text = str(spec)
    if not text.startswith(GITHUB_PREFIX):
        return FileBacklog(text)
    from .github_issues import GitHubBacklog

    repository, _, query = text[len(GITHUB_PREFIX):].partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    if github is None:
        raise BacklogError(f"backlog {text} needs GitHub settings: save an 'Ultrawork GitHub Settings' block "
                           f"named 'default' or set ULTRAWORK_GITHUB_REPOSITORY and ULTRAWORK_GITHUB_TOKEN")
    target = github.model_copy(update={"repository": repository or github.repository})
    return GitHubBacklog(target, label=options.get("label", "ultrawork"), default_repo=options.get("repo", ""))


@dataclass
class Claim:
    issue: Issue            # as written by the claim (state implement)
    from_state: str


@dataclass
class Skip:
    issue_id: str
    reason: str
    where: str = ""


def eligible(issues: list[Issue]) -> list[Issue]:
    """Issues a sweep may take: those in the backlog state (oldest id first)."""
    return [i for i in issues if i.state == "backlog"]


def claim_eligible(backlog: Backlog, issues: list[Issue], actor: str,
                   limit: int | None = None) -> tuple[list[Claim], list[Skip]]:
    """Claim up to ``limit`` eligible issues with one optimistic write each.

    The claim is written against the version the issue had when it was read: if
    another sweep claimed it in between, the write raises ConcurrencyError and
    this sweep skips the issue. Two sweeps never take the same issue.
    """
    claims: list[Claim] = []
    skips: list[Skip] = []
    for issue in eligible(issues):
        if limit is not None and len(claims) >= limit:
            break
        try:
            claimed = backlog.apply(issue, "claim", actor=actor)
        except ConcurrencyError:
            skips.append(Skip(issue.id, "claimed by another writer first", issue.where))
            continue
        except (IllegalTransition, BacklogError) as exc:
            skips.append(Skip(issue.id, str(exc), issue.where))
            continue
        claims.append(Claim(claimed, issue.state))
    return claims, skips


def outcome_trigger(outcome: str) -> str:
    """The trigger a run outcome fires; anything unknown counts as a failed run."""
    return OUTCOME_TRIGGERS.get(outcome, OUTCOME_TRIGGERS["failed"])


@dataclass
class RunInFlight:
    """An issue a sweep started a run for whose outcome is not on the issue yet."""
    issue: Issue
    run_id: str
    flow_run_id: str


OUTCOME_EVENTS = frozenset(OUTCOME_TRIGGERS.values())


def runs_in_flight(issues: list[Issue]) -> list[RunInFlight]:
    """Issues in ``implement`` or ``review`` whose latest ``run_started`` has no outcome event after it.

    A sweep that crashed, or lost its server for a while, leaves these behind; the next pass
    reads their runs and moves them on (``flows/sweep.py::reconcile``).
    """
    found = []
    for issue in issues:
        if issue.state not in ("implement", "review"):
            continue
        starts = [i for i, e in enumerate(issue.history) if e.trigger == "run_started"]
        if not starts:
            continue
        after = issue.history[starts[-1] + 1:]
        if any(e.trigger in OUTCOME_EVENTS or e.trigger == "claim" for e in after):
            continue
        data = issue.history[starts[-1]].data
        found.append(RunInFlight(issue, str(data.get("run_id", "")), str(data.get("flow_run_id", ""))))
    return found

