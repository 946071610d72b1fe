"""The global sandbox cap: however many runs share a Prefect server, at most ``max_sandboxes``
sandboxes live at once; the other agents wait for a slot and every run still finishes."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid

import pytest
from flowkit import FlowThread, make_target_repo, review_state
from pg import postgres_database, prefect_pg_api, prefect_pg_server  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

ROLES = ["explore", "librarian", "oracle", "frontend"]
CAP = 3


class Sampler(threading.Thread):
    """Counts the runs' live sandboxes (by their run label) every 0.2 s."""

    def __init__(self, client, run_ids: list[str]):
        super().__init__(daemon=True)
        self.client, self.run_ids = client, run_ids
        self.stop = threading.Event()
        self.peak, self.samples = 0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            live = sum(len(self.client.containers.list(filters={"label": f"ultrawork.run={rid}"}))
                       for rid in self.run_ids)
            self.peak, self.samples = max(self.peak, live), self.samples + 1
            time.sleep(0.2)


def reject_all_when_asked(run_id: str) -> threading.Thread:
    from ultrawork.cli.runs import submit_review

    def act() -> None:
        deadline = time.monotonic() + 300
        while review_state(run_id) != "requested" and time.monotonic() < deadline:
            time.sleep(0.3)
        submit_review(run_id, approve=[], reject=ROLES)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(act,), daemon=True)   # this API
    thread.start()
    return thread


def test_two_runs_of_four_agents_never_exceed_the_sandbox_cap(prefect_pg_api, docker_client, uw_home, tmp_path):
    from prefect.client.orchestration import get_client

    from ultrawork.blocks import SandboxSettings
    from ultrawork.runtime import caps
    from ultrawork.runtime.caps import LIMIT_NAME

    SandboxSettings(max_sandboxes=CAP).save("default", overwrite=True)
    caps._SYNCED.clear()     # this process may have matched the limit to the old block less than a minute ago
    # Prefect keeps one slot-acquiring service per limit name and process, bound to the server of its first
    # use: this session's earlier runs used another server (one process talks to one server in real use)
    from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService
    ConcurrencySlotAcquisitionWithLeaseService._instances.clear()
    repo = make_target_repo(tmp_path / "repo")
    run_ids = [f"cap-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    flows = [FlowThread({"task": "wait a little", "repo": str(repo), "agents": ROLES, "run_id": rid,
                         "agent_commands": {r: ["sh", "-c", "sleep 4"] for r in ROLES}}) for rid in run_ids]
    sampler = Sampler(docker_client, run_ids)
    sampler.start()
    reviewers = [reject_all_when_asked(rid) for rid in run_ids]
    started = time.monotonic()
    for flow in flows:
        flow.start()
    try:
        results = [flow.wait(timeout=240) for flow in flows]
    finally:
        sampler.stop.set()
        sampler.join(5)
        ConcurrencySlotAcquisitionWithLeaseService._instances.clear()   # the next run binds to its own server
        SandboxSettings(max_sandboxes=SandboxSettings.model_fields["max_sandboxes"].default).save(
            "default", overwrite=True)
        caps._SYNCED.clear()
    for reviewer in reviewers:
        reviewer.join(30)

    assert [r.outcome.value if hasattr(r.outcome, "value") else r.outcome for r in results] == \
        ["nothing-approved"] * 2, results
    assert all(len(r.agents) == 4 for r in results)
    assert sampler.samples > 20, sampler.samples
    assert 0 < sampler.peak <= CAP, f"{sampler.peak} sandboxes at once, cap {CAP}"
    # 8 agents of 4 s each through 3 slots take at least three rounds
    assert time.monotonic() - started > 3 * 4
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
    assert limit.limit == CAP and limit.active_slots == 0, limit
    assert not docker_client.containers.list(all=True, filters={"label": f"ultrawork.run={run_ids[0]}"})
    assert not docker_client.containers.list(all=True, filters={"label": f"ultrawork.run={run_ids[1]}"})


def test_the_integration_check_waits_for_a_slot_of_the_cap(prefect_pg_api, docker_client, uw_home, tmp_path):
    """The repository's checks run in a sandbox too: with every slot taken, the check waits, then runs."""
    import asyncio

    from ultrawork.blocks import SandboxSettings
    from ultrawork.runtime import caps
    from ultrawork.runtime.caps import SandboxSlot
    from ultrawork.tasks.checks import run_checks
    from ultrawork.workspace.superproject import RunSuperproject

    SandboxSettings(max_sandboxes=1).save("default", overwrite=True)
    caps._SYNCED.clear()
    from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService
    ConcurrencySlotAcquisitionWithLeaseService._instances.clear()
    run_id = f"capcheck-{uuid.uuid4().hex[:8]}"
    run = RunSuperproject.create(run_id, make_target_repo(tmp_path / "repo"), "check it")
    holder = SandboxSlot.take("test/the-only-slot")
    done: dict = {}
    check = threading.Thread(target=contextvars.copy_context().run, daemon=True, args=(
        lambda: done.update(result=asyncio.run(run_checks.fn(run_id, run.base_sha, ["true"]))),))
    try:
        check.start()
        time.sleep(6)
        assert check.is_alive(), f"the check ran while the cap's only slot was held: {done}"
        assert not docker_client.containers.list(all=True, filters={"label": f"ultrawork.run={run_id}"})
        holder.release()
        check.join(120)
        assert not check.is_alive() and done["result"].passed, done
    finally:
        holder.release()
        ConcurrencySlotAcquisitionWithLeaseService._instances.clear()
        SandboxSettings(max_sandboxes=SandboxSettings.model_fields["max_sandboxes"].default).save(
            "default", overwrite=True)
        caps._SYNCED.clear()
    assert not docker_client.containers.list(all=True, filters={"label": f"ultrawork.run={run_id}"})


def test_writers_set_up_during_the_research_never_hold_the_slot_the_research_needs(
        prefect_pg_api, docker_client, uw_home, tmp_path, monkeypatch):
    """With one slot, a writer prepared during the research must not take it before the research
    does: the research would wait for it, and the writer for the research. The writer starts its
    sandbox ahead only once the research holds its own, and only if a slot is free then."""
    from ultrawork.blocks import SandboxSettings
    from ultrawork.runtime import caps

    import json

    SandboxSettings(max_sandboxes=1).save("default", overwrite=True)
    caps._SYNCED.clear()
    # the research's setup is retried once (a git error): the writer's clone is ready first
    monkeypatch.setenv("ULTRAWORK_FAULTS", json.dumps([{"at": "git:create-workspace", "role": "explore", "times": 1,
                                                        "action": "git_error"}]))
    monkeypatch.setenv("ULTRAWORK_FAULTS_STATE", str(tmp_path / "faults.json"))
    repo = make_target_repo(tmp_path / "repo")
    run_id = f"cap1-{uuid.uuid4().hex[:8]}"
    roles = ["explore", "frontend"]
    flow = FlowThread({"task": "wait a little", "repo": str(repo), "agents": roles, "run_id": run_id,
                       "review_timeout": 1, "agent_commands": {r: ["sh", "-c", "sleep 2"] for r in roles}})
    sampler = Sampler(docker_client, [run_id])
    sampler.start()
    flow.start()
    try:
        result = flow.wait(timeout=120)
    finally:
        if flow.is_alive():                  # stuck on the cap: its sandboxes go, so the flow ends
            from ultrawork.tasks.sandboxes import engine
            engine().remove_run(run_id)
        sampler.stop.set()
        sampler.join(5)
        SandboxSettings(max_sandboxes=SandboxSettings.model_fields["max_sandboxes"].default).save(
            "default", overwrite=True)
        caps._SYNCED.clear()
    assert [a.status for a in result.agents] == ["succeeded", "succeeded"], result.message
    assert 0 < sampler.peak <= 1, f"{sampler.peak} sandboxes at once, cap 1"
