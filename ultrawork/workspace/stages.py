"""An agent's stages in the run's superproject: one name each, and the commit subject that records it.

Every stage is one superproject commit whose subject is ``<role>: <stage>[ <detail>]``
(``frontend: step 2 (exit 0)``, ``frontend: finalized (succeeded)``); :func:`subject`
writes it and :func:`parse` reads it back, so nothing else matches subject strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    QUEUED = "queued"                         # not in the superproject yet
    WORKSPACE_CREATED = "workspace created"
    PLAN_CREATED = "plan created"
    STEP = "step"                             # detail: "<n> (exit <code>)", "recorded (exit <code>)", "refused"
    CHANGES_COMMITTED = "changes committed"   # detail: "(<k> new commit(s))"
    FINALIZED = "finalized"                   # detail: "(<outcome>)"
    OUTCOME_RECORDED = "outcome recorded"     # the orchestrator's ledger entry; detail: "(<status>)"


ORDER = tuple(Stage)                          # the order an agent goes through them


def subject(role: str, stage: Stage, detail: str = "") -> str:
    """The commit subject recording ``stage`` of ``role``."""
    return f"{role}: {stage.value}{' ' + detail if detail else ''}"


@dataclass(frozen=True)
class StageRecord:
    role: str
    stage: Stage
    detail: str

    @property
    def in_parentheses(self) -> str:
        """The outcome or count a stage carries: ``finalized (succeeded)`` -> ``succeeded``."""
        start, end = self.detail.find("("), self.detail.rfind(")")
        return self.detail[start + 1:end] if 0 <= start < end else ""


def parse(text: str) -> StageRecord | None:
    """The stage a commit subject records, or None for a run-level subject (``run created``...)."""
    role, sep, rest = text.partition(": ")
    if not sep:
        return None
    for stage in sorted(Stage, key=lambda s: len(s.value), reverse=True):
        if rest == stage.value or rest.startswith(stage.value + " "):
            return StageRecord(role, stage, rest[len(stage.value):].strip())
    return None
