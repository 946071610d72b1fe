"""``ultrawork model set|show``: the model the built-in model agents and the planner use.

The settings are an ``ultrawork-model-agent`` block saved where this home's runs read
blocks: the home's local server (started if needed), or the server ``PREFECT_API_URL``
names. A per-role block (``--role``) is named ``<name>-<role>``; a run uses it for that
role (and its instances, ``frontend-2``...), and the base block for the planner and the rest.
The key is named (``--api-key-env``), never given on the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

model_app = typer.Typer(help="The model the built-in model agents and the planner use.", no_args_is_help=True)
out = Console(highlight=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)

DEFAULT_NAME = "default"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def block_name(name: str, role: str | None) -> str:
    return f"{name}-{role}" if role else name


def _server() -> str:
    from ultrawork.local_server.manager import ensure_server

    return ensure_server(say=lambda msg: err.print(f"[dim]{escape(msg)}[/]"))


async def _load(name: str):
    from ultrawork.tasks.model import load_model_settings

    try:
        return await load_model_settings(name)
    except Exception:  # noqa: BLE001 - a missing named block
        return None


@model_app.command("set")
def model_set(
    provider: Annotated[str, typer.Option(help="openai, anthropic, or openai-compatible (Ollama, vLLM, gateways).")],
    model: Annotated[str, typer.Option(help="The model's name as the provider knows it, e.g. gpt-4.1.")],
    api_key_env: Annotated[Optional[str], typer.Option(
        help="Name of the host environment variable holding the key (read where runs execute); "
             "needed by openai and anthropic.")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="API base URL (openai-compatible: required, e.g. "
                                                         "http://127.0.0.1:11434/v1).")] = None,
    role: Annotated[Optional[str], typer.Option(help="Save it for one role only (explore, librarian, oracle, "
                                                     "frontend); the others keep the base block.")] = None,
    price_in: Annotated[Optional[float], typer.Option(help="Price of one million input tokens.")] = None,
    price_out: Annotated[Optional[float], typer.Option(help="Price of one million output tokens.")] = None,
    max_requests: Annotated[Optional[int], typer.Option(help="Most model requests one agent may send.")] = None,
    run_max_requests: Annotated[Optional[int], typer.Option(
        help="Most model requests one run may send (planning and every agent together).")] = None,
    request_timeout: Annotated[Optional[float], typer.Option(
        help="Seconds to wait for one answer once connected (per attempt).")] = None,
    attempts: Annotated[Optional[int], typer.Option(help="Tries of one request (timeouts, 429, 5xx); each counts "
                                                         "against the budgets.")] = None,
    plan_max_seconds: Annotated[Optional[float], typer.Option(
        help="Longest planning may take before the built-in rules choose the agents.")] = None,
    name: Annotated[str, typer.Option(help="The block's name (runs use 'default' unless given "
                                           "--model-settings NAME).")] = DEFAULT_NAME,
    check: Annotated[bool, typer.Option("--check", help="Send one small request to the model first; "
                                                        "nothing is saved when it fails.")] = False,
) -> None:
    """Save the model runs use: `ultrawork model set --provider openai --model gpt-4.1 --api-key-env OPENAI_API_KEY`.

    The provider, model, URL and key variable are as given; prices, budgets and time bounds not given keep
    their saved values. Exit code: 0 saved, 1 the check failed, 2 bad input."""
    from ultrawork.agents.profiles import ROLES
    from ultrawork.blocks.model import ModelAgentSettings
    from ultrawork.model_agent.config import PROVIDERS
    from ultrawork.model_agent.errors import ModelConfigError

    if provider not in PROVIDERS:
        _fail(f"--provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    from ultrawork.model_agent.config import KEYED_PROVIDERS

    if provider in KEYED_PROVIDERS and not api_key_env:
        _fail(f"--provider {provider} needs --api-key-env NAME: the host environment variable holding its key")
    if role is not None and role not in ROLES:
        _fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    target = block_name(name, role)
    fields = {"provider": provider, "model": model, "base_url": base_url, "api_key_env": api_key_env,
              "api_key": None, "input_price_per_million": price_in, "output_price_per_million": price_out}
    for key, value in (("max_requests", max_requests), ("run_max_requests", run_max_requests),
                       ("request_timeout", request_timeout), ("attempts", attempts),
                       ("plan_max_seconds", plan_max_seconds)):
        if value is not None:
            fields[key] = value
    try:
        settings = ModelAgentSettings(**fields)
        # the settings' own checks, with a stand-in key: the real one is read where runs execute
        settings.config({api_key_env: "placeholder"} if api_key_env else {})
    except ModelConfigError as exc:
        _fail(str(exc))
    except ValueError as exc:    # pydantic's validation (e.g. a malformed variable name)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(
            include_input=False, include_url=False)) if hasattr(exc, "errors") else str(exc)
        _fail(f"model settings rejected: {problems}")
    external = bool(os.environ.get("PREFECT_API_URL"))
    url = _server()
    saved = asyncio.run(_load(target))
    if saved is not None:     # keep what was not given: prices, budgets, time bounds, planning
        given = {k: v for k, v in fields.items() if v is not None or k in ("api_key", "api_key_env", "base_url")}
        kept = {k: getattr(saved, k) for k in ModelAgentSettings.model_fields
                if k not in given and not k.startswith("_") and k != "block_type_slug"}
        settings = ModelAgentSettings(**{**kept, **given})
    if check:
        _check(settings)
    settings.save(target, overwrite=True)
    where = "the server PREFECT_API_URL names" if external else "this home's local server"
    out.print(f"saved model {provider}:{escape(model)} as block {target!r} on {url} ({where})")
    if api_key_env and not os.environ.get(api_key_env):
        err.print(f"[yellow]note:[/] {api_key_env} is not set in this shell; runs read it where they execute")


def _check(settings) -> None:
    from ultrawork.model_agent.errors import ModelAgentError, ModelConfigError
    from ultrawork.model_agent.probe import check_model

    try:
        config = settings.config()
    except ModelConfigError as exc:
        _fail(f"nothing was saved: {exc}", 2)
    try:
        answer = asyncio.run(check_model(config))
    except ModelAgentError as exc:
        _fail(f"the check failed, nothing was saved: {exc}", 1)
    out.print(f"check: {config.provider}:{config.model} answered in {answer.seconds:.1f}s "
              f"({answer.input_tokens} input / {answer.output_tokens} output tokens)")


def _row(name: str, settings) -> dict:
    key = ("stored secret" if settings.api_key is not None else
           f"${settings.api_key_env} ({'set' if os.environ.get(settings.api_key_env) else 'not set'} here)"
           if settings.api_key_env else "none")
    return {"block": name, "provider": settings.provider, "model": settings.model, "base_url": settings.base_url,
            "key": key, "price_in": settings.input_price_per_million, "price_out": settings.output_price_per_million,
            "max_requests": settings.max_requests, "max_seconds": settings.max_seconds,
            "run_max_requests": settings.run_max_requests, "run_max_seconds": settings.run_max_seconds,
            "connect_timeout": settings.connect_timeout, "request_timeout": settings.request_timeout,
            "attempts": settings.attempts, "plan_max_seconds": settings.plan_max_seconds}


@model_app.command("show")
def model_show(
    name: Annotated[str, typer.Option(help="The base block's name.")] = DEFAULT_NAME,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The saved model (and any per-role ones): provider, model, URL, where the key comes from, prices and
    budgets. The key itself is never shown. Exit code 1 when no model is saved."""
    from ultrawork.agents.profiles import ROLES

    url = _server()

    async def load_all() -> list[tuple[str, object]]:
        names = [name] + [block_name(name, r) for r in ROLES]
        found = await asyncio.gather(*(_load(n) for n in names))
        return [(n, s) for n, s in zip(names, found) if s is not None]

    rows = [_row(n, s) for n, s in asyncio.run(load_all())]
    if as_json:
        print(json.dumps({"server": url, "models": rows}, indent=2))
    else:
        for row in rows:
            price = ("" if row["price_in"] is None and row["price_out"] is None else
                     f"; price in {row['price_in'] or 0:g} / out {row['price_out'] or 0:g} per million tokens")
            out.print(f"{row['block']}: {row['provider']}:{escape(row['model'])}"
                      f"{' at ' + escape(row['base_url']) if row['base_url'] else ''}; key {escape(row['key'])}"
                      f"{price}; max {row['max_requests']} request(s) per agent"
                      + (f", {row['run_max_requests']} per run" if row["run_max_requests"] else ""))
        if not rows:
            err.print(f"no model is saved on {url}: 'ultrawork model set --provider ... --model ...'")
    if not rows:
        raise typer.Exit(1)


def parse_role_models(items: list[str]) -> dict[str, str]:
    """``ROLE=MODEL`` pairs (``--model``), checked by name before anything starts."""
    from ultrawork.agents.profiles import ROLES

    chosen: dict[str, str] = {}
    for item in items:
        role, sep, model = (part.strip() for part in item.partition("="))
        if not sep or not role or not model:
            raise ValueError(f"--model {item!r} must look like ROLE=MODEL, e.g. explore=gpt-4.1-mini")
        if role not in ROLES:
            raise ValueError(f"--model {item!r}: unknown role {role!r}; known roles: {', '.join(ROLES)}")
        chosen[role] = model
    return chosen


def model_needed_or_fail(task: str, agents: list[str] | None, chosen: dict[str, str] | None,
                         model_settings: str | None, as_json: bool, role_models: dict[str, str] | None = None) -> None:
    """Before a run starts: the roles that would run the model agent need a usable model, else one
    clear error (exit 2; with ``--json`` also as JSON on stdout) instead of a run that fails."""
    from ultrawork.agents.profiles import classify, with_named_profiles
    from ultrawork.agents.team import base_role
    from ultrawork.model_agent.errors import ModelConfigError
    from ultrawork.runtime.config import load_config

    async def resolve() -> str | None:
        config = await load_config()
        profiles = with_named_profiles(config.profiles, chosen)
        names = agents or classify(task)
        needing = [n for n in names if getattr(profiles.get(base_role(n)), "agent", "command") == "model"]
        if not needing and not model_settings and not role_models:
            return None
        from ultrawork.tasks.model import load_model_settings

        try:
            settings = await load_model_settings(model_settings)
            if settings is None:
                who = f"agent(s) {', '.join(needing)} run the model agent" if needing else "--model was given"
                return (f"{who}, but no model is configured: "
                        "save one with 'ultrawork model set --provider P --model M --api-key-env NAME'")
            await asyncio.to_thread(settings.config)
        except ModelConfigError as exc:
            return str(exc)
        return None

    problem = asyncio.run(resolve())
    if problem is not None:
        if as_json:
            print(json.dumps({"error": problem, "exit_code": 2}, indent=2))
        _fail(problem, 2)
