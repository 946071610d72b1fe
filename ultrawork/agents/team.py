"""A run's team: several agents of one role, research before the writers, and the run's plan.

Plain data and text (no Prefect): the orchestrator asks what the team is, in which order
it runs, and what each agent is told. Research roles (explore, librarian, oracle) run
first, side by side; the writers (frontend and its instances ``frontend-2``, ``frontend-3``...)
start with the researchers' findings in their prompt.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from ultrawork.agents.attempts import attempt_of
from ultrawork.agents.outcome import AgentOutcome
from ultrawork.agents.profiles import DEFAULT_PROFILES, ROLES, AgentProfile

RESEARCH_ROLES = ("explore", "librarian", "oracle")
WRITER_ROLES = ("frontend",)
MAX_AGENTS = 16
INSTANCE = re.compile(r"(?P<role>[a-z][a-z0-9_]*)-(?P<n>[2-9]|1[0-6])")
FINDINGS_CHARS = 2_000            # one researcher's findings in a writer's prompt


def base_role(name: str) -> str:
    """``frontend-2`` -> ``frontend`` (and ``frontend-2-try3``, an attempt of it); a role name is its own base."""
    name = attempt_of(name)
    match = INSTANCE.fullmatch(name)
    return match.group("role") if match and match.group("role") in ROLES else name


def with_instances(profiles: dict[str, AgentProfile], names: list[str] | None) -> dict[str, AgentProfile]:
    """``profiles`` plus a copy of the base profile for each instance name (``frontend-2``...).

    Each instance gets its own branch, clone, Plan.md and sandbox (they are keyed by the name).
    """
    out = dict(profiles)
    for name in names or []:
        base = base_role(name)
        if name not in out and base != name:
            template = out.get(base) or DEFAULT_PROFILES[base]
            out[name] = template.model_copy(update={"role": name}, deep=True)
    return out


def phases(profiles: dict[str, AgentProfile]) -> tuple[list[AgentProfile], list[AgentProfile]]:
    """(research, writers): read-only roles first; the roles that may write start after them."""
    research = [p for p in profiles.values() if p.workspace_mode == "ro"]
    writers = [p for p in profiles.values() if p.workspace_mode != "ro"]
    return research, writers


def findings_of(outcome: AgentOutcome) -> str:
    """What a researcher found: its model agent's findings, else its Plan.md summary."""
    text = "\n".join(f"- {f}" for f in outcome.findings) if outcome.findings else outcome.plan_summary
    text = text.strip() or "(no findings recorded)"
    return text if len(text) <= FINDINGS_CHARS else text[:FINDINGS_CHARS].rstrip() + "\n[... cut]"


def research_section(outcomes: list[AgentOutcome]) -> str:
    """The researchers' findings as a prompt section the writers start from (empty without research)."""
    if not outcomes:
        return ""
    parts = ["# Research findings", "",
             "The research agents ran before you. Start from what they found, and cite the ones you use "
             "in your Plan.md (e.g. \"per explore: ...\")."]
    for o in outcomes:
        parts += ["", f"## {o.role} ({o.status})", "", findings_of(o)]
    return "\n".join(parts) + "\n"


class AgentBrief(BaseModel):
    """One agent of the plan: its name (a role, or ``frontend-2`` for a second writer) and its brief."""

    agent: str = Field(description="A role (explore, librarian, oracle, frontend) or a writer instance "
                                   "such as frontend-2.")
    brief: str = Field(description="What this agent should do, focused on its part of the task.")
    files: list[str] = Field(default_factory=list, description="For a writer: the files its subtask touches "
                             "(no two writers share a file).")

    @field_validator("agent")
    @classmethod
    def _known(cls, value: str) -> str:
        if base_role(value) not in ROLES:
            raise ValueError(f"unknown agent {value!r}: use {', '.join(ROLES)} or a writer instance like frontend-2")
        return value


class RunPlan(BaseModel):
    """What Sisyphus decided: the agents a task needs and one brief each."""

    summary: str = Field(description="The approach in one or two sentences.")
    agents: list[AgentBrief] = Field(description="The research roles needed, then the writers, each with a brief.")
    planned_by: str = Field("rules", description="The model that planned, or 'rules' (offline).")

    @field_validator("agents")
    @classmethod
    def _team(cls, value: list[AgentBrief]) -> list[AgentBrief]:
        names = [a.agent for a in value]
        if not value or len(value) > MAX_AGENTS or len(set(names)) != len(names):
            raise ValueError(f"a plan needs 1 to {MAX_AGENTS} agents, each named once")
        seen: dict[str, str] = {}
        for a in value:
            for f in a.files:
                if f in seen and seen[f] != a.agent:
                    raise ValueError(f"writers {seen[f]} and {a.agent} both touch {f}: give each subtask its own files")
                seen[f] = a.agent
        return value

    def names(self) -> list[str]:
        return [a.agent for a in self.agents]

    def brief(self, name: str) -> str | None:
        return next((a.brief for a in self.agents if a.agent == name), None)

    def markdown(self) -> str:
        """The plan as an artifact; what the model wrote is shown as text (a model reads hostile issues)."""
        from ultrawork.untrusted import Untrusted

        lines = [f"# Run plan ({Untrusted(self.planned_by).markdown(100)})", "", Untrusted(self.summary).markdown(4000),
                 "", "| agent | brief | files |", "| --- | --- | --- |"]
        for a in self.agents:
            files = Untrusted(", ".join(a.files)).markdown(2000) if a.files else "-"
            lines.append(f"| {Untrusted(a.agent).markdown(100)} | {Untrusted(a.brief).markdown(4000)} | {files} |")
        return "\n".join(lines) + "\n"


def rules_plan(task: str, roles: list[str]) -> RunPlan:
    """The offline plan: the classified (or chosen) roles, each briefed with the whole task."""
    return RunPlan(summary="Roles chosen by the built-in rules; every agent gets the whole task.",
                   agents=[AgentBrief(agent=r, brief=task.strip()[:2000]) for r in roles], planned_by="rules")


def agent_prompt(prompt: str, name: str, plan: RunPlan | None, research: str = "") -> str:
    """The role's prompt with its brief from the plan (and, for a writer, the research findings)."""
    part = next((a for a in plan.agents if a.agent in (name, attempt_of(name))), None) if plan else None
    if part is not None and plan.planned_by != "rules":
        files = f"\n\nFiles of your subtask (other writers own the rest): {', '.join(part.files)}" if part.files else ""
        prompt += f"\n# Your part of the plan ({plan.planned_by})\n\n{part.brief.strip()}{files}\n"
    return prompt + (f"\n{research}" if research else "")
