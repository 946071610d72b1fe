"""The configuration a run uses: the saved blocks named ``default``, or the built-in defaults.

A flow calls :func:`load_config` once at its start, so a block saved in the UI
(or through the API) is what the *next* run uses. :func:`use_config` makes the
sandbox caps the policy of this run's sandbox engine (``ultrawork.tasks.sandboxes.engine``)
through a context variable that the agent subflows, tasks and their worker
threads inherit. The plain core never sees Prefect: it gets plain
``AgentProfile``, ``SandboxPolicy`` and ``GitHubTarget`` objects.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field

from ultrawork.agents.profiles import DEFAULT_PROFILES, AgentProfile
from ultrawork.blocks import DEFAULT_BLOCK_NAME, AgentProfiles, GitHubSettings, SandboxSettings
from ultrawork.sandbox.limits import LimitRaise
from ultrawork.sandbox.policy import SandboxPolicy
from ultrawork.workspace.github import GitHubTarget, github_target_from_env

from ultrawork.runtime.logs import get_logger

_ACTIVE: ContextVar["UltraworkConfig | None"] = ContextVar("ultrawork_config", default=None)


@dataclass
class UltraworkConfig:
    profiles: dict[str, AgentProfile] = field(default_factory=lambda: dict(DEFAULT_PROFILES))
    caps: dict = field(default_factory=dict)              # SandboxPolicy fields; empty: the defaults
    github: GitHubTarget | None = None
    limit_raise: LimitRaise | None = None                 # None: factor 2 up to the policy's caps
    sources: dict[str, str] = field(default_factory=dict)  # what came from where, for the log

    def policy(self) -> SandboxPolicy:
        return SandboxPolicy(**self.caps)


async def _load(block_cls, name: str):
    """The saved block, or None when no block of that type has that name."""
    try:
        return await block_cls.aload(name)
    except ValueError as exc:          # Prefect: "Unable to find block document named ..."
        if "Unable to find block document" in str(exc):
            return None
        raise


def profiles_with(sandbox=None, agent_profiles=None) -> dict[str, AgentProfile]:
    """Built-in profiles, then the sandbox settings for every role, then per-role changes."""
    profiles = dict(DEFAULT_PROFILES)
    if sandbox is not None:
        profiles = {role: p.model_copy(update={"image": sandbox.image, "network": sandbox.network,
                                               "limits": sandbox.limits(), "timeout": sandbox.timeout})
                    for role, p in profiles.items()}
    if agent_profiles is not None:
        profiles = agent_profiles.apply(profiles)
    return profiles


async def load_config(name: str | None = None) -> UltraworkConfig:
    """Read the ``name`` (default ``default``) blocks; each one missing falls back on its own."""
    name = name or DEFAULT_BLOCK_NAME
    sandbox, agent_profiles, github_block = await asyncio.gather(
        _load(SandboxSettings, name), _load(AgentProfiles, name), _load(GitHubSettings, name))
    env_github = github_target_from_env() if github_block is None else None
    config = UltraworkConfig(
        profiles=profiles_with(sandbox, agent_profiles),
        caps=sandbox.caps() if sandbox is not None else {},
        limit_raise=sandbox.limit_raise() if sandbox is not None else None,
        github=github_block.target() if github_block is not None else env_github,
        sources={"sandbox": f"block {name!r}" if sandbox else "defaults",
                 "agent profiles": f"block {name!r}" if agent_profiles else "defaults",
                 "github": f"block {name!r}" if github_block else
                           ("environment" if env_github else "not configured")},
    )
    get_logger().info("configuration: %s", "; ".join(f"{k}: {v}" for k, v in config.sources.items()))
    return config


def use_config(config: UltraworkConfig) -> None:
    """Make ``config`` the one this run's sandboxes follow (inherited by subflows, tasks and threads)."""
    _ACTIVE.set(config)


def active_policy() -> SandboxPolicy:
    """The sandbox policy of the current run (the defaults outside one)."""
    config = _ACTIVE.get()
    return config.policy() if config is not None else SandboxPolicy()


def active_limit_raise() -> LimitRaise:
    """How the current run raises a limit a step hit (factor 2 up to the policy's caps by default)."""
    config = _ACTIVE.get()
    if config is not None and config.limit_raise is not None:
        return config.limit_raise
    policy = active_policy()
    return LimitRaise(max_memory_mb=policy.max_memory_mb, max_pids=policy.max_pids)
