"""The hook registry: order, user hooks, disabling after failures, fail-closed safety hooks."""

from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace

import pytest

from ultrawork.workspace import (BUILTIN_HOOKS, BranchNameError, CommandDeniedError, HookError, HookPoint, HookRegistry,
                       HookSpec, ResourceLimitError, ResourceThresholds, RunSuperproject, SafetyViolation,
                       StepRecord, denied_reason, hook, load_hook)
from ultrawork.workspace.resources import ResourceMonitor

pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo, run

STEP = StepRecord(["python", "work.py"], 0, 0.1)


def test_builtin_order_is_the_documented_table():
    registry = HookRegistry()
    assert [h.name for h in registry.hooks_for("setup")] == [
        "branch-name-validator", "pre-task-branch-creator", "submodule-creator", "plan-file-creator"]
    assert [h.name for h in registry.hooks_for("before_step")] == ["container-safety-enforcer"]
    assert [h.name for h in registry.hooks_for("during_step")] == ["resource-limit-monitor"]
    assert [h.name for h in registry.hooks_for("after_step")] == ["isolation-checker", "plan-updater"]
    assert [h.name for h in registry.hooks_for("finalize")] == ["plan-finalizer"]
    assert len(BUILTIN_HOOKS) == 9
    assert {h.name for h in BUILTIN_HOOKS if h.safety} == {
        "container-safety-enforcer", "isolation-checker", "resource-limit-monitor"}
    from ultrawork import workspace
    for spec in BUILTIN_HOOKS:
        assert spec.name in workspace.hooks.__doc__


def test_user_hook_runs_after_builtins_and_cannot_shadow_them():
    @hook("after_step")
    def audit(ctx):
        pass
    registry = HookRegistry([audit])
    assert [h.name for h in registry.hooks_for("after_step")] == ["isolation-checker", "plan-updater", "audit"]
    with pytest.raises(HookError):
        registry.register(HookSpec("plan-updater", HookPoint.AFTER_STEP, lambda ctx: None))


def test_failing_hook_is_disabled_after_three_failures_and_the_run_continues(ultrawork_home, target_repo,
                                                                              tmp_path, monkeypatch):
    module = tmp_path / "uw_test_hooks.py"
    module.write_text(textwrap.dedent("""
        CALLS = []
        def flaky(ctx):
            CALLS.append(ctx.step.argv)
            raise RuntimeError("audit service down")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "uw_test_hooks", raising=False)
    config = {"target": "uw_test_hooks:flaky", "point": "after_step", "name": "audit"}
    run = RunSuperproject.create("hooks-run", target_repo, "task", hooks=[config])
    ws = run.add_agent("frontend")
    reports = [ws.record_step(STEP) for _ in range(3)]
    assert [len(r.failures) for r in reports] == [1, 1, 1]
    assert all(isinstance(r.failures[0], HookError) and r.failures[0].hook == "audit" for r in reports)
    assert [r.disabled for r in reports] == [[], [], ["audit"]]
    # the configuration and the disabled state survive reopening the run (another process would do this)
    again = RunSuperproject.open("hooks-run").agent("frontend")
    report = again.record_step(STEP)
    assert report.skipped == ["audit"] and report.ok
    assert report.ran == ["isolation-checker", "plan-updater"]
    assert len(sys.modules["uw_test_hooks"].CALLS) == 3
    text = ws.plan.text()
    assert text.count("**hook-failed**") == 3 and text.count("**hook-disabled**") == 1
    assert "audit service down" in text
    assert ws.plan.summary().steps == 4
    assert run.history()[-4:] == [f"frontend: step {n} (exit 0)" for n in range(1, 5)]
    assert run.hooks.disabled_hooks() == ["audit"]


def test_parallel_agents_disable_a_failing_hook_after_exactly_three_failures(ultrawork_home, target_repo,
                                                                               tmp_path, monkeypatch):
    """Six agents of one run finish a step at once and hit the same failing hook: it runs three times."""
    from concurrent.futures import ThreadPoolExecutor

    module = tmp_path / "uw_turn_hooks.py"
    module.write_text(textwrap.dedent("""
        import threading, time
        CALLS, INSIDE, MOST = [], [0], [0]
        GUARD = threading.Lock()
        def flaky(ctx):
            with GUARD:
                INSIDE[0] += 1
                MOST[0] = max(MOST[0], INSIDE[0])
            time.sleep(0.1)  # long enough for the other agents to arrive meanwhile
            with GUARD:
                INSIDE[0] -= 1
                CALLS.append(ctx.workspace.role)
            raise RuntimeError("notifier down")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "uw_turn_hooks", raising=False)
    run = RunSuperproject.create("turns-run", target_repo, "task",
                                 hooks=[{"target": "uw_turn_hooks:flaky", "point": "after_step", "name": "notifier"}])
    roles = [f"agent{i}" for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        workspaces = list(pool.map(run.add_agent, roles))
        # each agent reopens the run, as a separate process would
        reports = list(pool.map(lambda ws: RunSuperproject.open("turns-run").agent(ws.role).record_step(STEP),
                                workspaces))
    hooks = sys.modules["uw_turn_hooks"]
    assert len(hooks.CALLS) == 3, hooks.CALLS
    assert hooks.MOST[0] == 1, "runs of one hook take turns"
    assert sum(len(r.failures) for r in reports) == 3
    assert [r.disabled for r in reports].count(["notifier"]) == 1
    assert [r.skipped for r in reports].count(["notifier"]) == 3
    assert all(r.ok for r in reports if r.skipped), "agents that skip the disabled hook go on cleanly"
    assert run.hooks.disabled_hooks() == ["notifier"]


def test_success_resets_the_consecutive_failure_count():
    outcomes = iter([True, True, False, True, True, False])

    def sometimes(ctx):
        if next(outcomes):
            raise RuntimeError("flaky")
    registry = HookRegistry([HookSpec("sometimes", HookPoint.FINALIZE, sometimes)])
    registry._hooks = [h for h in registry._hooks if h.name == "sometimes"]
    ctx = SimpleNamespace()
    disabled = [registry.run("finalize", ctx).disabled for _ in range(6)]
    assert disabled == [[]] * 6 and registry.disabled_hooks() == []


def test_failing_safety_hook_stops_the_step_and_is_never_disabled(run):
    calls = []

    def broken_guard(ctx):
        calls.append(ctx.argv)
        raise RuntimeError("guard crashed")
    run.hooks.register(HookSpec("guard", HookPoint.BEFORE_STEP, broken_guard, safety=True))
    ws = run.add_agent("oracle")
    for _ in range(5):
        with pytest.raises(SafetyViolation, match="guard crashed"):
            ws.before_step(["python", "work.py"])
    assert len(calls) == 5 and run.hooks.disabled_hooks() == []
    assert ws.plan.text().count("step refused before it ran") == 5
    assert run.history()[-1] == "oracle: step refused"


def test_failing_safety_hook_after_a_step_is_recorded_then_raised(run):
    run.hooks.register(HookSpec("scanner", HookPoint.AFTER_STEP,
                                lambda ctx: (_ for _ in ()).throw(RuntimeError("scanner crashed")), safety=True))
    ws = run.add_agent("oracle")
    with pytest.raises(SafetyViolation) as info:
        ws.record_step(STEP)
    assert info.value.report.ran == ["isolation-checker", "plan-updater"]
    assert "scanner crashed" in ws.plan.text() and ws.plan.summary().steps == 1


def test_essential_setup_hooks_are_never_disabled(run, target_repo):
    for _ in range(5):
        with pytest.raises(BranchNameError):
            run.add_agent("frontend", branch="ultrawork/a..b")
    assert run.hooks.disabled_hooks() == []
    assert run.add_agent("frontend").branch == "ultrawork/run-1/frontend"


def test_container_safety_enforcer_denies_commands_and_policy_failures(run):
    ws = run.add_agent("frontend")
    for argv in (["rm", "-rf", "/"], ["bash", "-c", "make && git push origin main"], ["docker", "ps"],
                 ["env", "A=1", "curl", "https://example.com"], ["sudo", "id"], ["mkfs.ext4", "/dev/sda"]):
        with pytest.raises(CommandDeniedError):
            ws.before_step(argv)

    def policy():
        raise ValueError("privileged containers are not allowed")
    with pytest.raises(CommandDeniedError, match="privileged"):
        ws.before_step(["pytest"], policy_check=policy)
    assert ws.before_step(["pytest", "-q"], policy_check=lambda: None).ran == ["container-safety-enforcer"]
    assert denied_reason(["git", "status"]) is None and denied_reason(["rm", "-rf", "build"]) is None


def test_resource_limit_monitor_stops_after_the_grace_period(run):
    ws = run.add_agent("explore")
    ws.before_step(["python", "big.py"])
    over = SimpleNamespace(memory_bytes=980, memory_limit_bytes=1000, pids=5, pids_limit=100, cpu_percent=50.0)
    calm = SimpleNamespace(memory_bytes=100, memory_limit_bytes=1000, pids=5, pids_limit=100, cpu_percent=50.0)
    assert not ws.check_resources(over, now=0.0, thresholds=ResourceThresholds(grace_seconds=10)).stop
    assert not ws.check_resources(over, now=9.0).stop
    assert not ws.check_resources(calm, now=9.5).stop  # dropped below: the clock restarts
    assert not ws.check_resources(over, now=10.0).stop
    with pytest.raises(ResourceLimitError, match="memory"):
        ws.check_resources(over, now=20.5)
    fork_bomb = SimpleNamespace(memory_bytes=1, memory_limit_bytes=None, pids=100, pids_limit=100, cpu_percent=0)
    monitor = ResourceMonitor(ResourceThresholds(grace_seconds=0))
    assert monitor.observe(fork_bomb, now=0).stop is False and monitor.observe(fork_bomb, now=0.1).stop


def test_load_hook_from_dotted_path_and_bad_targets():
    spec = load_hook("ultrawork.workspace.builtin_hooks:plan_updater", point="after_step")
    assert spec.name == "plan-updater" and spec.point is HookPoint.AFTER_STEP and not spec.safety
    for bad in ("os.system", "os:system; rm", "-x:y", ""):
        with pytest.raises(HookError):
            load_hook(bad, point="after_step")
    with pytest.raises(ValueError):
        load_hook("ultrawork.workspace.builtin_hooks:plan_updater", point="whenever")


def test_bad_hook_config_creates_no_run(ultrawork_home, target_repo):
    with pytest.raises(Exception):
        RunSuperproject.create("bad-hooks", target_repo, "task",
                               hooks=[{"target": "no_such_module_xyz:f", "point": "after_step"}])
    assert not (ultrawork_home / "runs" / "bad-hooks").exists()


def test_hooks_from_the_entry_point_group(ultrawork_home, target_repo, tmp_path, monkeypatch):
    (tmp_path / "uw_ep_hooks.py").write_text(textwrap.dedent("""
        from ultrawork.workspace import hook

        SEEN = []

        @hook("finalize", name="announce")
        def announce(ctx):
            SEEN.append(ctx.final.outcome)
    """))
    dist = tmp_path / "uw_ep_hooks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: uw-ep-hooks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ultrawork.hooks]\nannounce = uw_ep_hooks:announce\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = RunSuperproject.create("ep-run", target_repo, "task")
    assert [h.name for h in run.hooks.hooks_for("finalize")] == ["plan-finalizer", "announce"]
    ws = run.add_agent("oracle")
    assert ws.finalize("failed", errors=["no progress"]).ran == ["plan-finalizer", "announce"]
    assert sys.modules["uw_ep_hooks"].SEEN == ["failed"]
    assert ws.plan.summary().outcome == "failed"
