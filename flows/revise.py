"""Review rounds: a reviewer sends an agent back with a comment (revise), or runs a failed one again
(retry); that agent runs again on its branch with the comment added to its prompt, and the run
pauses for review again, with every agent to decide: an agent a reviewer left for later ("later")
is not run again, it is decided in that next review.

Every round is in the run's ledger (``rounds.json``: the round and who runs again with which
comment; ``outcomes/<role>.json`` carries the round its outcome belongs to), so a run resumed in
the middle of a round reruns only the agents of that round that have not finished it. Rounds are
limited: in the last one the form offers approve, reject (and abort) only.
"""

from __future__ import annotations

import asyncio

from ultrawork.agents.outcome import AgentOutcome
from ultrawork.agents.profiles import AgentProfile
from ultrawork.failpoints import failpoint
from ultrawork.flows.agent import agent
from ultrawork.flows.review import ReviewOutcome, review_run
from ultrawork.runtime.artifacts import publish_results
from ultrawork.runtime.logs import get_logger
from ultrawork.runtime.naming import agent_tags
from ultrawork.tasks.egress import run_egress
from ultrawork.runtime.mcp_servers import run_mcp_servers
from ultrawork.workspace.ledger import RunLedger
from ultrawork.workspace.repo_guard import read_regular_file
from ultrawork.workspace.stages import Stage
from ultrawork.workspace.stages import subject as stage_subject

DEFAULT_ROUNDS = 3          # review rounds per run: the first review and up to two more
ROUND_HEADING = "\n\n# Review, round "


def round_prompt(first_prompt: str, comment: str, round_no: int) -> str:
    """The agent's prompt for a further round: its first prompt and the reviewer's comment."""
    said = comment.strip() or "(no comment: look at your work again and finish it)"
    quoted = "\n".join(f"> {line}" for line in said.splitlines())
    return (f"{first_prompt.rstrip()}{ROUND_HEADING}{round_no}\n\nA reviewer sent your work back. Your "
            f"earlier work is on your branch, already in /workspace. The reviewer's comment:\n\n{quoted}\n")


def first_prompt(ledger: RunLedger, role: str) -> str:
    """The prompt the agent ran with first (kept in the run's host-owned inbox)."""
    data = read_regular_file(ledger.path / "inbox" / role / "prompt.md", limit=1 << 20)
    if data is None:
        raise FileNotFoundError(f"the first prompt of {role} is not in {ledger.path / 'inbox' / role}")
    return data.decode("utf-8", "replace").split(ROUND_HEADING, 1)[0]      # a later round's prompt: its first part


async def rerun(run_id: str, ledger: RunLedger, profile: AgentProfile, comment: str, round_no: int) -> AgentOutcome:
    """One agent's further round: on its branch, its prompt plus the comment; the outcome is recorded."""
    role = profile.role
    done = ledger.outcome(role)
    if done is not None and done.get("round", 1) >= round_no:         # finished this round before a crash
        return AgentOutcome.model_validate(done)
    prompt = round_prompt(await asyncio.to_thread(first_prompt, ledger, role), comment, round_no)

    def start_round() -> None:
        """From the branch head (what a crash mid-round left is dropped), the round noted in Plan.md;
        the agent's setup then grants its sandbox the work tree again."""
        from ultrawork.workspace.superproject import RunSuperproject

        ws = RunSuperproject.open(run_id).agent(role)
        ws.reset_worktree()
        ws.plan.append_note(f"round {round_no}: the reviewer sent this agent back: {comment or '(no comment)'}",
                            kind=f"round {round_no}")
    await asyncio.to_thread(start_round)
    with agent_tags(run_id, role):
        state = await agent(run_id, profile, prompt, round_no=round_no, return_state=True)
    outcome = await state.aresult(raise_on_failure=False)
    if not isinstance(outcome, AgentOutcome):
        raise RuntimeError(f"agent subflow ended without an outcome: {state.message}")
    usage = outcome.usage
    if done is not None and done.get("usage") and usage:      # a model agent: its rounds add up
        from ultrawork.model_agent.accounting import total_usage

        usage = total_usage([done["usage"], usage]).model_dump()
    outcome = outcome.model_copy(update={"round": round_no, "usage": usage})
    await ledger.arecord(f"outcomes/{role}", outcome.model_dump(mode="json"),
                         stage_subject(role, Stage.OUTCOME_RECORDED, f"({outcome.status})"))
    failpoint("stage:round-agent-finished", role=role)
    return outcome


async def run_round(run_id: str, ledger: RunLedger, outcomes: list[AgentOutcome],
                    profiles: dict[str, AgentProfile]) -> list[AgentOutcome]:
    """The round the ledger names: its agents again (side by side), the others as they were."""
    state = ledger.read("rounds")
    again: dict[str, str] = state.get("again", {})
    round_no = state.get("round", 1)
    if not again:
        return outcomes
    get_logger().info("run %s: round %d: %s again", run_id, round_no, ", ".join(again))
    chosen = {role: profiles[role] for role in again}
    async with run_egress(run_id, chosen), run_mcp_servers(run_id, chosen):   # as in their first round
        redone = await asyncio.gather(*(rerun(run_id, ledger, profiles[role], comment, round_no)
                                        for role, comment in again.items()))
    by_role = {o.role: o for o in redone}
    outcomes = [by_role.get(o.role, o) for o in outcomes]
    await publish_results(run_id, outcomes)
    return outcomes


async def review_rounds(run_id: str, ledger: RunLedger, task: str, outcomes: list[AgentOutcome],
                        profiles: dict[str, AgentProfile], timeout: float, checks: bool = False,
                        max_rounds: int = DEFAULT_ROUNDS,
                        attempts: list | None = None) -> tuple[ReviewOutcome, list[AgentOutcome]]:
    """Review until every agent is approved, rejected or the run aborted (or nobody reviews in time);
    a review that sends agents back or leaves some for later is followed by another round."""
    round_no = ledger.read("rounds").get("round", 1)
    outcomes = await run_round(run_id, ledger, outcomes, profiles)      # a round a crash interrupted
    while True:
        review = await review_run(run_id, ledger, task, outcomes, timeout, checks, round_no=round_no,
                                  rounds_left=round_no < max_rounds, attempts=attempts)
        if review.decided is None or any(v.choice == "abort" for v in review.decided):
            return review, outcomes
        again = {v.role: v.comment for v in review.decided if v.choice in ("revise", "retry")}
        if not again and not any(v.choice == "later" for v in review.decided):
            return review, outcomes                  # every agent decided: approved or rejected
        round_no += 1
        history = ledger.read("rounds").get("history", []) + [{"round": round_no, "again": again}]
        await ledger.arecord("rounds", {"round": round_no, "again": again, "history": history},
                             f"round {round_no}: {', '.join(again) or 'nobody'} again")
        outcomes = await run_round(run_id, ledger, outcomes, profiles)
