"""What a run produced: each agent's outcome, the reviewer's verdicts and the run's result.

Plain data, carried as data: the review, the integration, the backlog sweep and
the command line read these instead of parsing messages."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class AgentOutcome(BaseModel):
    role: str
    status: Literal["succeeded", "failed"]
    branch: str
    commits: list[str] = Field(default_factory=list)
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    duration: float = 0.0
    steps: int = 0
    retries: int = 0
    sandboxes_created: int = 0
    errors: list[str] = Field(default_factory=list)
    recoveries: list[str] = Field(default_factory=list)
    plan_path: str = ""
    plan_summary: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    setup_seconds: float | None = None  # from its start (a writer prepared ahead: its prompt) to its first command
    round: int = 1                     # 2, 3 ...: the reviewer sent it back (revise) or retried it
    model: str | None = None                      # provider:model of a model agent; None for a command
    usage: dict | None = None                     # a model agent's requests, tokens, tool calls, seconds, cost
    findings: list[str] = Field(default_factory=list)   # what a research agent found, for the writers
    egress: str | None = None          # behind the gateway: allowed / refused counts and hosts (no header values)


class RunOutcome(StrEnum):
    """How a run ended (the one list of these words)."""

    INTEGRATED = "integrated"                  # approved work merged (and its pull request opened)
    CONFLICT = "conflict"                      # some approved branches conflict: the others are merged
    NOTHING_APPROVED = "nothing-approved"      # every agent rejected
    CHECK_FAILED = "check-failed"              # the checks failed on the integration branch: no pull request
    REVIEW_TIMED_OUT = "review-timed-out"      # nobody reviewed in time
    ABORTED = "aborted"                        # the reviewer aborted the run


def outcome_message(outcome: "RunOutcome", message: str) -> str:
    """The message of a finished run's Completed state: its outcome first, so any machine that reaches
    the Prefect server reads how the run ended without its records (the sweep, a remote status)."""
    return f"{outcome}: {message}"[:1000]


def outcome_in_message(message: str | None) -> "RunOutcome | None":
    """The outcome a Completed state's message starts with (:func:`outcome_message`), or None."""
    word = (message or "").split(":", 1)[0].strip()
    return RunOutcome(word) if word in RunOutcome._value2member_map_ else None


Decision = Literal["approve", "reject", "revise", "retry", "abort", "later"]


class Verdict(BaseModel):
    """One reviewer decision: approve or reject the agent's branch; revise (run it again with the
    comment) or retry (a failed agent, again); abort the whole run; later: decide it in the next round."""

    role: str
    approved: bool
    comment: str = ""
    decision: Decision | None = None      # None in records made before decisions had names

    @property
    def choice(self) -> Decision:
        return self.decision or ("approve" if self.approved else "reject")


class CheckResult(BaseModel):
    """The repository's own check command, run on the integration branch in a sandbox."""

    command: list[str]
    exit_code: int
    passed: bool
    duration: float = 0.0
    output_tail: str = ""


class RunResult(BaseModel):
    run_id: str
    outcome: RunOutcome
    message: str
    target_repo: str
    integration_branch: str | None = None
    pull_request: str | None = None
    agents: list[AgentOutcome] = Field(default_factory=list)
    verdicts: list[Verdict] = Field(default_factory=list)
    merged: list[str] = Field(default_factory=list)
    left_out: dict[str, list[str]] = Field(default_factory=dict)   # role -> its conflicting files
    check: CheckResult | None = None
    attempts: list[dict] = Field(default_factory=list)   # each writer's attempts, ranked (agents.attempts)

    @property
    def conflicts(self) -> list[str]:
        return sorted({f for files in self.left_out.values() for f in files})
