"""The live per-agent display of ``ultrawork run`` and its terminal review prompt."""

from __future__ import annotations

import sys
import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ultrawork.cli.runs import RunNotFound, run_status

ICONS = {"queued": "·", "workspace created": "⎇", "plan created": "✎", "changes committed": "✔", "finalized": "■"}


def render(status) -> Table:
    table = Table(title=f"run {status.run_id}", expand=False)
    table.add_column("agent")
    table.add_column("stage")
    table.add_column("steps", justify="right")
    table.add_column("outcome")
    for agent in status.agents:
        icon = ICONS.get(agent.stage, "▶")
        outcome = agent.outcome or ""
        style = "green" if outcome == "succeeded" else "red" if outcome == "failed" else ""
        table.add_row(agent.role, f"{icon} {agent.stage}", str(agent.steps), f"[{style}]{outcome}[/]" if style else "")
    review = status.review or "not yet"
    table.caption = f"review: {review}" + (f" · integration: {status.integration}" if status.integration else "")
    return table


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

    def run(self) -> None:
        try:
            with Live(console=self.console, refresh_per_second=4, transient=False) as live:
                while not self.done.is_set():
                    status = self._status()
                    if status is not None:
                        live.update(render(status))
                        if status.review == "requested":
                            break
                    time.sleep(0.5)
            if self.done.is_set():
                return
            self.review(status)
        except BaseException as exc:  # shown by the caller
            self.error = exc

    def review(self, status) -> None:
        from ultrawork.cli.runs import ReviewRejected, submit_review

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
        approve, reject, comment = decision
        try:
            submit_review(self.run_id, approve, reject, comment)
            self.console.print(f"review sent: approved {', '.join(approve) or 'none'}; "
                               f"rejected {', '.join(reject) or 'none'}")
        except ReviewRejected as exc:
            self.console.print(f"[red]{exc}[/]")


def ask(console: Console, status) -> tuple[list[str], list[str], str]:
    """Ask approve/reject for each agent in the terminal."""
    approve, reject = [], []
    console.print(f"\n[bold]Review run {status.run_id}[/]: Plan.md files are in {status.path}/plans")
    for agent in status.agents:
        while True:
            answer = console.input(f"  {agent.role} ({agent.outcome or agent.stage}) — approve? [y/n] ").strip().lower()
            if answer in ("y", "yes", "n", "no"):
                (approve if answer.startswith("y") else reject).append(agent.role)
                break
    comment = console.input("  comment (optional): ").strip()
    return approve, reject, comment


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()
