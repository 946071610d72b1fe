"""Adjusting limits: the recovery of a step stopped by its memory or pids limit.

The seed's recovery row "resource exceeded -> adjust limits": the limit the step
hit is multiplied by ``factor`` (up to ``ceiling``) for one more attempt in a
new sandbox. A limit already at its ceiling is not raised, and the step is not
retried: it would fail the same way. CPU is throttled, never a failure, and an
output flood is cut rather than failed, so neither has a limit to raise here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import Limits

WHY = {
    "memory": "after the step was OOM-killed",
    "pids": "after the step hit the process limit",
}


@dataclass(frozen=True)
class LimitRaise:
    """How a hit limit is raised: ``factor`` (1 turns it off) up to the ceilings."""

    factor: float = 2.0
    max_memory_mb: int = 8192
    max_pids: int = 4096


@dataclass(frozen=True)
class RaisedLimit:
    resource: str
    before: int
    after: int
    unit: str

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.before}{unit} → {self.after}{unit}"

    def sentence(self, why: str | None = None) -> str:
        """E.g. "memory limit raised 512 MiB → 1024 MiB after the step was OOM-killed"."""
        why = why or WHY.get(self.resource, "after the step hit it")
        return f"{self.resource} limit raised {self} {why}"


def raise_limit(limits: Limits, resource: str, how: LimitRaise) -> tuple[Limits, RaisedLimit] | str:
    """The raised limits and what changed, or why ``resource`` cannot be raised (a sentence)."""
    fields = {"memory": ("memory_mb", how.max_memory_mb, "MiB"), "pids": ("pids", how.max_pids, "")}
    if resource not in fields:
        return f"the {resource} limit is not one the recovery raises"
    name, ceiling, unit = fields[resource]
    before = getattr(limits, name)
    after = min(int(before * how.factor), ceiling)
    if after <= before:
        shown = f"{before} {unit}".strip()
        return (f"the {resource} limit ({shown}) is at its ceiling ({f'{ceiling} {unit}'.strip()})"
                if how.factor > 1 else f"raising limits is off (factor {how.factor:g})")
    return limits.model_copy(update={name: after}), RaisedLimit(resource, before, after, unit)
