"""A hostile agent's output and processes, and the "resource exceeded -> adjust limits" recovery.

Real engine, real git, the session's Prefect server: an output flood must not
stretch the step past its timeout, grow the orchestrator, or flood the run's
log; a detached process must not outlive its step; a step that hits its memory
limit is retried once with a raised limit, and only up to the ceiling.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from flowkit import make_target_repo, run_sisyphus

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

TIMEOUT = 20


@contextmanager
def sandbox_settings(**fields):
    """Save the sandbox settings runs load (``default``) for the duration; always delete them."""
    from ultrawork.blocks import SandboxSettings

    SandboxSettings(**fields).save("default", overwrite=True)
    try:
        yield
    finally:
        try:
            SandboxSettings.delete("default")
        except Exception:  # noqa: BLE001 - not saved
            pass


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class PeakRss(threading.Thread):
    """Samples this process's resident memory every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = rss_mb(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, rss_mb())


def step_task_runs(run_id: str, role: str):
    """The run-step task runs of one agent of a run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        flows = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{run_id}-{role}"])),
                                      limit=200)
        ids = {f.id for f in flows if (f.parameters or {}).get("run_id") == run_id}
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="run-step")),
                                      limit=200)
        return [t for t in tasks if t.flow_run_id in ids]


def log_messages(task_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])),
                                    limit=200, offset=len(messages))
            messages += [r.message for r in page]
            if len(page) < 200:
                return messages


def test_an_output_flood_ends_at_its_timeout_with_flat_memory_and_few_log_records(
        prefect_api, uw_home, tmp_path, docker_client):
    from conftest import flush_prefect_workers

    import ultrawork.flows.sisyphus  # noqa: F401 - imported before the memory baseline

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"flood-{uuid.uuid4().hex[:6]}"
    sampler = PeakRss()
    before = rss_mb()
    sampler.start()
    started = time.monotonic()
    with sandbox_settings(timeout=TIMEOUT):
        result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": ["frontend"], "run_id": run_id,
                               "agent_commands": {"frontend": ["sh", "-c", "yes"]}, "review_timeout": 2})
    wall = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    frontend = result.agents[0]
    [step] = step_task_runs(run_id, "frontend")
    step_wall = (step.end_time - step.start_time).total_seconds()
    flush_prefect_workers()
    deadline = time.monotonic() + 10
    while True:
        messages = log_messages(step.id)
        if any("[output truncated:" in m for m in messages) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    output = [m for m in messages if m.startswith("[frontend stdout]")]
    marker = [m for m in messages if "[output truncated:" in m]
    print(f"flood: step {step_wall:.1f}s, run {wall:.1f}s, RSS {before:.0f} -> peak {sampler.peak:.0f} MB, "
          f"{len(output)} output record(s), marker {marker[:1]!r}")

    assert frontend.status == "failed" and "timeout" in frontend.errors[-1], frontend.errors
    assert step.run_count == 1, "a timeout is not retried"
    assert step_wall <= TIMEOUT + 10, f"the {TIMEOUT}s step ran {step_wall:.0f}s (the whole run {wall:.0f}s)"
    assert sampler.peak - before <= 100, f"orchestrator grew {sampler.peak - before:.0f} MB ({before:.0f} -> {sampler.peak:.0f})"
    assert 1 <= len(output) <= 100, f"{len(output)} log records for one step's output"
    assert sum(m.count("\n") + 1 for m in output) <= 2000 + 1
    assert len(marker) == 1 and "more bytes not logged; the tail is in Plan.md" in marker[0], messages[-3:]
    plan = Path(frontend.plan_path).read_text()
    assert "Output (stdout, last" in plan and "y\ny\ny\n" in plan, "Plan.md keeps the output's tail"


def test_a_detached_process_does_not_outlive_its_step(engine, sandbox_root, run_id, docker_client):
    from ultrawork.sandbox import SandboxSpec

    ws = sandbox_root / "ws"
    ws.mkdir()
    os.chown(ws, 1000, 1000) if os.geteuid() == 0 else None
    sb = engine.create(SandboxSpec(role="frontend", run_id=run_id, workspace=ws, workspace_mode="rw"))
    try:
        loop = "while :; do date >> /workspace/marker; sleep 0.1; done"
        res = engine.execute(sb, ["sh", "-c", f"setsid sh -c '{loop}' & sleep 0.5; echo left it running"],
                             timeout=30)
        assert res.exit_code == 0 and "left it running" in res.stdout
        assert res.leftovers_killed >= 1, res
        marker = ws / "marker"
        first = marker.stat().st_size
        time.sleep(1.0)
        assert marker.stat().st_size == first, "the detached loop kept writing after its step ended"

        # a fork loop that left its session respawns while it is being killed
        res = engine.execute(sb, ["sh", "-c", "setsid sh -c 'while :; do sleep 30 & sleep 0.02; done' & sleep 0.5"],
                             timeout=30)
        assert res.leftovers_killed >= 2, res
        top = docker_client.api.top(sb.id, ps_args="-eo pid,ppid,args")
        commands = [row[-1] for row in top["Processes"]]
        assert sorted(commands) == sorted(["/sbin/docker-init -- sleep infinity", "sleep infinity"]), commands
        assert engine.execute(sb, ["echo", "still works"]).stdout == "still works\n"
    finally:
        engine.cleanup(sb)


ALLOCATE = "import sys; b = b'x' * (int(sys.argv[1]) * 2**20); print(len(b) >> 20, 'MiB held')"


def test_a_step_over_its_memory_limit_is_retried_once_with_a_raised_limit_up_to_the_ceiling(
        prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"oom-{uuid.uuid4().hex[:6]}"
    commands = {"explore": ["python3", "-c", ALLOCATE, "90"],     # over 64 MiB, under 128 MiB
                "oracle": ["python3", "-c", ALLOCATE, "200"]}     # over the 128 MiB ceiling too
    with sandbox_settings(memory_mb=64, limit_raise_factor=2.0, limit_raise_max_memory_mb=128):
        result = run_sisyphus({"task": "Map the code", "repo": str(repo), "agents": list(commands),
                               "run_id": run_id, "agent_commands": commands, "review_timeout": 2})
    by_role = {o.role: o for o in result.agents}

    explore = by_role["explore"]
    raised = "memory limit raised 64 MiB → 128 MiB after the step was OOM-killed"
    assert explore.status == "succeeded", explore.errors
    assert explore.sandboxes_created == 2 and explore.retries == 1
    assert raised in explore.recoveries, explore.recoveries
    plan = Path(explore.plan_path).read_text()
    assert raised in plan and "90 MiB held" in plan

    oracle = by_role["oracle"]
    assert oracle.status == "failed"
    assert oracle.sandboxes_created == 2 and oracle.retries == 1, "retried once, then no more"
    assert raised in oracle.recoveries
    assert "memory limit exceeded" in oracle.errors[-1] and "at its ceiling (128 MiB)" in oracle.errors[-1], \
        oracle.errors
    assert "at its ceiling (128 MiB)" in Path(oracle.plan_path).read_text()
    [step] = step_task_runs(run_id, "oracle")
    assert step.run_count == 2
