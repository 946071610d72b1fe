"""What one agent's run produced: the record the review and the integration read."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class AgentOutcome(BaseModel):
    role: str
    status: Literal["succeeded", "failed"]
    branch: str
    commits: list[str] = Field(default_factory=list)
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    duration: float = 0.0
    steps: int = 0
    retries: int = 0
    sandboxes_created: int = 0
    errors: list[str] = Field(default_factory=list)
    recoveries: list[str] = Field(default_factory=list)
    plan_path: str = ""
    plan_summary: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
