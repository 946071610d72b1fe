"""The issue state machine: states, transitions as a table, guards, and replay.

An issue's history is an append-only list of :class:`IssueEvent`; its state is
what replaying that history through :data:`TRANSITIONS` gives, and its version
is the number of events. Every write names the version it builds on
(``event.version == issue.version + 1``), which is what the stores use for
optimistic locking.

The manual path is AgentTree's: backlog -> define -> research -> plan ->
implement -> review -> accepted. The nightly sweep takes a short cut: an issue
precise enough to run (a repository and a task) is claimed straight from the
backlog into ``implement``, because one Sisyphus run does the research (explore,
librarian), the plan (Plan.md) and the implementation (frontend) itself; the
run's review and outcome then move it on (see :data:`OUTCOME_TRIGGERS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from .errors import GuardFailed, IllegalTransition, IssueFileError, UnknownStateError

STATES = ("backlog", "define", "research", "plan", "implement", "review", "accepted", "not_doing")
INITIAL = "backlog"
OPEN = ("backlog", "define", "research", "plan", "implement", "review")   # not accepted, not not_doing

Guard = Callable[[Any, dict], "str | None"]   # (issue, event data) -> why not, or None


def runnable(issue, data: dict) -> str | None:
    """A run needs a repository and a task."""
    missing = [name for name in ("repo", "task") if not (getattr(issue, name, None) or "").strip()]
    return f"the issue has no {' and no '.join(missing)}" if missing else None


def needs(*keys: str) -> Guard:
    """The event must carry these data fields (e.g. which run it is about)."""
    def guard(issue, data: dict) -> str | None:
        missing = [k for k in keys if not data.get(k)]
        return f"the event needs {', '.join(missing)}" if missing else None
    guard.__name__ = f"needs({', '.join(keys)})"
    return guard


@dataclass(frozen=True)
class Transition:
    trigger: str
    source: str
    dest: str
    guard: Guard | None = None
    why: str = ""


def _rows(trigger: str, sources: Iterable[str], dest: str, guard: Guard | None = None, why: str = ""):
    return [Transition(trigger, s, dest, guard, why) for s in sources]


TRANSITIONS: tuple[Transition, ...] = (
    # AgentTree's manual path (a person moves the issue on)
    Transition("start", "backlog", "define", why="someone starts shaping the issue"),
    Transition("advance", "define", "research", why="the problem is defined"),
    Transition("advance", "research", "plan", why="the research is done"),
    Transition("advance", "plan", "implement", why="the plan is agreed"),
    Transition("advance", "implement", "review", why="the change is ready for review"),
    Transition("accept", "review", "accepted", why="the reviewer accepted the work"),
    # the sweep's path: one Sisyphus run per claimed issue
    Transition("claim", "backlog", "implement", runnable, "a sweep took the issue (optimistic lock on its version)"),
    Transition("run_started", "implement", "implement", needs("run_id", "flow_run_id"),
               "the sweep started a Sisyphus run for it"),
    Transition("review_requested", "implement", "review", needs("run_id"), "the run paused for its human review"),
    Transition("integrated", "review", "accepted", needs("run_id"),
               "the reviewer approved work and it was merged into an integration branch"),
    Transition("rejected", "review", "define", needs("run_id"),
               "the reviewer rejected every agent: the task needs redefining before another run"),
    Transition("conflict", "review", "implement", needs("run_id"),
               "approved branches conflict: someone resolves them by hand"),
    *_rows("release", ("implement", "review"), "backlog", needs("reason"),
           "the run failed or nobody reviewed in time: the next sweep tries again"),
    # housekeeping
    *_rows("requeue", ("define", "research", "plan", "implement"), "backlog", why="ready for the sweep again"),
    *_rows("drop", OPEN, "not_doing", needs("reason"), "we decided not to do it"),
    Transition("reopen", "not_doing", "backlog", why="we will do it after all"),
)

TRIGGERS = tuple(dict.fromkeys(t.trigger for t in TRANSITIONS))

# What a Sisyphus run's outcome does to its issue (the trigger the sweep fires).
OUTCOME_TRIGGERS: dict[str, str] = {
    "integrated": "integrated",           # review -> accepted
    "nothing-approved": "rejected",       # review -> define
    "conflict": "conflict",               # review -> implement
    "review-timed-out": "release",        # review -> backlog
    "failed": "release",                  # implement|review -> backlog
}


class IssueEvent(BaseModel):
    """One entry of an issue's history. ``version`` is the issue's version after it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    trigger: str
    source: str
    dest: str
    at: str
    actor: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


def check_state(state: object, where: str) -> str:
    if state not in STATES:
        raise UnknownStateError(where, state)
    return state  # type: ignore[return-value]


def allowed(state: str) -> list[str]:
    """Triggers the table allows from ``state`` (guards not evaluated)."""
    return list(dict.fromkeys(t.trigger for t in TRANSITIONS if t.source == state))


def _row(trigger: str, source: str) -> Transition | None:
    return next((t for t in TRANSITIONS if t.trigger == trigger and t.source == source), None)


def replay(events: Iterable[IssueEvent], where: str) -> str:
    """The state the history leads to; a history the table does not allow is a broken file."""
    state = INITIAL
    for i, event in enumerate(events, start=1):
        check_state(event.source, f"{where}: event {i}")
        check_state(event.dest, f"{where}: event {i}")
        if event.version != i:
            raise IssueFileError(where, f"event {i} has version {event.version}: the history must count 1, 2, 3, ...")
        if event.source != state:
            raise IssueFileError(where, f"event {i} ({event.trigger}) starts from {event.source!r}, "
                                        f"but the issue was {state!r}")
        row = _row(event.trigger, event.source)
        if row is None or row.dest != event.dest:
            raise IssueFileError(where, f"event {i} ({event.trigger}: {event.source} -> {event.dest}) "
                                        f"is not a transition the machine allows")
        state = event.dest
    return state


def fire(issue, trigger: str, actor: str = "", data: dict | None = None, now: datetime | None = None) -> IssueEvent:
    """The event that moves ``issue`` by ``trigger``; raises if the table or a guard forbids it."""
    data = dict(data or {})
    state = issue.state
    row = _row(trigger, state)
    if row is None:
        reason = "" if trigger in TRIGGERS else f"'{trigger}' is not an event the machine knows"
        raise IllegalTransition(issue.id, state, trigger, allowed(state), reason)
    if row.guard is not None:
        why = row.guard(issue, data)
        if why:
            raise GuardFailed(issue.id, state, trigger, allowed(state), why)
    at = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    return IssueEvent(version=issue.version + 1, trigger=trigger, source=state, dest=row.dest,
                      at=at, actor=actor, data=data)


def transition_table() -> list[dict[str, str]]:
    """The table as rows (for docs and ``ultrawork issues show``)."""
    return [{"event": t.trigger, "from": t.source, "to": t.dest,
             "guard": getattr(t.guard, "__name__", "") if t.guard else "", "why": t.why} for t in TRANSITIONS]
