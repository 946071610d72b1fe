"""Agent roles: what each role may touch and which command it runs.

Explore, Librarian and Oracle are read-only roles: their workspace is mounted
read-only, so the sandbox itself (not the prompt) stops them editing code;
they report through Plan.md. Frontend is the writer role.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ultrawork.gateway.rules import AgentProfile as EgressProfile, Credential, HostRule, Route
from ultrawork.gateway.run import GATEWAY_NETWORK
from ultrawork.sandbox.spec import DEFAULT_IMAGE, Limits

ROLES = ("explore", "librarian", "oracle", "frontend")
BUILTIN_AGENT = Path(__file__).with_name("builtin_agent.py")
PROMPT_FILE = "/agent/prompt.md"
PLAN_FILE = "/plan/Plan.md"
MCP_CONFIG = "/mcp/mcp.json"       # the MCP client configuration a profile with MCP servers gets
PLACEHOLDERS = {"role", "prompt_file", "plan_file", "workspace", "run_id", "mcp_config"}
# How a CLI is told of its MCP servers, when its template does not say it already.
MCP_FLAGS: dict[str, list[str]] = {"claude": ["--mcp-config", "{mcp_config}"]}

COMMAND_TEMPLATES: dict[str, list[str]] = {
    "builtin": ["python3", "/agent/builtin_agent.py", "{role}"],
    # CLI agents run non-interactively in their own image (sandbox.agent_image.agent_image(cli)),
    # read the task from the prompt file and edit without asking: the sandbox, not a prompt,
    # is what limits them. They reach their model through a base-URL setting and a network
    # the profile allows. Telemetry and update checks are off in their images.
    "claude-code": ["claude", "-p", "--permission-mode", "bypassPermissions", "--no-session-persistence",
                    "Read {prompt_file} and do the task. Write findings to {plan_file}."],
    # the message goes before --file: yargs would take a later positional as another file
    "opencode": ["opencode", "run", "--auto", "Do the task in the attached file.", "--file", "{prompt_file}"],
    "codex": ["codex", "exec", "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check",
              "Read {prompt_file} and do the task. Write findings to {plan_file}."],
}


class AgentProfile(BaseModel):
    """How one role runs: its command, image, mount mode, network, limits and timeout."""

    model_config = ConfigDict(extra="forbid")

    role: str
    command: list[str] = Field(default_factory=lambda: list(COMMAND_TEMPLATES["builtin"]),
                               description="Argument list; {role} {prompt_file} {plan_file} {workspace} {run_id} are filled in.")
    image: str = DEFAULT_IMAGE
    workspace_mode: Literal["ro", "rw"] = "ro"
    network: str = "none"
    limits: Limits = Field(default_factory=Limits)
    timeout: float = Field(600.0, description="Seconds one step may run.")
    checklist: list[str] = Field(default_factory=list, description="Acceptance checklist written to Plan.md.")
    egress: EgressProfile | None = Field(None, description="With network 'gateway': the hosts the agent may reach "
                                         "through the run's egress gateway and the credentials it injects.")
    mcp_servers: list[Literal["ultrawork"]] = Field(
        default_factory=list, description="MCP servers the agent's CLI is given: 'ultrawork' is the run's sandbox "
        "tools, bound to this agent (a host process reached through a socket at /mcp; config {mcp_config}).")
    agent: Literal["command", "model"] = Field("command", description="command: run ``command`` in the sandbox; "
                                               "model: the built-in model agent (its loop on the host, every tool "
                                               "call a step in the sandbox; see ultrawork.model_agent).")

    @model_validator(mode="after")
    def _egress_needs_the_gateway(self) -> "AgentProfile":
        if (self.network == GATEWAY_NETWORK) != (self.egress is not None):
            raise ValueError(f"network {GATEWAY_NETWORK!r} and an egress profile go together "
                             f"(network is {self.network!r}, egress is {'set' if self.egress else 'empty'})")
        return self

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, value):
        if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
            raise ValueError("the agent command template must be a non-empty list of argument strings")
        return value

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, value: list[str]) -> list[str]:
        for arg in value:
            unknown = set(re.findall(r"{(\w*)}", arg)) - PLACEHOLDERS
            if unknown:
                raise ValueError(f"unknown placeholder(s) {sorted(unknown)} in {arg!r}; known: {sorted(PLACEHOLDERS)}")
        return value

    def argv(self, run_id: str) -> list[str]:
        """The command with its placeholders filled in (no shell ever sees it)."""
        values = {"role": self.role, "prompt_file": PROMPT_FILE, "plan_file": PLAN_FILE,
                  "workspace": "/workspace", "run_id": run_id, "mcp_config": MCP_CONFIG}
        command = list(self.command)
        if self.mcp_servers and not any("{mcp_config}" in arg for arg in command) and command[0] in MCP_FLAGS:
            command[1:1] = MCP_FLAGS[command[0]]
        return [re.sub(r"{(\w+)}", lambda m: values[m.group(1)], arg) for arg in command]


DEFAULT_PROFILES: dict[str, AgentProfile] = {
    "explore": AgentProfile(role="explore", checklist=[
        "Map the repository's layout", "List the files relevant to the task"]),
    "librarian": AgentProfile(role="librarian", checklist=[
        "List dependencies and their versions", "Point to the local docs that matter"]),
    "oracle": AgentProfile(role="oracle", checklist=[
        "Review the relevant code for defects", "Name the risks of the change"]),
    "frontend": AgentProfile(role="frontend", workspace_mode="rw", checklist=[
        "Make the change the task asks for", "Leave the work committed on the agent's branch"]),
}

# Which roles a task needs: the first rule whose pattern matches adds its roles.
# Explore always runs; the others join when the task's words call for them.
CLASSIFICATION_RULES: list[tuple[str, tuple[str, ...]]] = [
    (r".", ("explore",)),
    (r"\b(depend\w*|librar\w*|version\w*|upgrade|docs?|documentation|api)\b", ("librarian",)),
    (r"\b(review|risk\w*|audit|secur\w*|bug\w*|fix\w*|refactor\w*)\b", ("oracle",)),
    (r"\b(add|change|implement\w*|edit|fix\w*|write|create|update|rename|ui|frontend|page)\b|```", ("frontend",)),
]


def classify(task: str) -> list[str]:
    """Roles the task needs, in the canonical order."""
    wanted = set()
    for pattern, roles in CLASSIFICATION_RULES:
        if re.search(pattern, task, re.I):
            wanted.update(roles)
    return [role for role in ROLES if role in wanted]


class UnknownRoleError(ValueError):
    """A role name that no profile defines."""


def resolve_profiles(
    task: str,
    agents: list[str] | None = None,
    agent_commands: dict[str, list[str]] | None = None,
    profiles: dict[str, AgentProfile] | None = None,
) -> dict[str, AgentProfile]:
    """The profiles a run will use: classified or chosen roles, with command overrides applied.

    Raises before anything is started: ``ValueError`` for an empty task or a bad
    command template, :class:`UnknownRoleError` for a role no profile defines.
    """
    if not isinstance(task, str) or not task.strip():
        raise ValueError("the task is empty: say what the agents should do")
    known = dict(DEFAULT_PROFILES, **(profiles or {}))
    roles = list(dict.fromkeys(agents)) if agents else classify(task)
    unknown = [r for r in roles if r not in known]
    unknown += [r for r in (agent_commands or {}) if r not in roles and r not in unknown]
    if unknown:
        raise UnknownRoleError(f"unknown role(s) {', '.join(map(repr, unknown))}; known roles: {', '.join(known)}")
    chosen = {}
    for role in roles:
        profile = known[role]
        if agent_commands and role in agent_commands:
            data = profile.model_dump()
            data["command"] = agent_commands[role]
            profile = AgentProfile.model_validate(data)
        chosen[role] = profile
    return chosen


def cli_profile(role: str, cli: str, **fields) -> AgentProfile:
    """``role``'s default profile running coding-agent CLI ``cli`` in that CLI's image.

    The image tag comes from :func:`ultrawork.sandbox.agent_image.agent_image` (build it with
    ``ultrawork sandbox build --agent CLI``); the network stays ``none`` unless
    ``fields`` say otherwise: the CLI needs one that reaches its model.
    """
    from ultrawork.sandbox.agent_image import agent_image

    if role not in DEFAULT_PROFILES:
        raise UnknownRoleError(f"unknown role {role!r}; known roles: {', '.join(DEFAULT_PROFILES)}")
    if cli not in COMMAND_TEMPLATES or cli == "builtin":
        raise ValueError(f"no command template for CLI {cli!r}; known: "
                         f"{', '.join(c for c in COMMAND_TEMPLATES if c != 'builtin')}")
    data = {**DEFAULT_PROFILES[role].model_dump(), "command": list(COMMAND_TEMPLATES[cli]),
            "image": agent_image(cli), **fields}
    return AgentProfile.model_validate(data)


# The model API each CLI calls: reached through the run's gateway on a plain-HTTP base URL, the
# key injected by the gateway from the host (the sandbox sees only a placeholder).
CLI_EGRESS: dict[str, EgressProfile] = {
    "claude-code": EgressProfile(
        allow=[HostRule(host="api.anthropic.com", methods=["GET", "HEAD", "POST"])],
        credentials=[Credential(match="api.anthropic.com", header="x-api-key", format="{secret}",
                                secret="env:ANTHROPIC_API_KEY", placeholder_env="ANTHROPIC_API_KEY")],
        routes=[Route(upstream="https://api.anthropic.com", base_url_env="ANTHROPIC_BASE_URL")]),
    # OpenCode's Anthropic provider takes its base URL (with /v1) from ANTHROPIC_BASE_URL
    "opencode": EgressProfile(
        allow=[HostRule(host="api.anthropic.com", methods=["GET", "HEAD", "POST"])],
        credentials=[Credential(match="api.anthropic.com", header="x-api-key", format="{secret}",
                                secret="env:ANTHROPIC_API_KEY", placeholder_env="ANTHROPIC_API_KEY")],
        routes=[Route(upstream="https://api.anthropic.com", base_url_env="ANTHROPIC_BASE_URL",
                      base_url_path="/v1")]),
    "codex": EgressProfile(
        allow=[HostRule(host="api.openai.com", methods=["GET", "HEAD", "POST"])],
        credentials=[Credential(match="api.openai.com", header="Authorization", format="Bearer {secret}",
                                secret="env:OPENAI_API_KEY", placeholder_env="OPENAI_API_KEY")],
        routes=[Route(upstream="https://api.openai.com", base_url_env="OPENAI_BASE_URL", base_url_path="/v1")]),
}
AGENT_PROFILE_NAMES = ("builtin", "model", *CLI_EGRESS)
CLI_MEMORY_MB = 1024     # Node and a CLI's tool runs need more than the built-in agent


def named_profile(role: str, name: str, **fields) -> AgentProfile:
    """``role`` running the agent profile ``name``: ``builtin`` (offline, network none) or a CLI
    (``claude-code``, ``opencode``, ``codex``) in its image, reaching its model API through the
    run's egress gateway with the key kept on the host. A read-only role stays read-only."""
    if role not in DEFAULT_PROFILES:
        raise UnknownRoleError(f"unknown role {role!r}; known roles: {', '.join(DEFAULT_PROFILES)}")
    if name not in AGENT_PROFILE_NAMES:
        raise ValueError(f"unknown agent profile {name!r}; known: {', '.join(AGENT_PROFILE_NAMES)}")
    if name in ("builtin", "model"):   # model: the host-side model agent; its sandbox keeps network none
        agent = {"agent": "model"} if name == "model" else {}
        return AgentProfile.model_validate({**DEFAULT_PROFILES[role].model_dump(), **agent, **fields})
    limits = Limits(**{**DEFAULT_PROFILES[role].limits.model_dump(), "memory_mb": CLI_MEMORY_MB})
    return cli_profile(role, name, **{"network": GATEWAY_NETWORK, "egress": CLI_EGRESS[name].model_copy(deep=True),
                                      "limits": limits, **fields})


def parse_agent_profiles(items: list[str]) -> dict[str, str]:
    """``ROLE=PROFILE`` pairs from the command line, checked by name (no Docker needed)."""
    chosen: dict[str, str] = {}
    for item in items:
        role, sep, name = (part.strip() for part in item.partition("="))
        if not sep or not role or not name:
            raise ValueError(f"--agent-profile {item!r} must look like ROLE=PROFILE, e.g. frontend=claude-code")
        if role not in DEFAULT_PROFILES:
            raise UnknownRoleError(f"unknown role {role!r}; known roles: {', '.join(DEFAULT_PROFILES)}")
        if name not in AGENT_PROFILE_NAMES:
            raise ValueError(f"unknown agent profile {name!r} for {role}; known: {', '.join(AGENT_PROFILE_NAMES)}")
        chosen[role] = name
    return chosen


def with_named_profiles(profiles: dict[str, AgentProfile], chosen: dict[str, str] | None) -> dict[str, AgentProfile]:
    """``profiles`` with each chosen role running its named profile (its checklist kept)."""
    out = dict(profiles)
    for role, name in (chosen or {}).items():
        base = out.get(role) or DEFAULT_PROFILES.get(role)
        extra = {"checklist": list(base.checklist)} if base is not None else {}
        out[role] = named_profile(role, name, **extra)
    return out
