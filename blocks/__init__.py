"""Prefect blocks: the configuration users edit in the Prefect UI.

Register them with ``prefect block register -m ultrawork.blocks``. Runs load the blocks
named ``default`` (``ultrawork.runtime.config``) and fall back to built-in defaults (and the
``ULTRAWORK_GITHUB_*`` variables) when none is saved.
"""

from .agents import AgentProfiles, RoleSettings
from .github import GitHubSettings
from .model import ModelAgentSettings
from .sandbox import SandboxSettings

DEFAULT_BLOCK_NAME = "default"

__all__ = ["AgentProfiles", "DEFAULT_BLOCK_NAME", "GitHubSettings", "ModelAgentSettings", "RoleSettings", "SandboxSettings"]
