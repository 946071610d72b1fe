"""The hook registry: nine built-in hooks run in a fixed order at five points.

Hook points and order (the table `BUILTIN_HOOKS`; user hooks run after the
built-ins of their point, in registration order):

==============  ====================================================  ======================
point           hooks, in order                                       called from
==============  ====================================================  ======================
setup           branch-name-validator -> pre-task-branch-creator ->   RunSuperproject.add_agent
                submodule-creator -> plan-file-creator
before_step     container-safety-enforcer (safety)                    AgentWorkspace.before_step
during_step     resource-limit-monitor (safety)                       AgentWorkspace.check_resources
after_step      isolation-checker (safety) -> plan-updater            AgentWorkspace.record_step
finalize        plan-finalizer                                        AgentWorkspace.finalize
==============  ====================================================  ======================

Failure policy, by the kind of hook:

* *safety* hooks fail closed: an exception (or a `SafetyViolation`) stops the
  step. They are never disabled. At ``after_step`` and ``finalize`` the
  remaining hooks still run so Plan.md records the violation; then the
  registry raises the first violation (with ``.report`` attached).
* *essential* hooks (the four setup hooks) abort the operation with their own
  typed error (`BranchNameError`, `GitError`, `WorkspaceError`); a workspace
  cannot exist without them, so they are never disabled either.
* every other hook (plan-updater, plan-finalizer, user hooks) reports failure
  by raising; the registry turns it into a `HookError` in the returned
  `HookRunReport` and the run continues. After `max_consecutive_failures`
  (default 3) failures in a row, counted per run across processes, the hook
  is disabled for the rest of the run; the caller records both in Plan.md.
  Parallel agents take turns running such a hook (a lock per hook), so the
  count is exact: the third failure disables it before a fourth run starts.

User hooks come from configuration (``{"target": "pkg.mod:func", "point":
"after_step", "safety": false}``) or from the ``ultrawork.hooks`` entry-point
group (objects made with `hook` or `HookSpec`).
"""

from __future__ import annotations

import importlib
import hashlib
import json
import os
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ultrawork.workspace import builtin_hooks as builtin
from ultrawork.workspace.command_policy import DEFAULT_DENY_LIST, DeniedCommand
from ultrawork.workspace.errors import HookError, SafetyViolation, UltraworkError
from ultrawork.workspace.locks import file_lock

ENTRY_POINT_GROUP = "ultrawork.hooks"
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class HookPoint(str, Enum):
    SETUP = "setup"
    BEFORE_STEP = "before_step"
    DURING_STEP = "during_step"
    AFTER_STEP = "after_step"
    FINALIZE = "finalize"


# Points whose remaining hooks still run after a safety violation (they record it).
RECORDING_POINTS = frozenset({HookPoint.AFTER_STEP, HookPoint.FINALIZE})


@dataclass
class HookContext:
    """What a hook sees. Fields not relevant to a point stay None."""

    point: HookPoint
    workspace: Any  # AgentWorkspace (typed loosely to keep this module import-light)
    checklist: list[str] = field(default_factory=list)
    sandbox_spec: Mapping[str, Any] | None = None
    argv: list[str] | None = None
    policy_check: Callable[[], None] | None = None
    deny_list: Sequence[DeniedCommand] = DEFAULT_DENY_LIST
    step: Any = None  # StepRecord
    step_number: int | None = None
    files_changed: list[str] | None = None
    stats: Any = None
    now: float | None = None
    final: Any = None  # PlanFinal
    findings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


HookFunc = Callable[[HookContext], None]


@dataclass(frozen=True)
class HookSpec:
    name: str
    point: HookPoint
    func: HookFunc
    safety: bool = False
    essential: bool = False

    def __call__(self, ctx: HookContext) -> None:
        self.func(ctx)


BUILTIN_HOOKS: tuple[HookSpec, ...] = (
    HookSpec("branch-name-validator", HookPoint.SETUP, builtin.branch_name_validator, essential=True),
    HookSpec("pre-task-branch-creator", HookPoint.SETUP, builtin.pre_task_branch_creator, essential=True),
    HookSpec("submodule-creator", HookPoint.SETUP, builtin.submodule_creator, essential=True),
    HookSpec("plan-file-creator", HookPoint.SETUP, builtin.plan_file_creator, essential=True),
    HookSpec("container-safety-enforcer", HookPoint.BEFORE_STEP, builtin.container_safety_enforcer, safety=True),
    HookSpec("resource-limit-monitor", HookPoint.DURING_STEP, builtin.resource_limit_monitor, safety=True),
    HookSpec("isolation-checker", HookPoint.AFTER_STEP, builtin.isolation_checker, safety=True),
    HookSpec("plan-updater", HookPoint.AFTER_STEP, builtin.plan_updater),
    HookSpec("plan-finalizer", HookPoint.FINALIZE, builtin.plan_finalizer),
)


@dataclass
class HookEvent:
    at: str
    point: str
    hook: str
    kind: str  # "failed" | "disabled" | "violation"
    message: str


@dataclass
class HookRunReport:
    """What happened at one point: the caller records failures and disables in Plan.md."""

    point: HookPoint
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # disabled earlier in the run
    failures: list[HookError] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)  # disabled by this run of the point
    violations: list[SafetyViolation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failures or self.violations)


def hook(point: str, *, name: str | None = None, safety: bool = False) -> Callable[[HookFunc], HookSpec]:
    """Decorator for user hooks: ``@hook("after_step", safety=True)``."""
    def wrap(func: HookFunc) -> HookSpec:
        return HookSpec(name or func.__name__.replace("_", "-"), HookPoint(point), func, safety=safety)
    return wrap


def load_hook(target: str, *, point: str, safety: bool = False, name: str | None = None) -> HookSpec:
    """Import ``pkg.mod:callable`` (a function, or a `HookSpec` made with `hook`)."""
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise HookError(f"hook target {target!r} must look like 'package.module:callable'")
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    func = obj.func if isinstance(obj, HookSpec) else obj
    if not callable(func):
        raise HookError(f"hook target {target!r} is not callable")
    return HookSpec(name or attr.split(".")[-1].replace("_", "-"), HookPoint(point), func, safety=bool(safety))


def hooks_from_config(items: Iterable[Mapping[str, Any]]) -> list[HookSpec]:
    return [load_hook(i["target"], point=i["point"], safety=i.get("safety", False), name=i.get("name"))
            for i in items]


_ENTRY_POINT_HOOKS: dict[tuple[str, tuple[str, ...]], list[HookSpec]] = {}


def hooks_from_entry_points(group: str = ENTRY_POINT_GROUP) -> list[HookSpec]:
    """The installed packages' hooks. Scanning every installed distribution takes ~10 ms and
    every opening of a run asks, so the answer is kept per ``sys.path`` (a path added later,
    such as a freshly installed plugin's, is scanned then)."""
    key = (group, tuple(sys.path))
    if key not in _ENTRY_POINT_HOOKS:
        specs = []
        for ep in entry_points(group=group):
            obj = ep.load()
            if not isinstance(obj, HookSpec):
                raise HookError(f"entry point {ep.name} in {group} must be a HookSpec (use @hook)")
            specs.append(obj)
        _ENTRY_POINT_HOOKS[key] = specs
    return list(_ENTRY_POINT_HOOKS[key])


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class HookRegistry:
    """Runs hooks per point; keeps per-run failure counts in `state_path` (JSON) if given."""

    def __init__(self, hooks: Iterable[HookSpec] = (), *, max_consecutive_failures: int = 3,
                 state_path: Path | None = None) -> None:
        self.max_consecutive_failures = max_consecutive_failures
        self.state_path = state_path
        self.events: list[HookEvent] = []
        self._hooks: list[HookSpec] = list(BUILTIN_HOOKS)
        self._memory_state: dict[str, dict[str, Any]] = {}
        for spec in hooks:
            self.register(spec)

    def register(self, spec: HookSpec) -> None:
        if any(h.name == spec.name for h in self._hooks):
            raise HookError(f"a hook named {spec.name!r} is already registered", hook=spec.name)
        if spec.essential:
            raise HookError("only built-in setup hooks are essential", hook=spec.name)
        self._hooks.append(spec)

    def hooks_for(self, point: str | HookPoint) -> list[HookSpec]:
        return [h for h in self._hooks if h.point == HookPoint(point)]

    # -- per-run state ------------------------------------------------------------------
    def _load_state(self) -> dict[str, dict[str, Any]]:
        if self.state_path is None:
            return self._memory_state
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _update_state(self, name: str, failed: bool, error: str = "") -> dict[str, Any]:
        def update(state: dict) -> dict:
            entry = state.setdefault(name, {"consecutive_failures": 0, "disabled": False})
            entry["consecutive_failures"] = entry["consecutive_failures"] + 1 if failed else 0
            if failed:
                entry["last_error"] = error[:500]
                if entry["consecutive_failures"] >= self.max_consecutive_failures:
                    entry["disabled"] = True
            return entry
        if self.state_path is None:
            return dict(update(self._memory_state))
        with file_lock(self.state_path.with_name(self.state_path.name + ".lock")):
            state = self._load_state()
            entry = dict(update(state))
            tmp = self.state_path.with_name(self.state_path.name + ".tmp")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
            os.replace(tmp, self.state_path)  # readers never see a half-written file
        return entry

    def _turn(self, spec: HookSpec):
        """One run of a counted hook at a time across the run's parallel agents, so that
        "disabled after N consecutive failures" means N runs, not N plus those already under way."""
        if self.state_path is None:
            return nullcontext()
        digest = hashlib.sha256(spec.name.encode()).hexdigest()[:16]
        return file_lock(self.state_path.with_name(f"hook-{digest}.lock"))

    def disabled_hooks(self) -> list[str]:
        return sorted(name for name, entry in self._load_state().items() if entry.get("disabled"))

    # -- running -----------------------------------------------------------------------
    def run(self, point: str | HookPoint, ctx: HookContext) -> HookRunReport:
        """Run the hooks of `point` in order; see the module docstring for failure policy."""
        point = HookPoint(point)
        report = HookRunReport(point)
        for spec in self.hooks_for(point):
            if report.violations and point not in RECORDING_POINTS:
                break
            counted = not (spec.safety or spec.essential)
            with self._turn(spec) if counted else nullcontext():
                entry = self._load_state().get(spec.name, {}) if counted else {}
                if entry.get("disabled"):
                    report.skipped.append(spec.name)
                    continue
                try:
                    spec.func(ctx)
                except Exception as exc:  # noqa: BLE001 - every hook failure is classified below
                    self._handle_failure(spec, point, ctx, report, exc)
                else:
                    report.ran.append(spec.name)
                    if entry.get("consecutive_failures"):
                        self._update_state(spec.name, failed=False)
        if report.violations:
            first = report.violations[0]
            first.report = report
            raise first
        return report

    def _handle_failure(self, spec: HookSpec, point: HookPoint, ctx: HookContext,
                        report: HookRunReport, exc: Exception) -> None:
        if spec.safety:
            violation = exc if isinstance(exc, SafetyViolation) else SafetyViolation(
                f"safety hook {spec.name} failed: {exc}", findings=[f"{spec.name} failed: {exc}"])
            if violation is not exc:
                violation.__cause__ = exc
            violation.hook, violation.point = violation.hook or spec.name, point.value
            report.violations.append(violation)
            ctx.findings.extend(violation.findings or [str(violation)])
            self.events.append(HookEvent(_now(), point.value, spec.name, "violation", str(violation)))
            return
        if spec.essential:
            if isinstance(exc, UltraworkError):
                raise exc
            raise HookError(f"hook {spec.name} failed: {exc}", hook=spec.name, point=point.value) from exc
        error = HookError(f"hook {spec.name} failed: {exc}", hook=spec.name, point=point.value)
        error.__cause__ = exc
        report.failures.append(error)
        self.events.append(HookEvent(_now(), point.value, spec.name, "failed", str(exc)))
        entry = self._update_state(spec.name, failed=True, error=str(exc))
        if entry["disabled"] and entry["consecutive_failures"] == self.max_consecutive_failures:
            report.disabled.append(spec.name)
            self.events.append(HookEvent(_now(), point.value, spec.name, "disabled",
                                         f"{self.max_consecutive_failures} consecutive failures"))
