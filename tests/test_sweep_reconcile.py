"""Each sweep pass settles what earlier sweeps left in flight: a sweep that crashed (or lost its
database for longer than its retries) leaves issues in ``implement``/``review`` whose runs went on;
the next pass moves every one of them by what its run became, so nothing stays stuck in review."""

from __future__ import annotations

import asyncio

import pytest
from pg import postgres_database, prefect_pg_api, prefect_pg_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.prefect
SPEC = {"title": "t", "repo": "/srv/widgets", "task": "fix the TODO"}


def test_a_sweep_pass_settles_issues_whose_sweep_went_away(prefect_pg_api, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Crashed, Paused, Running

    from ultrawork.backlog import FileBacklog
    from ultrawork.flows.sweep import reconcile

    @flow(name="reconcile-check")
    def stand_in() -> None:
        pass

    runs = {   # issue -> (what its run became, whether the lost sweep had recorded the review)
        "integrated-in-review": (Completed(message="integrated: ultrawork/x/integration"), True),
        "crashed-in-implement": (Crashed(message="worker died"), False),
        "crashed-in-review": (Crashed(message="worker died"), True),
        "paused-in-implement": (Paused(reschedule=False, timeout_seconds=3600), False),
        "rejected-never-reviewed": (Completed(message="nothing-approved: every agent rejected"), False),
        "still-running": (Running(), False),
    }
    (tmp_path / "backlog").mkdir()
    backlog = FileBacklog(tmp_path / "backlog")
    with get_client(sync_client=True) as client:
        for name, (state, reviewed) in runs.items():
            issue = backlog.apply(backlog.create(name, **SPEC), "claim", actor="lost sweep")
            flow_run = client.create_flow_run(flow=stand_in, name=f"issue-{name}")
            client.set_flow_run_state(flow_run.id, Running(), force=True)
            issue = backlog.apply(issue, "run_started", actor="lost sweep", run_id=f"run-{name}",
                                  flow_run_id=str(flow_run.id))
            if reviewed:
                issue = backlog.apply(issue, "review_requested", actor="lost sweep", run_id=f"run-{name}")
            client.set_flow_run_state(flow_run.id, state, force=True)
        backlog.create("untouched", **SPEC)

    rows = asyncio.run(reconcile(backlog, "sweep pass"))

    states = {name: backlog.get(name).state for name in [*runs, "untouched"]}
    assert states == {
        "integrated-in-review": "accepted",
        "crashed-in-implement": "backlog",       # requeued: the next pass runs it again
        "crashed-in-review": "backlog",
        "paused-in-implement": "review",         # waiting for its reviewer, as it should be
        "rejected-never-reviewed": "define",
        "still-running": "implement",            # left to the sweep that follows it
        "untouched": "backlog",
    }, states
    assert {r.issue for r in rows} == set(runs) - {"still-running"}
    assert all(r.note == "reconciled" for r in rows), [r.note for r in rows]
    last = backlog.get("crashed-in-review").history[-1]
    assert last.trigger == "release" and "worker died" in last.data["reason"], last

    # a second pass finds nothing left to settle but the review and the running run, and changes nothing
    versions = {name: backlog.get(name).version for name in runs}
    assert [r.issue for r in asyncio.run(reconcile(backlog, "sweep pass"))] == []
    assert {name: backlog.get(name).version for name in runs} == versions
