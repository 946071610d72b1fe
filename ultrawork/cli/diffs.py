"""``ultrawork diff RUN [ROLE]``: what each agent changed, as the reviewer sees it at the decision."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from ultrawork.untrusted import visible

if TYPE_CHECKING:
    from ultrawork.workspace.review_diff import AgentDiff

STYLES = (("+++", "bold"), ("---", "bold"), ("diff --git", "bold"), ("@@", "cyan"), ("+", "green"), ("-", "red"))


def findings(run, role: str) -> str:
    """A read-only agent's report: its Plan.md findings (as the review form shows them)."""
    from ultrawork.runtime.environment import plan_excerpt

    from ultrawork.untrusted import read_agent_file

    try:
        plan = read_agent_file(run.agent(role).plan_path, 1 << 20)      # the agent's file: read up to a cap
    except Exception as exc:  # noqa: BLE001 - no workspace: say why
        return f"no Plan.md: {exc}"
    text = plan.text if plan is not None else ""
    return visible(plan_excerpt(text, limit=4000)) or "(Plan.md has no findings)"


def agent_report(run, role: str) -> tuple[AgentDiff | None, str]:
    """(the diff, or None when the agent changed nothing; the text to print)."""
    from ultrawork.workspace.review_diff import diff_or_error   # the workspace and sandbox modules: not on
                                                                 # every command's start
    diff = diff_or_error(run, role)
    if isinstance(diff, str):
        return None, diff + "\n"
    if diff.empty:
        return None, f"{role}: no change on {diff.branch}; its findings:\n\n{findings(run, role)}\n"
    return diff, diff.text()


def coloured(text: str) -> Text:
    """Diff lines coloured by their kind (a Text, so nothing in the patch is read as markup)."""
    out = Text()
    for line in text.splitlines(keepends=True):
        style = next((s for prefix, s in STYLES if line.startswith(prefix)), "")
        out.append(line, style=style)
    return out


def diff_command(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    role: Annotated[Optional[str], typer.Argument(help="One agent (default: every agent of the run).")] = None,
) -> None:
    """Print each agent's change: git diff --stat and the patch (bounded; the command for the rest is named).

    Agents that changed nothing (read-only roles) show their findings instead.
    """
    from ultrawork.cli.runs import RunNotFound, open_run

    try:
        run = open_run(run_id)
        texts = (agent_report(run, name)[1] for name in ([role] if role else run.roles()))
    except RunNotFound:                     # a run another machine ran: its diff and Plan.md artifacts
        from ultrawork.cli.remote_runs import agent_reports
        from ultrawork.local_server.manager import ensure_server

        ensure_server()
        texts = agent_reports(run_id, role)
    console = Console(highlight=False, soft_wrap=True, emoji=False)
    for n, text in enumerate(texts):
        if n:
            text = "\n" + text
        if console.is_terminal:
            console.print(coloured(text), end="")
        else:
            sys.stdout.write(text)
