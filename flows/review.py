"""The human review: the form shown in the Prefect UI and what its answer means.

One approve/reject choice (required: no default, so a form left blank is
rejected by the server and the run stays paused) and one optional comment per
agent that ran, under a markdown summary of every agent's outcome.
"""

from __future__ import annotations

from typing import Literal

from prefect.input import RunInput
from pydantic import BaseModel, Field, create_model

from agents.outcome import AgentOutcome

Choice = Literal["approve", "reject"]
SUMMARY_LIMIT = 1500


class ReviewDecision(RunInput):
    """Per-agent fields are added for each run by :func:`review_form`."""


class Verdict(BaseModel):
    role: str
    approved: bool
    comment: str = ""


def _row(o: AgentOutcome) -> str:
    icon = "✅" if o.status == "succeeded" else "❌"
    return (f"| **{o.role}** | {icon} {o.status} | {o.files_changed} | +{o.insertions} / -{o.deletions} "
            f"| {o.duration:.1f}s | {o.retries} | `{o.branch}` |")


def review_description(run_id: str, task: str, outcomes: list[AgentOutcome]) -> str:
    """The markdown shown above the approval form."""
    first_line = task.strip().splitlines()[0][:200] if task.strip() else ""
    lines = [
        f"## Review run `{run_id}`",
        f"**Task:** {first_line}",
        "",
        "Approve the agents whose work should be merged into the integration branch; reject the rest.",
        "",
        "| Agent | Outcome | Files changed | Lines | Duration | Retries | Branch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[_row(o) for o in outcomes],
        "",
    ]
    for o in outcomes:
        summary = o.plan_summary.strip() or "_Plan.md has no summary._"
        if o.errors:
            summary += "\n\n**Errors:**\n" + "\n".join(f"- {e[:300]}" for e in o.errors)
        if len(summary) > SUMMARY_LIMIT:
            summary = summary[:SUMMARY_LIMIT] + "\n\n… (truncated; the full Plan.md is an artifact of this run)"
        lines += [f"<details><summary><b>{o.role}</b>: Plan.md summary</summary>", "", summary, "", "</details>", ""]
    return "\n".join(lines)


def review_form(run_id: str, task: str, outcomes: list[AgentOutcome]) -> type[ReviewDecision]:
    """A RunInput class with one choice and one comment per agent that ran."""
    fields: dict = {}
    for o in outcomes:
        name = o.role.capitalize()
        fields[o.role] = (Choice, Field(
            title=f"{name}: approve or reject",
            description=f"{name} {o.status}; {o.files_changed} file(s) changed on {o.branch}.",
        ))
        fields[f"{o.role}_comment"] = (str, Field("", title=f"{name}: comment (optional)",
                                                  description=f"Why you approve or reject {name}'s work."))
    model = create_model("ReviewDecision", __base__=ReviewDecision, **fields)
    model._description = review_description(run_id, task, outcomes)
    return model


def verdicts(decision: BaseModel, roles: list[str]) -> list[Verdict]:
    data = decision.model_dump()
    return [Verdict(role=r, approved=data[r] == "approve", comment=data.get(f"{r}_comment") or "") for r in roles]


def review_input(roles: list[str], approve: list[str], reject: list[str], comment: str = "") -> dict[str, str]:
    """The run input for a review given on the command line; every role must be decided once."""
    unknown = sorted((set(approve) | set(reject)) - set(roles))
    if unknown:
        raise ValueError(f"agent(s) {', '.join(unknown)} did not run in this run (it ran: {', '.join(roles)})")
    both = sorted(set(approve) & set(reject))
    if both:
        raise ValueError(f"agent(s) {', '.join(both)} both approved and rejected")
    missing = [r for r in roles if r not in approve and r not in reject]
    if missing:
        raise ValueError(f"agent(s) {', '.join(missing)} neither approved nor rejected")
    data = {r: ("approve" if r in approve else "reject") for r in roles}
    if comment:
        data.update({f"{r}_comment": comment for r in roles})
    return data
