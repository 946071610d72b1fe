"""The ``ultrawork`` command line.

Prefect is imported only by the commands that talk to runs, so sandbox
commands start fast.
"""

from __future__ import annotations

import json
from pathlib import Path
import re
import sys
import time
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ultrawork.cli.backlog import issues_app, sweep_command
from ultrawork.cli.diffs import diff_command
from ultrawork.cli.follow import logs_command
from ultrawork.cli.model import model_app
from ultrawork.cli.stopping import StopRequested, silence_console, stop_on_signals
from ultrawork.untrusted import install_log_escaping, rich_text

app = typer.Typer(help="Parallel AI coding agents in hardened sandboxes, orchestrated by Prefect.", no_args_is_help=True)
sandbox_app = typer.Typer(help="The sandbox image.", no_args_is_help=True)
sandboxes_app = typer.Typer(help="Sandboxes (containers) managed by ultrawork.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(sandboxes_app, name="sandboxes")
app.add_typer(issues_app, name="issues")
server_app = typer.Typer(help="The local Prefect server that run, status and review share.", no_args_is_help=True)
app.add_typer(server_app, name="server")
app.add_typer(model_app, name="model")
app.command("sweep")(sweep_command)
app.command("diff")(diff_command)
app.command("logs")(logs_command)

# Agent text (messages quoting file names, errors, output) is printed as ``Text`` or through
# ``ultrawork.untrusted.rich_markup``, never as markup; no ``:name:`` emoji codes either.
out = Console(emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 30m, 2h or 1d")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def fail(message: str, code: int = 1) -> None:
    """The message may quote an agent (an error naming its file): printed as text, escaped."""
    err.print(Text.assemble(("error:", "bold red"), " ", rich_text(message)), highlight=False)
    raise typer.Exit(code)


def _engine():
    from ultrawork.sandbox import SandboxEngine

    return SandboxEngine()


@sandbox_app.command("build")
def sandbox_build(
    tag: Annotated[Optional[str], typer.Option(help="Image tag (default: the version this release uses).")] = None,
    method: Annotated[str, typer.Option(help="auto, offline (debootstrap + import) or dockerfile.")] = "auto",
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Do nothing when the image exists.")] = False,
    agent: Annotated[Optional[str], typer.Option(help="Also build this coding-agent CLI's image on top: "
                                                      "claude-code, codex or opencode (cached by its inputs).")] = None,
) -> None:
    """Build the sandbox image (python3, git, user 1000, /workspace), and with --agent a CLI's image on it."""
    import docker.errors

    from ultrawork.sandbox.agent_image import AGENT_CLIS, build_agent_image
    from ultrawork.sandbox.image import build_image
    from ultrawork.sandbox.spec import DEFAULT_IMAGE

    tag = tag or DEFAULT_IMAGE
    if method not in ("auto", "offline", "dockerfile"):
        fail(f"--method must be auto, offline or dockerfile, not {method!r}", 2)
    if agent is not None and agent not in AGENT_CLIS:
        fail(f"--agent must be one of {', '.join(AGENT_CLIS)}, not {agent!r}", 2)
    say = lambda line: err.print(f"[dim]{line}[/]", highlight=False)  # noqa: E731
    client = _engine().client
    try:
        client.images.get(tag)
        present = True
    except docker.errors.ImageNotFound:
        present = False
    if present and (if_missing or agent):
        err.print(f"sandbox image {tag} is present")
    else:
        started = time.monotonic()
        used = build_image(tag, method, say=say)
        err.print(f"built {tag} ({used}) in {time.monotonic() - started:.0f}s")
    if agent:
        built = build_agent_image(agent, base=tag, say=say)
        err.print(f"agent image {built.tag} " + ("is up to date" if built.cached else f"built in {built.seconds:.0f}s"))


@sandboxes_app.command("list")
def sandboxes_list(
    run: Annotated[Optional[str], typer.Option(help="Only this run's sandboxes.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the containers ultrawork manages."""
    infos = _engine().list(run_id=run)
    if as_json:
        rows = [
            {"id": i.id, "name": i.name, "run": i.run_id, "agent": i.role, "status": i.status,
             "image": i.image, "age_seconds": round(i.age), "owner": i.owner}
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return
    if not infos:
        out.print("no ultrawork sandboxes")
        return
    table = Table("ID", "RUN", "AGENT", "STATUS", "AGE", "IMAGE")
    for i in infos:
        table.add_row(i.id[:12], i.run_id, i.role, i.status, f"{i.age:.0f}s", i.image)
    out.print(table)


@sandboxes_app.command("reap")
def sandboxes_reap(
    all_: Annotated[bool, typer.Option("--all", help="Remove every managed sandbox, live runs included.")] = False,
    older_than: Annotated[Optional[str], typer.Option(help="Also remove sandboxes older than this (e.g. 2h).")] = None,
) -> None:
    """Remove what inactive runs left: sandboxes, clones of finished runs, temporary checkouts.

    Branches and Plan.md files are kept.
    """
    from ultrawork.sandbox.reaper import reap

    age = parse_duration(older_than) if older_than else None
    report = reap(_engine(), all=all_, older_than=age)
    for info in report.containers:
        out.print(f"removed sandbox {info.name} (run {info.run_id}, agent {info.role})")
    for path in report.clones + report.checkouts:
        out.print(f"removed {path}")
    for path in report.disk_caps:
        out.print(f"released the disk cap of {path}")
    out.print(f"{len(report.containers)} sandbox(es), {len(report.clones)} clone(s), "
              f"{len(report.checkouts)} checkout(s), {len(report.volumes)} leftover volume(s) removed, "
              f"{len(report.disk_caps)} disk cap(s) released")


@sandboxes_app.command("disk")
def sandboxes_disk(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """How this host bounds what agents write (loop-mounted images, or a monitor), and the caps in use."""
    from ultrawork.sandbox import disk
    from ultrawork.sandbox.disk_use import usage

    backend, caps = disk.disk_backend(), disk.records()
    if as_json:
        print(json.dumps({"backend": backend.kind, "why": backend.why, "caps": [
            {"path": str(c.path), "kind": c.kind, "run": c.run_id, "size_mb": c.size_mb, "backend": c.backend,
             "used_bytes": usage(c)} for c in caps]}, indent=2))
        return
    out.print(backend.sentence(), markup=False)
    if caps:
        table = Table("RUN", "KIND", "CAP", "USED", "FOLDER")
        for c in caps:
            table.add_row(c.run_id, c.kind, f"{c.size_mb} MiB", f"{usage(c) / 2**20:.1f} MiB", str(c.path))
        out.print(table)


def start_run(repo: str, task: str, agents: Optional[list[str]], base: str, commands: dict[str, list[str]],
              review_timeout: int, detach: bool, decide=None, agent_profiles: Optional[dict[str, str]] = None,
              as_json: bool = False, model_settings: Optional[str] = None,
              role_models: Optional[dict[str, str]] = None, extra: Optional[dict] = None) -> None:
    """Validate, make sure the shared server runs, then run (or launch) the Sisyphus flow
    (``extra``: more of its parameters, e.g. check_command, attempts)."""
    from ultrawork.agents.attempts import check_attempts, with_attempts
    from ultrawork.agents.profiles import classify
    from ultrawork.agents.team import WRITER_ROLES, base_role, with_instances
    from ultrawork.cli.request import check_request, new_run_id
    import os

    from ultrawork.local_server.manager import ensure_server, start_server

    defaults = {"attempts": 1, "auto_select": False}
    extra = {k: v for k, v in (extra or {}).items() if v is not None and not (k in defaults and v == defaults[k])}
    try:
        check_attempts(extra.get("attempts", 1), extra.get("attempt_profiles"), extra.get("auto_select", False),
                       extra.get("check_command"))
        names = agents
        if extra.get("attempts", 1) > 1:          # the attempts' own commands are checked with the rest
            names = agents or classify(task)
            names, _ = with_attempts(names, {a for a in names if base_role(a) in WRITER_ROLES},
                                     extra["attempts"], None, None)
        check_request(task, repo, names, base, commands, profiles=with_instances({}, names))   # frontend-2 ...
    except ValueError as exc:
        fail(str(exc), 2)
    say = lambda msg: err.print(f"[dim]{msg}[/]")  # noqa: E731
    if not detach:       # the server starts while this process imports the flow (Prefect: seconds)
        start_server(say=say)
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")   # as drive() sets it
        import ultrawork.flows.sisyphus  # noqa: F401
    ensure_server(say=say)
    from ultrawork.cli.model import model_needed_or_fail

    model_needed_or_fail(task, agents, agent_profiles, model_settings, as_json, role_models)
    run_id = new_run_id()
    params = {"task": task, "repo": str(repo), "agents": agents, "base": base, "run_id": run_id,
              "agent_commands": commands or None, "review_timeout": review_timeout}
    if agent_profiles:
        params["agent_profiles"] = agent_profiles
    if model_settings:
        params["model_settings"] = model_settings
    if role_models:
        params["role_models"] = role_models
    params.update(extra)
    (err if as_json else out).print(f"run [bold]{run_id}[/] on {repo}")
    drive(params, detach, decide, as_json=as_json)


def drive(params: dict, detach: bool, decide=None, lock=None, as_json: bool = False) -> None:
    """Run the Sisyphus flow here with a live display, or launch it in the background.

    ``lock`` (the run's driver lock, see ``ultrawork.cli.runs.claim_run``) goes with the run:
    a background run inherits it and holds it until it exits.
    """
    import asyncio
    import os
    import subprocess

    from ultrawork.sandbox.spec import ultrawork_home

    run_id = params["run_id"]
    if detach:
        logs = ultrawork_home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{run_id}.log", "ab") as log:
            child = subprocess.Popen([sys.executable, "-m", "ultrawork.cli.launch", json.dumps(params)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=os.environ.copy(), pass_fds=(lock.fd,) if lock else ())
        if lock:
            lock.hand_to(child.pid, f"ultrawork resume {run_id}, in the background")
        out.print(f"running in the background (log: {logs / (run_id + '.log')}); "
                  f"follow it with 'ultrawork status {run_id}'")
        return
    # Prefect's console logs would tear the live display; they still reach the server and the UI.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    from ultrawork.cli.progress import RunDisplay, stdin_is_terminal
    from prefect.exceptions import TerminationSignal

    from ultrawork.flows.sisyphus import sisyphus

    install_log_escaping()        # Prefect's console handler prints warnings that quote an agent's output
    display = RunDisplay(run_id, err if as_json else out, interactive=stdin_is_terminal(), decide=decide)
    display.start()
    try:
        with stop_on_signals(), asyncio.Runner() as runner:    # Ctrl-C and SIGTERM: one line, no traceback
            try:
                result = runner.run(sisyphus(**params))
            except (KeyboardInterrupt, TerminationSignal):
                silence_console()                  # the run's cancellation is logged to the server only
                raise
    except (KeyboardInterrupt, TerminationSignal) as exc:   # Prefect turns SIGTERM into TerminationSignal
        stop = exc if isinstance(exc, StopRequested) else StopRequested(getattr(exc, "signal", 2))
        display.done.set()
        display.join(5)
        if display.error is not None:              # the display stopped the command: say why
            fail(f"the review was not sent ({type(display.error).__name__}: {display.error}); "
                 f"the run is kept: 'ultrawork resume {run_id}'", 1)
        err.print(f"run {run_id} stopped ({stop.signal_name}); its work is kept: "
                  f"continue it with 'ultrawork resume {run_id}'", highlight=False)
        raise typer.Exit(stop.exit_code) from None
    finally:
        display.done.set()
        display.join(5)
    if display.error:
        err.print(f"[yellow]progress display stopped: {display.error}[/]")
    report(result, as_json)


# How a run ended, as the exit code of the command that drove it (failures of the command itself: 1, 2).
EXIT_CODES = {"integrated": 0, "nothing-approved": 3, "conflict": 4, "check-failed": 5,
              "review-timed-out": 6, "aborted": 7}


def report(result, as_json: bool = False) -> None:
    """Print how the run ended and exit with its outcome's code (``as_json``: the result as one JSON object)."""
    code = EXIT_CODES.get(str(result.outcome), 1)
    if as_json:
        from ultrawork.cli.runs import run_url

        print(json.dumps({**result.model_dump(mode="json"), "exit_code": code, "ui": run_url(result.run_id)},
                         indent=2))
        raise typer.Exit(code)
    color = "green" if result.outcome == "integrated" else "yellow"
    # the message names conflicting files and failed checks: agent text, printed as text
    out.print(Text.assemble((str(result.outcome), color), ": ", rich_text(result.message)), highlight=False)
    for agent in result.agents:
        out.print(rich_text(f"  {agent.role:<10} {agent.status:<10} {agent.branch}  (Plan.md: {agent.plan_path})"),
                  highlight=False)
        if agent.model:   # a model agent: which model, and what it spent
            u = agent.usage or {}
            cost = "" if u.get("cost") is None else f", cost {u['cost']:g}"
            out.print(rich_text(f"  {'':<10} model {agent.model}: {u.get('requests', 0)} request(s), "
                                f"{u.get('input_tokens', 0)} input / {u.get('output_tokens', 0)} output tokens{cost}"),
                      highlight=False)
    if result.check is not None:
        out.print(f"  checks: {'passed' if result.check.passed else 'failed'} (exit {result.check.exit_code})")
    print_attempts(result.attempts)
    raise typer.Exit(code)


def print_attempts(rankings: list[dict]) -> None:
    """Each writer's attempts, best first, with their checks (``agents.attempts.AttemptRanking`` as data)."""
    for ranking in rankings:
        out.print(f"  attempts of {ranking['writer']}, best first:", markup=False)
        for e in ranking["entries"]:
            check = e.get("check")
            verdict = "not checked" if check is None else ("checks passed" if check["passed"]
                                                          else f"checks failed (exit {check['exit_code']})")
            failing = "" if e.get("failing_tests") is None else f", {e['failing_tests']} failing test(s)"
            out.print(f"    {e['rank']}. {e['role']:<16} {verdict}{failing}, {e['lines_changed']} line(s) changed",
                      markup=False)


@server_app.command("status")
def server_status() -> None:
    """Which Prefect server ultrawork commands use, and whether it answers (the auth string is never shown)."""
    import os

    from ultrawork.local_server.manager import healthy, server_report

    report = server_report()
    external = os.environ.get("PREFECT_API_URL")
    if external:
        state = "answering" if healthy(external.rstrip("/")) else "not answering"
        local = any(s["url"] == external.rstrip("/") for s in report["servers"])
        out.print(f"PREFECT_API_URL is set: ultrawork commands use {external} ({state})"
                  + (", this home's local server" if local else ", not the local server"))
    for server in report["servers"]:
        state = "answering" if server["healthy"] else "starting or not answering"
        note = "" if server["recorded"] else f"; not in {report['home']}/server.json, found by its command line"
        out.print(f"local server {server['url']} (pid {server['pid']}, {state}{note}); UI at "
                  f"{server['url'][:-len('/api')]} (sign in with the auth string in {report['auth_file']})")
        if server["legacy"]:
            out.print("  it was started without an auth string: stop it when no run uses it")
    if not report["servers"]:
        stale = report["record"]
        detail = f" (its record names pid {stale['pid']}, which is not that server: stale)" if stale else ""
        out.print(f"no local Prefect server is running for {report['home']}{detail}; the next command starts one")
    answering = healthy(external.rstrip("/")) if external else any(s["healthy"] for s in report["servers"])
    if not answering:
        raise typer.Exit(1)


@server_app.command("stop")
def server_stop(
    force: Annotated[bool, typer.Option("--force", help="Stop it even while runs are using it.")] = False,
) -> None:
    """Stop the shared local Prefect server; the next command that needs it starts it again.

    Only a process that is verifiably this home's server (pid, start time, command
    line) is signalled; a record naming anything else is reported stale and removed.
    """
    from ultrawork.cli.runs import list_runs
    from ultrawork.local_server.manager import server_report, stop_server
    from ultrawork.sandbox.reaper import run_is_active

    report = server_report()
    if not report["servers"]:
        if report["record"]:
            stop_server()
            out.print(f"no local Prefect server is running; its record named pid {report['record']['pid']}, which "
                      "is not the server (stale): removed the record, signalled nothing")
        else:
            out.print("no local Prefect server is running")
        return
    active = [r for r in list_runs() if run_is_active(r)]
    if active and not force:
        fail(f"runs still use the server: {', '.join(active)}; wait for them, or use --force "
             "(they fail, and `ultrawork resume` continues them)")
    result = stop_server()
    pids = ", ".join(str(p) for p in result.get("stopped", [])) or "none"
    out.print(f"local Prefect server stopped (pid {pids})")


@app.command("run")
def run_command(
    repo: Annotated[str, typer.Option(help="The git repository to work on: a path, or a URL (file://, https://, ssh://).")],
    task: Annotated[str, typer.Option(help="What the agents should do (a patch or ultrawork-edit block may follow).")],
    agents: Annotated[Optional[str], typer.Option(help="Comma-separated roles (default: chosen from the task).")] = None,
    agent_command: Annotated[Optional[list[str]], typer.Option(
        help='ROLE=\'["arg", ...]\': the command a role runs (a JSON list; repeatable).')] = None,
    agent_profile: Annotated[Optional[list[str]], typer.Option(
        help="ROLE=PROFILE: run a role with builtin, model (the built-in model agent), claude-code, opencode "
             "or codex (repeatable).")] = None,
    model_settings: Annotated[Optional[str], typer.Option(
        help="Name of the ultrawork-model-agent block the model agents and the planner use "
             "(default: the block named 'default', if saved).")] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        help="ROLE=MODEL: the model a role's model agents use, e.g. explore=gpt-4.1-mini (same provider and "
             "key as the saved model; repeatable). Per-role blocks: 'ultrawork model set --role ROLE'.")] = None,
    base: Annotated[str, typer.Option(help="Base ref the agents' branches start from.")] = "HEAD",
    review_timeout: Annotated[str, typer.Option(help="How long to wait for the review: 90s, 30m, 2h, 1d.")] = "24h",
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background and return.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's result as JSON (the display goes to "
                                                          "stderr).")] = False,
    check_command: Annotated[Optional[str], typer.Option(
        help="The repository's checks, e.g. 'pytest -q': run in a sandbox on the integration branch (and on "
             "each attempt's branch).")] = None,
    attempts: Annotated[int, typer.Option(
        help="Independent attempts of each writer (1-8), each on its own branch and sandbox, ranked by the "
             "checks: passed, fewer failing tests, smaller diff, lower cost; the best is pre-selected.")] = 1,
    attempt_profiles: Annotated[Optional[str], typer.Option(
        help="One named profile per attempt, comma-separated, e.g. model,claude-code,builtin.")] = None,
    auto_select: Annotated[bool, typer.Option(
        "--auto-select", help="Integrate each writer's best attempt without a review when its checks pass, "
                              "nothing when none pass (needs --check-command).")] = False,
) -> None:
    """Run agents on a task; prints the run id, its UI address and a live per-agent display.

    Exit code: 0 integrated, 3 nothing approved, 4 conflict, 5 check failed, 6 review timed out,
    7 aborted, 130/143 stopped by Ctrl-C/SIGTERM (resume it), 1 failed, 2 bad input."""
    from ultrawork.cli.request import parse_agent_commands

    from ultrawork.agents.profiles import parse_agent_profiles

    from ultrawork.cli.model import parse_role_models

    try:
        commands = parse_agent_commands(agent_command or [])
        chosen = parse_agent_profiles(agent_profile or [])
        role_models = parse_role_models(model or [])
    except ValueError as exc:
        fail(str(exc), 2)
    roles = [r.strip() for r in agents.split(",") if r.strip()] if agents else None
    import shlex

    try:
        checks = shlex.split(check_command) if check_command else None
    except ValueError as exc:
        fail(f"--check-command: {exc}", 2)
    profiles = [p.strip() for p in attempt_profiles.split(",") if p.strip()] if attempt_profiles else None
    start_run(repo, task, roles, base, commands, round(parse_duration(review_timeout)), detach,
              agent_profiles=chosen, as_json=as_json, model_settings=model_settings, role_models=role_models,
              extra={"check_command": checks, "attempts": attempts, "attempt_profiles": profiles,
                     "auto_select": auto_select})


@app.command("demo")
def demo_command(
    approve_all: Annotated[bool, typer.Option("--approve-all", help="Approve every agent without asking.")] = False,
) -> None:
    """Run four agents on a demo repository it creates (asks for the review in a terminal)."""
    from ultrawork.cli.demo import DEMO_TASK, make_demo_repo
    from ultrawork.cli.progress import stdin_is_terminal
    from ultrawork.sandbox.spec import ultrawork_home

    repo = make_demo_repo(ultrawork_home() / "demo")
    out.print(f"demo repository: {repo}")
    decide = None
    if approve_all or not stdin_is_terminal():
        decide = lambda status: ([a.role for a in status.agents], [], "approved by the demo")  # noqa: E731
    start_run(str(repo), DEMO_TASK, None, "HEAD", {}, 3600, False, decide=decide)


@app.command("resume")
def resume_command(
    run_id: Annotated[str, typer.Argument(help="A run that crashed or failed.")],
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background and return.")] = False,
    again: Annotated[bool, typer.Option("--again", help="A stopped deployment run whose record is on another "
                                        "machine: run its task again from the start on any worker.")] = False,
) -> None:
    """Continue a crashed or failed run from its last completed stage (finished agents are not rerun).

    One process drives a run at a time: a resume while another resume (or the
    run's own process) still drives it is refused, naming that process.
    """
    from ultrawork.cli.runs import claim_run, prepare_resume
    from ultrawork.local_server.manager import ensure_server
    from ultrawork.workspace.ledger import RunNotFound

    try:
        lock = claim_run(run_id, f"ultrawork resume {run_id}")
    except RunNotFound:                           # not in this home: say where it ran, if the server knows
        from ultrawork.cli.remote_runs import resume_elsewhere, start_again

        ensure_server(say=lambda msg: err.print(f"[dim]{msg}[/]"))
        if not again:
            raise resume_elsewhere(run_id) from None
        new_id, flow_run = start_again(run_id)
        out.print(f"run {run_id} started again from the start as run [bold]{new_id}[/] (flow run {flow_run.name}); "
                  f"a worker of its pool takes it: 'ultrawork status {new_id}'")
        return
    if again:
        lock.release()
        fail(f"run {run_id} is in this home: 'ultrawork resume {run_id}' continues it where it stopped", 2)
    try:
        ensure_server(say=lambda msg: err.print(f"[dim]{msg}[/]"))
        params = prepare_resume(run_id)
        out.print(f"resuming run [bold]{run_id}[/]")
        drive(params, detach, lock=lock)
    finally:
        lock.release()


@app.command("integrate")
def integrate_command(
    run_id: Annotated[str, typer.Argument(help="A reviewed run whose integration ended in a conflict.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's result as JSON.")] = False,
) -> None:
    """Integrate a reviewed run again, after its conflict was resolved on the agent's branch (idempotent)."""
    import asyncio

    from ultrawork.flows.integrate import integrate
    from ultrawork.local_server.manager import ensure_server

    ensure_server(say=lambda msg: err.print(f"[dim]{msg}[/]"))
    install_log_escaping()
    state = asyncio.run(integrate(run_id, return_state=True))
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        fail(f"{type(result).__name__}: {result}")
    report(result, as_json)


@app.command("status")
def status_command(
    run_id: Annotated[Optional[str], typer.Argument(help="A run id (default: list recent runs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where a run is: its Prefect state, each agent's stage, the review and the integration."""
    from ultrawork.cli.runs import find_run_status, list_runs
    from ultrawork.local_server.manager import ensure_server

    ensure_server(say=lambda msg: err.print(f"[dim]{msg}[/]"))
    ids = [run_id] if run_id else list_runs()[:20]
    statuses = [find_run_status(i) for i in ids]      # a run of another machine: through Prefect
    if as_json:
        data = [s.as_dict() for s in statuses]
        print(json.dumps(data[0] if run_id else data, indent=2))
        return
    if not statuses:
        out.print("no runs yet")
        return
    from ultrawork.cli.progress import render

    for status in statuses:
        out.print(render(status))
        out.print(f"  state: {status.state}  ·  superproject: {status.path}")
        print_attempts(status.attempts)
        if status.url:
            out.print(f"  UI: {status.url}", highlight=False)


@app.command("review")
def review_command(
    run_id: Annotated[str, typer.Argument(help="The run to review.")],
    approve: Annotated[Optional[str], typer.Option(help="Comma-separated roles to approve.")] = None,
    reject: Annotated[Optional[str], typer.Option(help="Comma-separated roles to reject.")] = None,
    approve_all: Annotated[bool, typer.Option("--approve-all")] = False,
    reject_all: Annotated[bool, typer.Option("--reject-all")] = False,
    comment: Annotated[str, typer.Option(help="A comment recorded with every decision.")] = "",
    revise: Annotated[Optional[list[str]], typer.Option(
        help="ROLE=COMMENT: send the agent back; it runs again on its branch with the comment (repeatable). "
             "Agents not approved or rejected here are left to the next round's review: they do not run "
             "again, and are decided with the others when the run pauses for review after the round.")] = None,
    retry: Annotated[Optional[list[str]], typer.Option(
        help="ROLE or ROLE=COMMENT: run a failed agent again (repeatable); the others as with --revise.")] = None,
    abort: Annotated[bool, typer.Option("--abort", help="A failed agent's decision: end the run; nothing is "
                                                        "merged, branches are kept.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision sent as JSON.")] = False,
) -> None:
    """Decide each agent of a run paused for review: approve, reject, revise (with a comment) or retry;
    or abort the run. With agents sent back the run pauses for review again after their new round,
    and every agent not approved or rejected now is decided then (it is not run again)."""
    from ultrawork.cli.runs import find_run_status, submit_review
    from ultrawork.local_server.manager import ensure_server

    ensure_server(say=lambda msg: err.print(f"[dim]{msg}[/]"))
    roles = [a.role for a in find_run_status(run_id, with_state=False).agents]
    split = lambda text: [r.strip() for r in (text or "").split(",") if r.strip()]  # noqa: E731
    approved, rejected = split(approve), split(reject)
    if approve_all:
        approved = [r for r in roles if r not in rejected]
    if reject_all:
        rejected = [r for r in roles if r not in approved]
    from ultrawork.cli.runs import run_url

    again = {}
    for kind, items in (("revise", revise or []), ("retry", retry or [])):
        for item in items:
            role, _, text = item.partition("=")
            if not role.strip() or (kind == "revise" and not text.strip()):
                fail(f"--{kind} {item!r} must look like ROLE=COMMENT" if kind == "revise" else
                     f"--retry {item!r} must name a role", 2)
            again[role.strip()] = (kind, text.strip())
    approved = [r for r in approved if r not in again]
    rejected = [r for r in rejected if r not in again]
    from ultrawork.cli.runs import ReviewInputInvalid

    try:
        sent = submit_review(run_id, approved, rejected, comment, again=again, abort=abort)
    except ReviewInputInvalid as exc:
        fail(str(exc), 2)
    later = [r for r in roles if sent.get(r) == "later"]
    if as_json:
        print(json.dumps({"run_id": run_id, "decision": sent, "approved": approved, "rejected": rejected,
                          "again": {r: {"decision": k, "comment": c} for r, (k, c) in again.items()},
                          "later": later, "aborted": abort, "ui": run_url(run_id)}, indent=2))
        return
    out.print(f"run {run_id} resumed: " + ("aborted" if abort else
              f"approved {', '.join(approved) or 'none'}; rejected {', '.join(rejected) or 'none'}"
              + (f"; sent back {', '.join(again)}" if again else "")
              + (f"; left for the next round's review: {', '.join(later)}" if later else "")), markup=False,
              soft_wrap=True)
    out.print(f"UI: {run_url(run_id)}", highlight=False)


@app.command("eval")
def eval_command(
    tasks_file: Annotated[Path, typer.Argument(help="YAML with the tasks (see evals/tasks.yaml).")],
    settings: Annotated[Optional[Path], typer.Option(
        help="YAML with the settings to compare (see evals/settings.yaml); default: the built-in agents.")] = None,
    concurrency: Annotated[int, typer.Option(help="Runs at a time (the global sandbox cap bounds them too).")] = 2,
    eval_id: Annotated[Optional[str], typer.Option(
        help="Continue this evaluation: its finished task x setting pairs are not run again.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run each task with each setting (automatic selection, no review) and report the resolved rate
    (the hidden check, else the checks, on what was integrated), cost, tokens and wall time."""
    import asyncio

    from ultrawork.evaluation.taskset import EvalError, load_settings, load_tasks
    from ultrawork.local_server.manager import ensure_server

    try:
        load_tasks(tasks_file.resolve())
        load_settings(settings)
        if concurrency < 1:
            raise EvalError("--concurrency must be at least 1")
        if eval_id is not None and not re.fullmatch(r"[a-z0-9]{1,12}", eval_id):
            raise EvalError(f"--eval-id {eval_id!r}: lower case letters and digits, at most 12")
    except EvalError as exc:
        fail(str(exc), 2)
    ensure_server(say=lambda msg: err.print(f"[dim]{msg}[/]"))
    from ultrawork.flows.evaluate import eval_folder, evaluate
    from ultrawork.evaluation.report import markdown

    report = asyncio.run(evaluate(str(tasks_file.resolve()), str(settings.resolve()) if settings else None,
                                  concurrency, eval_id))
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    out.print(markdown(report), markup=False, highlight=False)
    out.print(f"report: {eval_folder(report.eval_id) / 'report.md'} (and report.json); continue or repeat it with "
              f"--eval-id {report.eval_id}", markup=False, highlight=False)


@app.command("mcp")
def mcp(
    run: Annotated[Optional[str], typer.Option(help="Bind to this run: its sandboxes are kept and each command "
                                                    "is a step in the agent's Plan.md.")] = None,
    role: Annotated[Optional[str], typer.Option(help="With --run: act as this agent of the run only.")] = None,
) -> None:
    """Serve the five sandbox tools over MCP on stdin/stdout (register it in OpenCode or Claude Code)."""
    from ultrawork.sandbox.mcp_server import serve

    serve(run_id=run, role=role)


def main() -> None:
    """Console entry point: typed ultrawork errors become one-line messages."""
    from ultrawork.sandbox.errors import UltraworkError

    try:
        app()
    except UltraworkError as exc:
        err.print(Text.assemble(("error:", "bold red"), " ", rich_text(str(exc))), highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
