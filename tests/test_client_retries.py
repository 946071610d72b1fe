"""A 30-second database stall is waited out: with ultrawork's client retries a Prefect call made
while the flow-run table is locked on PostgreSQL succeeds once the lock goes; the workers' flow
runs get the same retries from prefect.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pg import PG_SOCKET, psql, postgres_database, prefect_pg_api, prefect_pg_server  # noqa: F401 (fixtures)

from ultrawork.local_server.manager import CLIENT_RETRY_SETTINGS

pytestmark = pytest.mark.prefect
ROOT = Path(__file__).resolve().parents[1]
STALL = 30

SET_STATE = """
import sys, uuid
from prefect.client.orchestration import get_client
from prefect.states import Running
with get_client(sync_client=True) as client:
    result = client.set_flow_run_state(uuid.UUID(sys.argv[1]), Running(), force=True)
    print(result.status)
"""


@pytest.mark.parametrize("project_file", ["prefect.yaml", "prefect.git.yaml"])
def test_workers_flow_runs_get_the_client_retries(project_file):
    project = yaml.safe_load((ROOT / project_file).read_text())
    (pool,) = project["definitions"]["work_pools"].values()
    env = pool["job_variables"]["env"]
    assert {k: env[k] for k in CLIENT_RETRY_SETTINGS} == CLIENT_RETRY_SETTINGS


def test_configure_client_applies_to_a_process_that_already_imported_prefect():
    code = ("import prefect; from prefect.settings import get_current_settings as s; "
            "from ultrawork.local_server.manager import configure_client; configure_client(); "
            "print(s().client.max_retries, sorted(s().client.retry_extra_codes))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_CLIENT_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split("\n")[-2]
    assert out == "8 [500, 504]", out


def stalled_call(database: str, flow_run_id: str, settings: dict) -> tuple[subprocess.CompletedProcess, float]:
    """Set the run's state from a new process while ``flow_run`` is locked for ``STALL`` seconds."""
    lock = subprocess.Popen(["psql", "-h", PG_SOCKET, "-d", database, "-v", "ON_ERROR_STOP=1", "-c",
                             f"BEGIN; LOCK TABLE flow_run IN ACCESS EXCLUSIVE MODE; SELECT 'locked'; "
                             f"SELECT pg_sleep({STALL}); COMMIT;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE "
                   "c.relname = 'flow_run' AND l.mode = 'AccessExclusiveLock' AND l.granted", database) != "1":
            assert time.monotonic() < deadline, "the lock on flow_run was never taken"
            time.sleep(0.1)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_CLIENT_")}, **settings}
        started = time.monotonic()
        call = subprocess.run([sys.executable, "-c", SET_STATE, flow_run_id], env=env, capture_output=True,
                              text=True, timeout=600)
        return call, time.monotonic() - started
    finally:
        lock.wait(STALL + 30)


def test_a_thirty_second_lock_on_the_flow_run_table_is_waited_out(prefect_pg_api, postgres_database):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("stall-check")
        flow_run = client.create_flow_run(flow=_named_flow("stall-check"))
    database = postgres_database[0]

    call, took = stalled_call(database, str(flow_run.id), CLIENT_RETRY_SETTINGS)
    assert call.returncode == 0, call.stderr[-3000:]
    assert "ACCEPT" in call.stdout, call.stdout
    assert took >= STALL - 5, f"answered in {took:.0f}s, before the lock went: the stall was not reproduced"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).state.is_running()
        client.delete_flow(flow_id)


def _named_flow(name: str):
    from prefect import flow

    @flow(name=name)
    def stall_check() -> None:
        pass
    return stall_check


def locked_flow_run_table(database: str, seconds: int) -> subprocess.Popen:
    """A psql session holding ``LOCK TABLE flow_run IN ACCESS EXCLUSIVE MODE`` for ``seconds``, once held."""
    lock = subprocess.Popen(["psql", "-h", PG_SOCKET, "-d", database, "-v", "ON_ERROR_STOP=1", "-c",
                             f"BEGIN; LOCK TABLE flow_run IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); "
                             "COMMIT;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE "
               "c.relname = 'flow_run' AND l.mode = 'AccessExclusiveLock' AND l.granted", database) != "1":
        assert time.monotonic() < deadline, "the lock on flow_run was never taken"
        time.sleep(0.1)
    return lock


@pytest.mark.docker
def test_a_run_paused_for_review_completes_after_a_thirty_second_stall(prefect_pg_api, postgres_database,
                                                                      docker_client, uw_home, tmp_path):
    from flowkit import FlowThread, make_target_repo
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, PREFECT_CLIENT_RETRY_EXTRA_CODES, temporary_settings

    from ultrawork.cli.runs import submit_review

    roles = ["explore", "frontend"]
    repo = make_target_repo(tmp_path / "repo")
    with temporary_settings(updates={
            PREFECT_CLIENT_MAX_RETRIES: int(CLIENT_RETRY_SETTINGS["PREFECT_CLIENT_MAX_RETRIES"]),
            PREFECT_CLIENT_RETRY_EXTRA_CODES: CLIENT_RETRY_SETTINGS["PREFECT_CLIENT_RETRY_EXTRA_CODES"]}):
        run = FlowThread({"task": "look around", "repo": str(repo), "agents": roles, "run_id": "stall-review",
                          "agent_commands": {r: ["sh", "-c", "true"] for r in roles}})
        run.start()
        run.wait_for_review(timeout=240)
        lock = locked_flow_run_table(postgres_database[0], STALL)
        try:
            started = time.monotonic()
            submit_review("stall-review", approve=[], reject=roles, wait=120)   # made while the table is locked
            reviewed_after = time.monotonic() - started
        finally:
            lock.wait(STALL + 30)
        result = run.wait(timeout=240)
    assert reviewed_after >= STALL - 5, f"the review went through in {reviewed_after:.0f}s: no stall reproduced"
    assert str(result.outcome) in ("nothing-approved", "RunOutcome.NOTHING_APPROVED"), result.outcome
    assert docker_client.containers.list(all=True, filters={"label": "ultrawork.run=stall-review"}) == []
