"""``ultrawork sweep`` and ``ultrawork issues list|show|move``: the backlog from the command line.

Issue commands on a directory backlog need no Prefect at all; a GitHub backlog
and the sweep talk to the shared Prefect server (imported inside the commands).
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from ultrawork.untrusted import rich_markup, rich_text

issues_app = typer.Typer(help="Backlog issues: their state and history.", no_args_is_help=True)
out = Console(emoji=False)              # issue titles and tasks come from GitHub: text, never markup
err = Console(stderr=True, soft_wrap=True, emoji=False)

BACKLOG_HELP = "A directory holding issues/<id>/issue.yaml (default: $ULTRAWORK_HOME/backlog) or github:OWNER/NAME."
Backlog = Annotated[Optional[str], typer.Option("--backlog", help=BACKLOG_HELP)]


def _open(spec: str | None):
    from ultrawork.backlog import default_backlog, open_backlog

    spec = spec or default_backlog()
    github = None
    if spec.startswith("github:"):
        import asyncio

        from ultrawork.local_server.manager import ensure_server
        from ultrawork.runtime.config import load_config

        ensure_server(say=lambda msg: err.print(f"[dim]{msg}[/]"))
        github = asyncio.run(load_config()).github
    return open_backlog(spec, github=github)


def _last(issue) -> str:
    if not issue.history:
        return ""
    e = issue.history[-1]
    return f"{e.trigger} {e.at}"


@issues_app.command("list")
def issues_list(
    backlog: Backlog = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every issue with its state and version; unreadable issues are listed with the reason."""
    source = _open(backlog)
    issues, problems = source.scan()
    if as_json:
        print(json.dumps({"issues": [{"id": i.id, "state": i.state, "version": i.version, "title": i.title,
                                      "repo": i.repo} for i in issues],
                          "errors": [str(p) for p in problems]}, indent=2))
        return
    table = Table("ID", "STATE", "VERSION", "TITLE", "LAST EVENT", title=source.name)
    for i in issues:
        title = i.title or (i.task.strip().splitlines()[0][:60] if i.task.strip() else "")
        table.add_row(rich_text(i.id, one_line=True), i.state, str(i.version), rich_text(title, one_line=True),
                      rich_text(_last(i), one_line=True))
    out.print(table if issues else f"no issues in {source.name}")
    for problem in problems:
        err.print(f"[yellow]unreadable:[/] {rich_markup(str(problem))}", highlight=False)


@issues_app.command("show")
def issues_show(
    issue_id: Annotated[str, typer.Argument(help="The issue's id (its directory name, or the GitHub issue number).")],
    backlog: Backlog = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One issue: what it asks, its state, and its full history."""
    from ultrawork.backlog import allowed

    issue = _open(backlog).get(issue_id)
    if as_json:
        print(json.dumps({**issue.model_dump(mode="json"), "state": issue.state, "version": issue.version},
                         indent=2))
        return
    out.print(f"[bold]{rich_markup(issue.id)}[/] {rich_markup(issue.title or '')}  ·  state [bold]{issue.state}[/]  ·  version {issue.version}")
    out.print(rich_text(f"repo: {issue.repo or '-'}  ·  base: {issue.base}  ·  agents: "
                        f"{', '.join(issue.agents or []) or 'auto'}", one_line=True))
    if issue.task:
        out.print(rich_text(f"task: {issue.task.strip().splitlines()[0][:200]}", one_line=True))
    if issue.history:
        out.print("history:")
    for e in issue.history:
        out.print(f"  v{e.version}  {e.at}  [bold]{e.trigger}[/]  {e.source} -> {e.dest}  by "
                  f"{rich_markup(e.actor or '?')}",
                  highlight=False)
        for key, value in e.data.items():
            if key != "reason" or value != e.data.get("message"):
                out.print(rich_text(f"        {key}: {str(value)[:200]}", one_line=True), highlight=False)
    out.print(f"next: {', '.join(allowed(issue.state)) or 'nothing (final)'}")


@issues_app.command("move")
def issues_move(
    issue_id: Annotated[str, typer.Argument(help="The issue's id.")],
    event: Annotated[str, typer.Argument(help="The event to fire, e.g. start, advance, requeue, drop, reopen.")],
    backlog: Backlog = None,
    reason: Annotated[str, typer.Option(help="Why (drop and release need one).")] = "",
) -> None:
    """Move an issue by one event of the state machine (refused when the machine forbids it)."""
    import getpass

    source = _open(backlog)
    data = {"reason": reason} if reason else {}
    issue = source.apply(source.get(issue_id), event, actor=getpass.getuser(), **data)
    out.print(f"issue {issue.id}: {event} -> {issue.state} (version {issue.version})")


def sweep_command(
    backlog: Backlog = None,
    limit: Annotated[Optional[int], typer.Option(help="Take at most this many issues.")] = None,
    concurrency: Annotated[int, typer.Option(help="Runs doing agent work at once.")] = 2,
    deployment: Annotated[str, typer.Option(help="The Sisyphus deployment to run.")] = "sisyphus/sisyphus",
    agents: Annotated[Optional[str], typer.Option(help="Roles for issues that name none (comma-separated).")] = None,
    review_timeout: Annotated[str, typer.Option(help="How long each run waits for its review: 90s, 30m, 2h, 1d.")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="Print the sweep's result as JSON.")] = False,
) -> None:
    """Sweep a backlog now: one Sisyphus run per eligible issue, on the workers of the deployment's pool."""
    import asyncio

    from ultrawork.local_server.manager import ensure_server

    ensure_server(say=lambda msg: err.print(f"[dim]{msg}[/]"))
    from ultrawork.flows.sweep import sweep

    from ultrawork.cli.main import parse_duration
    from ultrawork.untrusted import install_log_escaping

    install_log_escaping()                     # the sweep's runs log what agents and issues wrote

    roles = [r.strip() for r in agents.split(",") if r.strip()] if agents else None
    result = asyncio.run(sweep(backlog=backlog, limit=limit, concurrency=concurrency, deployment=deployment,
                               agents=roles, review_timeout=round(parse_duration(review_timeout))))
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    table = Table("ISSUE", "OUTCOME", "STATE", "RUN", "NOTE", title=f"sweep of {result.backlog}")
    for row in [*result.swept, *result.skipped]:
        table.add_row(*(rich_text(str(cell), one_line=True) for cell in (
            row.issue, row.outcome or "skipped", row.state, row.run_id or "", row.note[:80])))
    out.print(table)
