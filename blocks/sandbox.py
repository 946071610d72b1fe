"""Sandbox settings: the image, resource limits and network every agent gets, and the caps no profile may pass."""

from __future__ import annotations

import os
from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field

from ultrawork.sandbox.limits import LimitRaise
from ultrawork.sandbox.policy import SandboxPolicy
from ultrawork.sandbox.spec import DEFAULT_IMAGE, Limits


class SandboxSettings(Block):
    """Image, limits and network of the agents' Docker sandboxes, and the caps they must stay inside.

    ``image``, ``memory_mb``, ``cpus``, ``pids``, ``network`` and ``timeout`` are every
    agent's defaults (an Ultrawork Agent Profiles block can change one role); the
    ``max_*`` caps and ``allowed_networks`` are the sandbox policy, which refuses
    any profile that asks for more. A step stopped by its memory or pids limit is
    retried once with that limit multiplied by ``limit_raise_factor``, up to the
    ``limit_raise_max_*`` ceilings (default: the caps). ``max_sandboxes`` sizes the global
    concurrency limit ``ultrawork-sandboxes`` every sandbox holds a slot of. Hardening (no capabilities, read-only root,
    user 1000, no new privileges) is not a setting: no block can turn it off.

    Example:
        Save the settings runs load by default:
        ```python
        from ultrawork.blocks import SandboxSettings

        SandboxSettings(memory_mb=1024, pids=512, max_memory_mb=4096).save("default", overwrite=True)
        settings = SandboxSettings.load("default")
        settings.limits(), settings.policy()
        ```
    """

    _block_type_name: ClassVar[str] = "Ultrawork Sandbox Settings"
    _block_type_slug: ClassVar[str] = "ultrawork-sandbox-settings"
    _documentation_url: ClassVar[str] = "https://docs.prefect.io/v3/develop/blocks"

    image: str = Field(DEFAULT_IMAGE, description="Sandbox image: python3, git, user 1000 and /workspace.")
    memory_mb: int = Field(512, ge=16, description="Memory limit of each sandbox in MiB (swap disabled).")
    cpus: float = Field(1.0, gt=0, description="CPU quota of each sandbox in cores.")
    pids: int = Field(256, ge=8, description="Most processes and threads one sandbox may run.")
    network: str = Field("none", description="Docker network mode of the sandboxes ('none' or 'bridge').")
    timeout: float = Field(600.0, gt=0, description="Seconds one agent step may run.")
    max_memory_mb: int = Field(8192, ge=16, description="Cap: the highest memory limit any profile may ask for (MiB).")
    max_cpus: float | None = Field(None, gt=0, description="Cap: the highest CPU quota (default: this machine's cores).")
    max_pids: int = Field(4096, ge=8, description="Cap: the highest pids limit any profile may ask for.")
    max_exec_timeout: float = Field(6 * 3600.0, gt=0, description="Cap: the longest step timeout (seconds).")
    allowed_networks: list[str] = Field(default_factory=lambda: ["none", "bridge"],
                                        description="Network modes a profile may use ('host' is never allowed).")
    limit_raise_factor: float = Field(2.0, ge=1.0, description="A step stopped by its memory or pids limit is "
                                      "retried once with that limit times this factor (1: not retried).")
    limit_raise_max_memory_mb: int | None = Field(None, ge=16, description="Ceiling of a raised memory limit "
                                                  "(MiB; default: max_memory_mb).")
    limit_raise_max_pids: int | None = Field(None, ge=8, description="Ceiling of a raised pids limit "
                                             "(default: max_pids).")
    max_sandboxes: int = Field(16, ge=1, description="Cap: the most sandboxes alive at once across every run, "
                               "worker, CLI command and MCP session of this Prefect server (the global "
                               "concurrency limit 'ultrawork-sandboxes'; the others wait for a slot).")

    def limits(self) -> Limits:
        return Limits(memory_mb=self.memory_mb, cpus=self.cpus, pids=self.pids)

    def caps(self) -> dict:
        """The policy fields this block sets (workspace roots come from the environment)."""
        return {"max_memory_mb": self.max_memory_mb, "max_cpus": self.max_cpus or float(os.cpu_count() or 1),
                "max_pids": self.max_pids, "max_exec_timeout": self.max_exec_timeout,
                "allowed_networks": list(self.allowed_networks)}

    def policy(self) -> SandboxPolicy:
        return SandboxPolicy(**self.caps())

    def limit_raise(self) -> LimitRaise:
        """How a hit limit is raised; a ceiling never passes the cap."""
        return LimitRaise(factor=self.limit_raise_factor,
                          max_memory_mb=min(self.limit_raise_max_memory_mb or self.max_memory_mb, self.max_memory_mb),
                          max_pids=min(self.limit_raise_max_pids or self.max_pids, self.max_pids))
