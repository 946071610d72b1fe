"""A 30-second database stall in the middle of a nightly sweep: both of its runs are suspended for
review on a worker when PostgreSQL's flow-run table is locked; the reviews are given during the
lock from another home; afterwards both runs finish and each issue ends where its review sent it."""

from __future__ import annotations

import threading
import time

import pytest
from pg import postgres_database, prefect_pg_api, prefect_pg_server  # noqa: F401 (fixtures)
from test_client_retries import STALL, locked_flow_run_table
from test_many_workers import bare_remote, remote_file, sandboxes_of, small_sandboxes  # noqa: F401 (fixture)

from workers import (cli_review, create_pool, deploy, edit_task, flow_run_state, remove_deployments,
                     remove_sandboxes, run_sweep, start_workers, stop_workers, worker_env)

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

DECISIONS = {"keep": ("--approve-all", "accepted", "integrated"), "drop": ("--reject-all", "define", "rejected")}


def test_a_sweep_whose_runs_wait_for_review_survives_a_thirty_second_lock(prefect_pg_api, postgres_database,
                                                                           small_sandboxes, tmp_path,
                                                                           docker_client):
    from ultrawork.backlog import FileBacklog

    remote = bare_remote(tmp_path)
    (tmp_path / "backlog").mkdir()
    backlog = FileBacklog(tmp_path / "backlog")
    for name in DECISIONS:
        backlog.create(name, title=f"Add {name}.txt", repo=remote.as_uri(), task=edit_task(f"{name}.txt", f"{name}\n"),
                       agents=["frontend"])
    reviewer_home = tmp_path / "reviewer-home"
    reviewer_home.mkdir()
    reviewer_env = worker_env(prefect_pg_api, reviewer_home)
    create_pool(prefect_pg_api)
    workers = start_workers(prefect_pg_api, tmp_path / "workers", 1, limit=4)
    try:
        deploy(reviewer_env)
        sweep_id = run_sweep(reviewer_env, backlog.root, concurrency=2, poll_seconds=1, review_timeout=900)
        deadline = time.monotonic() + 300
        while {i.id: i.state for i in backlog.scan()[0]} != {n: "review" for n in DECISIONS}:
            assert time.monotonic() < deadline, ({i.id: i.state for i in backlog.scan()[0]}, workers[0].text()[-3000:])
            time.sleep(0.5)
        run_ids = {i.id: i.history[-1].data["run_id"] for i in backlog.scan()[0]}

        # The reviews are given while the flow-run table is locked: each waits the stall out, then goes through.
        lock = locked_flow_run_table(postgres_database[0], STALL)
        reviews: dict[str, tuple] = {}

        def review(name: str) -> None:
            started = time.monotonic()
            done = cli_review(run_ids[name], reviewer_env, DECISIONS[name][0], "--comment", "during a stall",
                              timeout=600)
            reviews[name] = (done.returncode, done.stdout + done.stderr, time.monotonic() - started)

        threads = [threading.Thread(target=review, args=(name,)) for name in DECISIONS]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join(600)
        finally:
            lock.wait(STALL + 30)
        for name, (code, output, took) in reviews.items():
            assert code == 0, f"{name}: {output}"
        assert max(took for _, _, took in reviews.values()) >= STALL - 10, f"no stall reproduced: {reviews}"

        deadline = time.monotonic() + 300
        while not flow_run_state(sweep_id, prefect_pg_api).is_final():
            assert time.monotonic() < deadline, ({i.id: i.state for i in backlog.scan()[0]}, workers[0].text()[-3000:])
            time.sleep(1)
        assert flow_run_state(sweep_id, prefect_pg_api).is_completed(), flow_run_state(sweep_id, prefect_pg_api)
        issues = {i.id: i for i in backlog.scan()[0]}
        for name, (_, state, outcome) in DECISIONS.items():
            assert issues[name].state == state, (name, [(e.trigger, e.data) for e in issues[name].history])
            assert [e.trigger for e in issues[name].history] == ["claim", "run_started", "review_requested", outcome]
        assert remote_file(remote, f"ultrawork/{run_ids['keep']}/integration", "keep.txt") == "keep\n"
        assert remote_file(remote, f"ultrawork/{run_ids['drop']}/integration", "drop.txt") is None
        assert sandboxes_of(docker_client, run_ids.values()) == []
    finally:
        stop_workers(workers)
        remove_deployments(prefect_pg_api)
        remove_sandboxes(docker_client, [w.home for w in workers])
