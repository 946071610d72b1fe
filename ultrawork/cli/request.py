"""Checking a run request before anything starts (no Prefect import: the CLI uses it first)."""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone

from ultrawork.agents.profiles import AgentProfile, resolve_profiles
from ultrawork.workspace.errors import WorkspaceError
from ultrawork.workspace.gitcmd import run_git
from ultrawork.workspace.names import resolve_base_ref
from ultrawork.workspace.remote import local_repository
from ultrawork.workspace.repo_guard import open_target_repo


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def check_request(task: str, repo: str, agents: list[str] | None, base: str,
                  agent_commands: dict[str, list[str]] | None,
                  profiles: dict[str, AgentProfile] | None = None) -> dict[str, AgentProfile]:
    """Every check that can fail on bad input, before anything is created (``profiles``: the configured ones)."""
    profiles = resolve_profiles(task, agents, agent_commands, profiles)
    target = open_target_repo(local_repository(repo))      # a URL: this home's cache clone, fetched
    base_sha = resolve_base_ref(target.path, base)
    if not target.bare:
        head = run_git(["rev-parse", "HEAD"], cwd=target.path).stdout.strip()
        dirty = run_git(["status", "--porcelain", "--untracked-files=no"], cwd=target.path).stdout.strip()
        if head == base_sha and dirty:
            raise WorkspaceError(f"{target.path} has uncommitted changes to the base {base!r}; commit or stash them")
    return profiles


def parse_agent_commands(items: list[str]) -> dict[str, list[str]]:
    """``ROLE=["arg", ...]`` pairs from the command line."""
    commands: dict[str, list[str]] = {}
    for item in items:
        role, sep, template = item.partition("=")
        if not sep or not role:
            raise ValueError(f"--agent-command {item!r} must look like ROLE='[\"arg\", ...]'")
        try:
            argv = json.loads(template)
        except ValueError:
            raise ValueError(f"the template for {role} must be a JSON list of arguments, e.g. "
                             f"'[\"python3\", \"agent.py\"]'; got {template!r}") from None
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"the template for {role} must be a non-empty JSON list of strings")
        commands[role.strip()] = argv
    return commands
