"""Agent profiles: per role, the command, image, mount mode, network, limits, timeout and checklist."""

from __future__ import annotations

from typing import ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field

from ultrawork.agents.profiles import ROLES, AgentProfile, named_profile
from ultrawork.gateway.rules import AgentProfile as EgressProfile


class RoleSettings(BaseModel):
    """Changes to one role's profile; a field left empty keeps the default."""

    model_config = ConfigDict(extra="forbid")

    profile: Literal["builtin", "model", "claude-code", "opencode", "codex"] | None = Field(
        None, description="Named agent profile the fields below change: model (the built-in model agent, "
                          "configured by the ultrawork-model-agent block), or a coding-agent CLI in its image, "
                          "reaching its model API only through the run's egress gateway (the key stays on the host).")
    command: list[str] | None = Field(None, description='Argument list the agent runs, e.g. ["opencode", "run", '
                                      '"--file", "{prompt_file}", "Do the task."]; {role} {prompt_file} '
                                      '{plan_file} {workspace} {run_id} are filled in.')
    image: str | None = Field(None, description="Image with the agent's CLI installed.")
    workspace_mode: Literal["ro", "rw"] | None = Field(None, description="ro: the role reports through Plan.md "
                                                       "only; rw: it may edit its workspace.")
    network: str | None = Field(None, description="'none', or 'gateway' (with egress) for agents that call a model "
                                "API or a package index through the run's egress gateway.")
    egress: EgressProfile | None = Field(None, description="Hosts (and methods) the role may reach through the gateway "
                                         "and the credentials the gateway injects (e.g. add a package index, GET only).")
    mcp_servers: list[Literal["ultrawork"]] | None = Field(
        None, description="MCP servers the role's CLI is given: 'ultrawork' (the run's sandbox tools, bound to "
        "this agent; a restarted server retries the step it died in).")
    memory_mb: int | None = Field(None, ge=16, description="Memory limit in MiB.")
    cpus: float | None = Field(None, gt=0, description="CPU quota in cores.")
    pids: int | None = Field(None, ge=8, description="Process/thread limit.")
    timeout: float | None = Field(None, gt=0, description="Seconds one step may run.")
    checklist: list[str] | None = Field(None, description="Acceptance checklist written to the role's Plan.md.")

    def apply(self, profile: AgentProfile) -> AgentProfile:
        if self.profile is not None:
            profile = named_profile(profile.role, self.profile, checklist=list(profile.checklist))
        data = profile.model_dump()
        changes = self.model_dump(exclude_none=True, exclude={"profile"})
        for key in ("memory_mb", "cpus", "pids"):
            if key in changes:
                data["limits"][key] = changes.pop(key)
        data.update(changes)
        return AgentProfile.model_validate(data)


class AgentProfiles(Block):
    """How each agent role runs: leave a role empty to keep its built-in profile.

    The sandbox settings block gives every role its image, limits and network
    first; the fields set here then change one role. The sandbox policy still
    checks the result (a role asking for more than the caps is refused).

    Example:
        Run Claude Code as the frontend agent (its key read on the host from $ANTHROPIC_API_KEY by the
        run's egress gateway) with more memory:
        ```python
        from ultrawork.blocks import AgentProfiles, RoleSettings

        AgentProfiles(frontend=RoleSettings(profile="claude-code", memory_mb=2048)).save("default", overwrite=True)
        ```
    """

    _block_type_name: ClassVar[str] = "Ultrawork Agent Profiles"
    _block_type_slug: ClassVar[str] = "ultrawork-agent-profiles"
    _documentation_url: ClassVar[str] = "https://docs.prefect.io/v3/develop/blocks"

    explore: RoleSettings | None = Field(None, description="Explore (read-only): maps the repository.")
    librarian: RoleSettings | None = Field(None, description="Librarian (read-only): dependencies, versions, docs.")
    oracle: RoleSettings | None = Field(None, description="Oracle (read-only): review findings and risks.")
    frontend: RoleSettings | None = Field(None, description="Frontend (writer): makes the change.")

    def apply(self, profiles: dict[str, AgentProfile]) -> dict[str, AgentProfile]:
        """``profiles`` with this block's changes applied, role by role."""
        out = dict(profiles)
        for role in ROLES:
            settings = getattr(self, role)
            if settings is not None and role in out:
                out[role] = settings.apply(out[role])
        return out
