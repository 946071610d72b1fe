"""The ``ultrawork`` command line.

Prefect is imported only by the commands that talk to runs, so sandbox
commands start fast.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Parallel AI coding agents in hardened sandboxes, orchestrated by Prefect.", no_args_is_help=True)
sandbox_app = typer.Typer(help="The sandbox image.", no_args_is_help=True)
sandboxes_app = typer.Typer(help="Sandboxes (containers) managed by ultrawork.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(sandboxes_app, name="sandboxes")

out = Console()
err = Console(stderr=True, soft_wrap=True)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 30m, 2h or 1d")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _engine():
    from sandbox import SandboxEngine

    return SandboxEngine()


@sandbox_app.command("build")
def sandbox_build(
    tag: Annotated[Optional[str], typer.Option(help="Image tag (default: the version this release uses).")] = None,
    method: Annotated[str, typer.Option(help="auto, offline (debootstrap + import) or dockerfile.")] = "auto",
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Do nothing when the image exists.")] = False,
) -> None:
    """Build the sandbox image (python3, git, user 1000, /workspace)."""
    import docker.errors

    from sandbox.image import build_image
    from sandbox.spec import DEFAULT_IMAGE

    tag = tag or DEFAULT_IMAGE
    if method not in ("auto", "offline", "dockerfile"):
        fail(f"--method must be auto, offline or dockerfile, not {method!r}", 2)
    client = _engine().client
    if if_missing:
        try:
            client.images.get(tag)
            err.print(f"sandbox image {tag} is present")
            return
        except docker.errors.ImageNotFound:
            pass
    started = time.monotonic()
    used = build_image(tag, method, say=lambda line: err.print(f"[dim]{line}[/]", highlight=False))
    err.print(f"built {tag} ({used}) in {time.monotonic() - started:.0f}s")


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
    """Remove sandboxes whose run is no longer active (or older than --older-than)."""
    age = parse_duration(older_than) if older_than else None
    removed = _engine().reap(all=all_, older_than=age)
    for info in removed:
        out.print(f"removed {info.name} (run {info.run_id}, agent {info.role})")
    out.print(f"{len(removed)} sandbox(es) removed")


def main() -> None:
    """Console entry point: typed ultrawork errors become one-line messages."""
    from sandbox.errors import UltraworkError

    try:
        app()
    except UltraworkError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
