"""Resource-limit monitoring for a running step.

The sandbox polls container stats and hands each snapshot to the
resource-limit-monitor hook. A limit passed once is normal (a compiler spikes);
a limit passed for longer than the grace period means the step should stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ResourceThresholds:
    """Fractions of the container limits, and how long they may be exceeded."""

    memory_fraction: float = 0.95
    pids_fraction: float = 0.95
    cpu_percent: float | None = None  # None: CPU is throttled by the cgroup, not watched
    grace_seconds: float = 10.0


@dataclass
class ResourceVerdict:
    stop: bool
    exceeded: dict[str, float]  # limit name -> seconds it has been exceeded
    reasons: list[str]


@dataclass
class ResourceMonitor:
    """Remembers since when each limit has been exceeded during the current step."""

    thresholds: ResourceThresholds = field(default_factory=ResourceThresholds)
    _since: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self._since.clear()

    def _over_limits(self, stats: Any) -> dict[str, str]:
        over: dict[str, str] = {}
        t = self.thresholds
        memory, memory_limit = getattr(stats, "memory_bytes", None), getattr(stats, "memory_limit_bytes", None)
        if memory is not None and memory_limit and memory >= t.memory_fraction * memory_limit:
            over["memory"] = f"memory {memory} B >= {t.memory_fraction:.0%} of {memory_limit} B"
        pids, pids_limit = getattr(stats, "pids", None), getattr(stats, "pids_limit", None)
        if pids is not None and pids_limit and pids >= t.pids_fraction * pids_limit:
            over["pids"] = f"pids {pids} >= {t.pids_fraction:.0%} of {pids_limit}"
        cpu = getattr(stats, "cpu_percent", None)
        if t.cpu_percent is not None and cpu is not None and cpu >= t.cpu_percent:
            over["cpu"] = f"cpu {cpu:.0f}% >= {t.cpu_percent:.0f}%"
        return over

    def observe(self, stats: Any, now: float | None = None) -> ResourceVerdict:
        """Feed one stats snapshot; `stop` is true once a limit outlasts the grace period."""
        now = time.monotonic() if now is None else now
        over = self._over_limits(stats)
        for name in list(self._since):
            if name not in over:
                del self._since[name]
        for name in over:
            self._since.setdefault(name, now)
        exceeded = {name: now - since for name, since in self._since.items()}
        reasons = [f"{over[name]} for {exceeded[name]:.1f}s" for name in over
                   if exceeded[name] > self.thresholds.grace_seconds]
        return ResourceVerdict(stop=bool(reasons), exceeded=exceeded, reasons=reasons)
