"""The live per-agent display of ``ultrawork run`` and its terminal review prompt."""

from __future__ import annotations

import sys
import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ultrawork.cli.runs import RunNotFound, run_status
from ultrawork.failpoints import failpoint
from ultrawork.untrusted import rich_markup, rich_text
from ultrawork.workspace.stages import Stage

ICONS = {Stage.QUEUED: "·", Stage.WORKSPACE_CREATED: "⎇", Stage.PLAN_CREATED: "✎", Stage.CHANGES_COMMITTED: "✔",
         Stage.FINALIZED: "■"}


def render(status) -> Table:
    table = Table(title=f"run {status.run_id}", expand=False)
    table.add_column("agent")
    table.add_column("stage")
    table.add_column("steps", justify="right")
    table.add_column("outcome")
    models = any(getattr(a, "model", None) for a in status.agents)
    if models:
        for column in ("model", "requests", "tokens in/out", "cost"):
            table.add_column(column, justify="left" if column == "model" else "right")
    for agent in status.agents:
        icon = ICONS.get(agent.stage, "▶")
        outcome = agent.outcome or ""
        style = "green" if outcome == "succeeded" else "red" if outcome == "failed" else ""
        row = [rich_text(agent.role, one_line=True), rich_text(f"{icon} {agent.stage}", one_line=True),
               str(agent.steps), rich_text(outcome, one_line=True, style=style)]
        table.add_row(*row, *(usage_cells(agent.model, agent.usage) if models else []))
    total = getattr(status, "model_total", None)
    if models and total:
        planning = getattr(status, "planning", None)
        if planning:
            table.add_row("(planning)", "", "", "", *usage_cells("", planning))
        table.add_row("(run total)", "", "", "", *usage_cells("", total))
    review = status.review or "not yet"
    table.caption = rich_text(f"review: {review}" + (f" · integration: {status.integration}" if status.integration
                                                      else ""), one_line=True)
    return table


def usage_cells(model: str | None, usage: dict | None) -> list[str]:
    """model, requests, tokens in/out, cost (model names are data: escaped)."""
    from rich.markup import escape

    if not usage:
        return [escape(model or ""), "", "", ""]
    cost = usage.get("cost")
    return [escape(model or ""), str(usage.get("requests", 0)),
            f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}", "" if cost is None else f"{cost:g}"]


class RunDisplay(threading.Thread):
    """Polls the run superproject; shows progress; asks for the review when the run pauses."""

    def __init__(self, run_id: str, console: Console, interactive: bool, decide=None):
        super().__init__(daemon=True, name=f"display-{run_id}")
        self.run_id = run_id
        self.console = console
        self.interactive = interactive
        self.decide = decide  # callable(status) -> (approve, reject, comment) or None
        self.done = threading.Event()
        self.error: BaseException | None = None

    def _status(self):
        try:
            return run_status(self.run_id, with_state=False)
        except RunNotFound:
            return None

    REVIEW_ATTEMPTS = 5          # sending the review: tries, 2 s, 4 s, 8 s, 16 s apart

    def run(self) -> None:
        """Show progress until the run asks for its review, then decide and send it.

        A failed poll is shown and retried (the run record can be mid-commit); a review that cannot
        be sent is shown at once and retried; when it still cannot be sent, the driving command is
        interrupted with the reason, so a run never waits silently for a review nobody will send."""
        try:
            reviewed = 0                       # a run asks again after a round of agents sent back
            while (status := self._watch(reviewed)) is not None and not self.done.is_set():
                self._review_with_retries(status)
                reviewed = status.review_round
        except BaseException as exc:  # noqa: BLE001 - anything else: the command must not wait in silence
            self._give_up(exc)

    def _watch(self, reviewed: int = 0):
        shown_error, shown_url = None, False
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            while not self.done.is_set():
                try:
                    status = self._status()
                except Exception as exc:  # noqa: BLE001 - shown, then polled again
                    if str(exc) != shown_error:
                        shown_error = str(exc)
                        self.console.print(f"[yellow]progress: {type(exc).__name__}: {rich_markup(str(exc))} (retrying)[/]")
                    status = None
                if status is not None and status.url and not shown_url:
                    live.console.print(f"UI: {status.url}", highlight=False)    # where to watch and review it
                    shown_url = True
                if status is not None:
                    live.update(render(status))
                    if status.review == "requested" and status.review_round > reviewed:
                        return status
                self.done.wait(0.5)
        return None

    def _review_with_retries(self, status) -> None:
        for attempt in range(1, self.REVIEW_ATTEMPTS + 1):
            try:
                self.review(status)
                return
            except Exception as exc:  # noqa: BLE001 - shown at once, retried
                if attempt == self.REVIEW_ATTEMPTS or self.done.is_set():
                    raise
                self.console.print(f"[yellow]the review could not be sent ({type(exc).__name__}: {rich_markup(str(exc))}); "
                                   f"trying again in {2 ** attempt} s[/]")
                if self.done.wait(2 ** attempt):
                    return
                status = run_status(self.run_id, with_state=False)

    def _give_up(self, exc: BaseException) -> None:
        import _thread

        self.error = exc
        if self.done.is_set():
            return
        self.console.print(f"[red]the review of run {self.run_id} could not be sent: {type(exc).__name__}: "
                           f"{rich_markup(str(exc))}; "
                           f"stopping this command (the run is kept: 'ultrawork resume {self.run_id}')[/]")
        _thread.interrupt_main()

    def review(self, status) -> None:
        from ultrawork.cli.runs import submit_review

        roles = [a.role for a in status.agents]
        self.console.print()
        if self.decide is not None:
            decision = self.decide(status)
        elif self.interactive:
            decision = ask(self.console, status)
        else:
            self.console.print(f"run {self.run_id} is waiting for review: open it in the Prefect UI, or run\n"
                               f"  ultrawork review {self.run_id} --approve {','.join(roles)}\n"
                               f"  ultrawork review {self.run_id} --reject-all")
            return
        approve, reject, comment, *rest = decision
        again = rest[0] if rest else {}
        failpoint("review:send")
        submit_review(self.run_id, approve, reject, comment, again=again)
        self.console.print(f"review sent: approved {', '.join(approve) or 'none'}; "
                           f"rejected {', '.join(reject) or 'none'}"
                           + (f"; sent back {', '.join(again)}" if again else ""))


def ask(console: Console, status) -> tuple[list[str], list[str], str, dict]:
    """Ask approve/reject/revise for each agent in the terminal, its diff shown first."""
    from ultrawork.cli.diffs import agent_report, coloured
    from ultrawork.cli.runs import open_run

    approve, reject, again = [], [], {}
    console.print(f"\n[bold]Review run {status.run_id}[/]: Plan.md files are in {status.path}/plans")
    run = open_run(status.run_id)
    for agent in status.agents:
        console.print()
        console.print(coloured(agent_report(run, agent.role)[1]), end="", soft_wrap=True)
        while True:
            answer = console.input(f"  {rich_markup(agent.role)} ({rich_markup(agent.outcome or agent.stage)}) — approve? "
                                   "\\[y/n/r = send back with a comment] ").strip().lower()
            if answer in ("y", "yes", "n", "no"):
                (approve if answer.startswith("y") else reject).append(agent.role)
                break
            if answer in ("r", "revise", "retry"):
                kind = "retry" if agent.outcome == "failed" else "revise"
                again[agent.role] = (kind, console.input(f"  what should {agent.role} do? ").strip())
                break
    comment = console.input("  comment (optional): ").strip()
    return approve, reject, comment, again


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()
