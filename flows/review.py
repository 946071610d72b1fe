"""The human review: the form shown in the Prefect UI and what its answer means.

One approve/reject choice (required: no default, so a form left incomplete is
refused and the run stays paused) and one optional comment per agent that ran,
under a markdown summary: a table of every agent's outcome, then each agent's
Plan.md summary (collapsed where long).

Both Prefect UIs show this form. The newer one (``/v2``, where the server's
address leads) shows the summary above the fields; the older one (``/runs/...``
links) squeezes it out when the fields fill the dialog, so each decision
field's own description repeats that agent's numbers in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from prefect.input import RunInput
from pydantic import BaseModel, Field, create_model


from ultrawork.agents.outcome import AgentOutcome, Verdict
from ultrawork.untrusted import Untrusted, bounded_list, byte_len
from ultrawork.workspace.integration import integration_branch

Choice = Literal["approve", "reject"]
Revisable = Literal["approve", "reject", "revise", "later"]     # a finished agent, with rounds left
FailedChoice = Literal["retry", "reject", "approve", "abort", "later"]   # a failed agent (reject: continue without it)
FailedLastRound = Literal["reject", "approve", "abort"]
SUMMARY_LIMIT = 1500      # characters of one agent's Plan.md summary in the form
SHORT_SUMMARY = 400       # summaries up to this long (and a few lines) are shown open
FORM_PATCH_LINES = 80     # lines of each agent's patch in the form (the whole one is an artifact)
MAX_ERRORS = 20           # errors of one agent listed in the form
ERROR_CHARS = 300         # characters of each


class ReviewDecision(RunInput):
    """Per-agent fields are added for each run by :func:`review_form`."""


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s"


def _text(value: str, limit: int | None = None) -> str:
    """Text of an agent (or a task's author) inside the host's markdown: shown as written, never markup."""
    return Untrusted(value).markdown(limit)


def agent_facts(o: AgentOutcome) -> str:
    """One sentence a reviewer reads next to the decision."""
    retries = "no retries" if o.retries == 0 else _count(o.retries, "retry", "retries")
    facts = (f"{o.status.capitalize()}: {_count(o.files_changed, 'file', 'files')} changed "
             f"(+{o.insertions} / -{o.deletions} lines) in {_duration(o.duration)}, {retries}; branch {o.branch}.")
    if o.model and o.usage:
        cost = "" if o.usage.get("cost") is None else f", cost {o.usage['cost']:g}"
        facts += (f" Model {o.model}: {o.usage.get('requests', 0)} request(s), {o.usage.get('input_tokens', 0)} "
                  f"input / {o.usage.get('output_tokens', 0)} output tokens{cost}.")
    if o.egress:
        facts += f" {_text(o.egress[0].upper() + o.egress[1:], 500)}."
    if o.round > 1:
        facts += f" Round {o.round}."
    if o.status != "succeeded":
        kinds = sorted({_text(e.split(":", 1)[0], 80) for e in o.errors[:MAX_ERRORS] if ":" in e})
        facts += (f" Failed with {', '.join(kinds) or 'an error'}; the tail of its output is in the summary above. "
                  "Retry runs it again (with your comment), reject continues without it, approve merges "
                  "whatever it committed, abort ends the run.")
    return facts


def _row(o: AgentOutcome) -> str:
    outcome = o.status if o.status == "succeeded" else f"**{o.status}**"
    return (f"| **{o.role}** | {outcome} | {o.files_changed} | +{o.insertions} / -{o.deletions} "
            f"| {_duration(o.duration)} | {o.retries} |")


def _summary(o: AgentOutcome) -> str:
    """The agent's findings as written (a fenced block: nothing in it is markup), then its errors."""
    text = o.plan_summary.strip()
    if not text:
        shown = "_Plan.md has no summary._"
    else:
        shown = Untrusted(text).block(limit=SUMMARY_LIMIT)
        if byte_len(text) > SUMMARY_LIMIT:
            shown += "\n\n… (shortened; the whole Plan.md is an artifact of this run)"
    if o.errors:
        errors = bounded_list(o.errors, MAX_ERRORS, ERROR_CHARS)
        shown += "\n\n**Errors:**\n\n" + "\n".join(f"- {_text(e)}" for e in errors)
    return shown


def review_description(run_id: str, task: str, outcomes: list[AgentOutcome],
                       changes: dict[str, str] | None = None, ranking: str = "") -> str:
    """The markdown shown above the approval form (``changes``: role -> its diff, see :func:`agent_changes`)."""
    first_line = task.strip().splitlines()[0] if task.strip() else "(no task text)"
    lines = [
        f"### Review run `{run_id}`",
        "",
        f"**Task:** {_text(first_line, 200)}",
        "",
        f"Decide for every agent: **approve** merges its branch (`ultrawork/{run_id}/<agent>`) into "
        f"`{integration_branch(run_id)}`, **reject** leaves it out. Every branch is kept either way.",
        "",
        "| Agent | Outcome | Files changed | Lines +/- | Duration | Retries |",
        "| --- | --- | --- | --- | --- | --- |",
        *[_row(o) for o in outcomes],
        "",
    ]
    if ranking:
        lines += [ranking, ""]
    if changes:
        lines += ["#### What each agent changed", ""]
        for role, markdown in changes.items():
            lines += [f"<details open><summary><b>{role}</b>: its diff</summary>", "", markdown, "", "</details>", ""]
    lines += ["#### What each agent reported (Plan.md)", ""]
    for o in outcomes:
        summary = _summary(o)
        title = f"<b>{o.role}</b> ({o.status})"
        if len(summary) <= SHORT_SUMMARY and summary.count("\n") < 8:
            lines += [f"**{o.role}** ({o.status})", "", summary, ""]
        else:
            lines += [f"<details><summary>{title}: {_count(summary.count(chr(10)) + 1, 'line', 'lines')}"
                      "</summary>", "", summary, "", "</details>", ""]
    return "\n".join(lines)


def review_form(run_id: str, task: str, outcomes: list[AgentOutcome], checks: bool = False,
                changes: dict[str, str] | None = None, rounds_left: bool = False,
                attempts: list | None = None) -> type[ReviewDecision]:
    """A RunInput class with one choice and one comment per agent that ran.

    With ``rounds_left`` a finished agent can be sent back (revise) and a failed one retried;
    the comment is then added to its prompt. Any agent can then also be left for the next
    round's review (later): it does not run again, and is decided with the others next round. With ``attempts`` (each writer's ranked attempts,
    ``agents.attempts.AttemptRanking``) the ranking is shown and the best attempt of each writer
    is pre-selected (approve), the others rejected: the reviewer may pick another."""
    from ultrawork.agents.attempts import ranking_markdown

    preselect = {e.role: "approve" if e.rank == 1 else "reject" for r in attempts or [] for e in r.entries}
    fields: dict = {}
    for o in outcomes:
        name = o.role.capitalize()
        if o.status != "succeeded":
            choice = FailedChoice if rounds_left else FailedLastRound
        else:
            choice = Revisable if rounds_left else Choice
        words = get_args(choice)
        title = f"{name}: {', '.join(words[:-1])} or {words[-1]}"
        if preselect.get(o.role) in words:
            fields[o.role] = (choice, Field(preselect[o.role], title=title, description=agent_facts(o)))
        else:
            fields[o.role] = (choice, Field(title=title, description=agent_facts(o)))
        fields[f"{o.role}_comment"] = (str, Field(
            "", title=f"{name}: comment",
            description=f"Why you decide so on {name}'s work; kept in the run's record. With revise or retry, "
                        "it is added to the agent's prompt for its next round."))
    if checks:
        fields["open_pull_request_if_checks_fail"] = (bool, Field(
            False, title="Open the pull request even if the checks fail",
            description="The run's checks run on the integration branch before its pull request."))
    model = create_model("ReviewDecision", __base__=ReviewDecision, **fields)
    model._description = review_description(run_id, task, outcomes, changes,
                                            ranking=ranking_markdown(attempts) if attempts else "")
    return model


def verdicts(decision: BaseModel, roles: list[str]) -> list[Verdict]:
    data = decision.model_dump()
    return [Verdict(role=r, approved=data[r] == "approve", comment=data.get(f"{r}_comment") or "",
                    decision=data[r]) for r in roles]


def review_input(roles: list[str], approve: list[str], reject: list[str], comment: str = "",
                 again: dict[str, tuple[str, str]] | None = None, abort: bool = False,
                 failed: list[str] | None = None) -> dict[str, str]:
    """The run input for a review given on the command line; every role is decided at most once.

    ``again``: role -> ("revise" or "retry", its comment) for the agents sent back; with one sent
    back, the roles not decided here are left for the next round's review ("later");
    ``abort``: the run is aborted -- a decision of the agents that ``failed`` (the others are rejected)."""
    again = again or {}
    if abort:
        if not failed:
            raise ValueError("abort is a decision for a failed agent and none failed; reject every agent instead")
        return ({r: "abort" if r in failed else "reject" for r in roles}
                | ({f"{r}_comment": comment for r in roles} if comment else {}))
    chosen = [*approve, *reject, *again]
    unknown = sorted(set(chosen) - set(roles))
    if unknown:
        raise ValueError(f"agent(s) {', '.join(unknown)} did not run in this run (it ran: {', '.join(roles)})")
    twice = sorted({r for r in chosen if chosen.count(r) > 1})
    if twice:
        raise ValueError(f"agent(s) {', '.join(twice)} decided more than once")
    missing = [r for r in roles if r not in chosen]
    if missing and not again:
        raise ValueError(f"agent(s) {', '.join(missing)} neither approved nor rejected (or send one back with "
                         "revise or retry: the others are then decided in the next round)")
    data = {r: ("approve" if r in approve else "reject" if r in reject else "later") for r in roles if r not in again}
    data.update({r: kind for r, (kind, _) in again.items()})
    if comment:
        data.update({f"{r}_comment": comment for r in roles})
    data.update({f"{r}_comment": text for r, (_, text) in again.items() if text})
    return {r: data[r] for r in roles} | {k: v for k, v in data.items() if k not in roles}


async def agent_changes(run_id: str, outcomes: list[AgentOutcome]) -> dict[str, str]:
    """Role -> the markdown of its diff for the form (bounded, linking the whole-diff artifact), for
    every agent that changed something; each diff is also published as an artifact. Agents that
    changed nothing (read-only roles) are left out: their findings are in the Plan.md section."""
    import asyncio

    from ultrawork.runtime.artifacts import publish_diff
    from ultrawork.workspace.review_diff import diff_or_error
    from ultrawork.workspace.superproject import RunSuperproject

    def read() -> dict:
        run = RunSuperproject.open(run_id)
        return {o.role: diff_or_error(run, o.role) for o in outcomes}

    diffs = {role: d for role, d in (await asyncio.to_thread(read)).items() if not isinstance(d, str) and not d.empty}
    links = await asyncio.gather(*(publish_diff(run_id, role, d.markdown()) for role, d in diffs.items()))
    return {role: d.markdown(max_lines=FORM_PATCH_LINES) + (f"\n[The whole diff as an artifact]({link})\n" if link else "")
            for (role, d), link in zip(diffs.items(), links)}


def frees_the_worker() -> bool:
    """A run from a deployment suspends for its review (its worker is free until the review comes);
    a run started here (``ultrawork run``, a test) pauses in its process, and so does a run another
    flow waits on (a backlog sweep's): Prefect cannot suspend a child run."""
    from prefect.context import get_run_context

    flow_run = get_run_context().flow_run
    return flow_run.deployment_id is not None and flow_run.parent_task_run_id is None


def decision_subject(decided: list[Verdict]) -> str:
    """The ledger's line for a decision: who was approved, rejected, sent back."""
    parts = []
    for choice, word in (("approve", "approved"), ("reject", "rejected"), ("revise", "sent back"),
                         ("retry", "retried"), ("later", "left for the next round"), ("abort", "aborted by")):
        roles = [v.role for v in decided if v.choice == choice]
        if roles or choice in ("approve", "reject"):
            parts.append(f"{word} {', '.join(roles) or 'none'}")
    return "review: " + "; ".join(parts)


@dataclass
class ReviewOutcome:
    decided: list[Verdict] | None          # None: nobody reviewed in time
    open_anyway: bool = False               # open the pull request even when the checks fail


async def review_run(run_id: str, ledger, task: str, outcomes: list[AgentOutcome],
                     timeout: float, checks: bool = False, round_no: int = 1,
                     rounds_left: bool = False, attempts: list | None = None) -> ReviewOutcome:
    """Ask a person to decide every agent (the form in the UI, ``ultrawork review``), or take the
    decision recorded before a crash; the request and the decision are stages of the ledger.
    ``round_no``: the review round (a decision of an earlier round is not this round's)."""
    from prefect.exceptions import FlowPauseTimeout     # here, not at import: importing the form
    from prefect.flow_runs import pause_flow_run, suspend_flow_run   # helpers must not load Prefect's settings

    roles = [o.role for o in outcomes]
    done = ledger.read("review")
    if done.get("state") == "decided" and done.get("round", 1) == round_no:
        return ReviewOutcome([Verdict.model_validate(v) for v in done["verdicts"]], bool(done.get("open_anyway")))
    from ultrawork.runtime.logs import get_logger

    asked = done.get("state") == "requested" and done.get("round", 1) == round_no   # a suspended run, continued
    changes: dict[str, str] = {}
    try:
        if not (asked and frees_the_worker()):     # a continued suspension only reads the decision
            changes = await agent_changes(run_id, outcomes)
    except Exception as exc:  # noqa: BLE001 - the review goes on without the diffs; they are shown by `ultrawork diff`
        get_logger().warning("the agents' diffs could not be shown in the review form: %s", exc)
    if not asked:
        await ledger.arecord("review", {"state": "requested", "roles": roles, "round": round_no},
                             "review requested" + (f" (round {round_no})" if round_no > 1 else ""))
    get_logger().info("run %s paused for review: approve or reject each agent in the UI or with "
                      "'ultrawork review %s --approve ROLES --reject ROLES'; see each change with "
                      "'ultrawork diff %s'", run_id, run_id, run_id)
    try:
        form = review_form(run_id, task, outcomes, checks, changes, rounds_left=rounds_left, attempts=attempts)
        key = "review" if round_no == 1 else f"review-{round_no}"
        if frees_the_worker():
            from ultrawork.tasks.egress import gateway_removed

            await gateway_removed(run_id)          # nothing of the run's is left being removed when it ends
            # the process ends here; the review reschedules the run, which continues from the ledger
            # and gets the decision from this same call (the same key)
            decision = await suspend_flow_run(wait_for_input=form, timeout=round(timeout), key=key)
        else:
            decision = await pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=1, key=key)
    except FlowPauseTimeout:
        await ledger.arecord("review", {"state": "timed-out", "round": round_no}, "review timed out")
        return ReviewOutcome(None)
    decided = verdicts(decision, roles)
    open_anyway = bool(getattr(decision, "open_pull_request_if_checks_fail", False))
    await ledger.arecord("review", {"state": "decided", "verdicts": [v.model_dump() for v in decided],
                                    "open_anyway": open_anyway, "round": round_no}, decision_subject(decided))
    return ReviewOutcome(decided, open_anyway)
