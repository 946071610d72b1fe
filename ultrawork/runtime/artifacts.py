"""What a run shows in the Prefect UI: each Plan.md, a results table, progress."""

from __future__ import annotations

import asyncio
import re
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ultrawork.agents.outcome import AgentOutcome

from ultrawork.runtime.logs import get_logger
from ultrawork.untrusted import ARTIFACT_BYTES, Untrusted, bounded, byte_len, table_rows


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:200]


def plan_markdown(role: str, plan: Untrusted, where: str) -> str:
    """An agent's Plan.md as an artifact: its text as written (the agent can rewrite all of it),
    in a block sized from its content, cut to the artifact's cap with the command for the rest."""
    rest = f"cat {where}" if where else "its Plan.md"
    head = f"Plan.md of the **{role}** agent, as its workspace holds it (the agent's own text, shown as written)."
    return f"{head}\n\n{plan.block(limit=ARTIFACT_BYTES - 4096)}\n" + (
        "" if byte_len(plan.text) <= ARTIFACT_BYTES - 4096 else
        f"\n… (shortened; the whole Plan.md: `{rest}` on the machine that ran the agent)\n")


async def publish_plan(run_id: str, role: str, plan: Untrusted, where: str = "") -> None:
    """``where``: the Plan.md's path, named when the artifact is cut."""
    await create_markdown_artifact(markdown=plan_markdown(role, plan, where), key=artifact_key("plan", run_id, role),
                                   description=f"Plan.md of the {role} agent in run {run_id}")


async def publish_results(run_id: str, outcomes: list[AgentOutcome]) -> None:
    rows = [
        {"agent": o.role, "outcome": o.status, "files changed": o.files_changed,
         "insertions": o.insertions, "deletions": o.deletions, "commits": len(o.commits),
         "duration (s)": round(o.duration, 1), "retries": o.retries,
         "sandboxes created": o.sandboxes_created, "branch": o.branch, **_model_columns(o.model, o.usage),
         **({"egress": o.egress or ""} if any(x.egress for x in outcomes) else {})}
        for o in outcomes
    ]
    if any(o.usage for o in outcomes):                 # the run's model totals
        from ultrawork.model_agent.accounting import total_usage

        rows.append({"agent": "(run total)", **_model_columns("", total_usage([o.usage for o in outcomes]).model_dump())})
    await create_table_artifact(table=table_rows(rows), key=artifact_key("results", run_id),
                                description=f"Agent results of run {run_id}")


def _model_columns(model: str | None, usage: dict | None) -> dict:
    """Which model an agent used and what it spent (blank for a command agent)."""
    usage = usage or {}
    return {"model": model or "", "requests": usage.get("requests", ""), "input tokens": usage.get("input_tokens", ""),
            "output tokens": usage.get("output_tokens", ""),
            "cost": "" if usage.get("cost") is None else usage["cost"]}


class Progress:
    """A progress artifact advanced as agents finish.

    ``start`` only schedules the artifact's creation, so the agents start at the
    same time; a progress artifact that cannot be written is logged, never fatal."""

    def __init__(self, total: int):
        self.total = max(1, total)
        self.done = 0
        self.id: UUID | None = None
        self._created: asyncio.Future | None = None

    def start(self, run_id: str) -> None:
        async def create() -> None:
            try:
                self.id = await create_progress_artifact(progress=0.0, key=artifact_key("progress", run_id),
                                                         description=f"Agents finished in run {run_id}")
            except Exception as exc:  # noqa: BLE001 - a display, not the run's record
                get_logger().warning("progress artifact not created: %s", exc)
        self._created = asyncio.ensure_future(create())

    async def advance(self) -> None:
        self.done += 1
        if self._created is not None:
            await self._created
        if self.id is not None:
            await update_progress_artifact(self.id, progress=100.0 * self.done / self.total)


def ui_url(path: str) -> str | None:
    """The Prefect UI address of ``path`` (e.g. ``runs/flow-run/<id>``), or None without a UI."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/{path.lstrip('/')}" if base else None


async def publish_diff(run_id: str, role: str, markdown: str) -> str | None:
    """The agent's diff as a markdown artifact (the host's rendering of it, cut at the artifact's cap);
    returns its address in the UI (None when it has none)."""
    artifact_id = await create_markdown_artifact(markdown=bounded(markdown, ARTIFACT_BYTES,
                                                                  rest=f"ultrawork diff {run_id} {role}"),
                                                 key=artifact_key("diff", run_id, role),
                                                 description=f"What the {role} agent changed in run {run_id}")
    return ui_url(f"artifacts/artifact/{artifact_id}")
