"""A cron deployment on the local server gets its runs from Prefect's scheduler service.

The nightly sweep (``prefect.yaml``) only ever runs if the server's scheduler turns its
cron into Scheduled flow runs. Creating a deployment schedules nothing by itself (the
server's ``create_deployment`` only deletes stale auto-scheduled runs); the scheduler
service does it in the background: within ~5 s for a deployment just created or
updated, otherwise every 60 s. When its insert fails (e.g. "Can't evaluate bulk DML
statement" with a SQLAlchemy Prefect does not work with), it logs the error in the
server log and no run is ever created.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import pytest
import yaml
from pg import SERVER_LOGS, postgres_database, prefect_pg_api, prefect_pg_server  # noqa: F401 (fixtures)

from ultrawork.sandbox.procs import own_processes, process_cmdline

pytestmark = pytest.mark.prefect

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
EVERY_TWO_MINUTES = "*/2 * * * *"
WAIT = 150.0                          # the scheduler's main loop runs every 60 s; its quick one every 5 s
SCHEDULER_ERROR = "Can't evaluate bulk DML statement"


def server_log(api_url: str) -> Path:
    """The log of the local server that answers on ``api_url`` (``--home`` on its command line)."""
    if api_url in SERVER_LOGS:
        return SERVER_LOGS[api_url]
    port = str(urlparse(api_url).port)
    for pid in own_processes():
        argv = process_cmdline(pid)
        if "ultrawork.local_server.process" in argv and argv[argv.index("--port") + 1] == port and "--home" in argv:
            return Path(argv[argv.index("--home") + 1]) / "server.log"
    raise AssertionError(f"no local Prefect server process listens on port {port}")


def nightly_schedule() -> dict:
    """The schedule prefect.yaml gives the nightly backlog sweep."""
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    sweep = next(d for d in project["deployments"] if d["name"] == "nightly-backlog-sweep")
    (schedule,) = sweep["schedules"]
    return schedule


def daily_times(cron: str, timezone: str, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next ``count`` times of a daily ``M H * * *`` cron in ``timezone``, in UTC."""
    match = re.fullmatch(r"(\d+) (\d+) \* \* \*", cron)
    assert match, f"the nightly schedule is expected to be a daily 'M H * * *' cron, not {cron!r}"
    minute, hour = int(match[1]), int(match[2])
    zone = ZoneInfo(timezone)
    day = after.astimezone(zone).date() - dt.timedelta(days=1)
    times: list[dt.datetime] = []
    while len(times) < count:
        at = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone).astimezone(UTC)
        if at >= after:
            times.append(at)
        day += dt.timedelta(days=1)
    return times


def scheduled_runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id={"any_": [deployment_id]}),
        flow_run_filter=FlowRunFilter(state={"type": {"any_": ["SCHEDULED"]}}),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)


def by_schedule(runs: list, schedule_id) -> list:
    return [r for r in runs if r.created_by and r.created_by.id == schedule_id]


@pytest.fixture(params=["sqlite", "postgresql"])
def scheduling_api(request):
    """The embedded server (SQLite) and a ``prefect server start`` on PostgreSQL."""
    return request.getfixturevalue("prefect_api" if request.param == "sqlite" else "prefect_pg_api")


def test_cron_deployment_gets_scheduled_runs_from_the_scheduler(scheduling_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    log = server_log(scheduling_api)
    nightly = nightly_schedule()
    assert nightly["timezone"] == "UTC" and nightly["active"] is True, nightly
    name = f"schedule-check-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(name)
        created_at = dt.datetime.now(UTC)
        deployment_id = client.create_deployment(flow_id=flow_id, name=name, tags=["schedule-check"], schedules=[
            DeploymentScheduleCreate(schedule=CronSchedule(cron=EVERY_TWO_MINUTES, timezone="UTC"), active=True),
            DeploymentScheduleCreate(schedule=CronSchedule(cron=nightly["cron"], timezone=nightly["timezone"]),
                                     active=True),
        ])
        try:
            schedules = {s.schedule.cron: s.id for s in client.read_deployment(deployment_id).schedules}
            frequent, daily = schedules[EVERY_TWO_MINUTES], schedules[nightly["cron"]]

            # The scheduler tops each schedule up to at least 3 future runs (and one hour ahead).
            deadline = time.monotonic() + WAIT
            while True:
                runs = scheduled_runs(client, deployment_id)
                seen_at = dt.datetime.now(UTC)
                if len(by_schedule(runs, frequent)) >= 30 and len(by_schedule(runs, daily)) >= 3:
                    break
                text = log.read_text(errors="replace")
                if SCHEDULER_ERROR in text:
                    at = text.index(SCHEDULER_ERROR)
                    pytest.fail(f"the scheduler fails ({log}):\n{text[max(0, at - 2500):at + 200]}")
                assert time.monotonic() < deadline, (
                    f"no scheduled runs within {WAIT:.0f}s: {len(runs)} runs; server log tail:\n{text[-3000:]}")
                time.sleep(1)

            # Made by the scheduler service, from these schedules (the API's creation never sets these).
            for run in runs:
                assert run.state.is_scheduled() and run.state_name == "Scheduled", run.state
                assert run.auto_scheduled is True and "auto-scheduled" in run.tags, (run.auto_scheduled, run.tags)
                assert run.created_by.type == "SCHEDULE" and run.created_by.id in (frequent, daily), run.created_by
                assert run.next_scheduled_start_time == run.expected_start_time

            # Every two minutes: even whole minutes, two minutes apart, from now to at least an hour ahead.
            times = [r.expected_start_time.astimezone(UTC) for r in by_schedule(runs, frequent)]
            assert all(t.minute % 2 == 0 and t.second == 0 and t.microsecond == 0 for t in times), times
            assert all(b - a == dt.timedelta(minutes=2) for a, b in zip(times, times[1:])), times
            assert created_at <= times[0] <= seen_at + dt.timedelta(minutes=2), (created_at, times[0], seen_at)
            assert times[-1] >= created_at + dt.timedelta(hours=1), times[-1]

            # The nightly cron of prefect.yaml: its next three nights, in its time zone.
            nights = [r.expected_start_time.astimezone(UTC) for r in by_schedule(runs, daily)][:3]
            expected = [daily_times(nightly["cron"], nightly["timezone"], at, 3) for at in (created_at, seen_at)]
            assert nights in expected, (nights, expected)
            assert SCHEDULER_ERROR not in log.read_text(errors="replace")
        finally:
            client.delete_deployment(deployment_id)        # the server deletes its scheduled runs with it
            for run in scheduled_runs(client, deployment_id):
                client.delete_flow_run(run.id)
            client.delete_flow(flow_id)
    with get_client(sync_client=True) as client:
        assert scheduled_runs(client, deployment_id) == [], "the deployment's runs were deleted"
