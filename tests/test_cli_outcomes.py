"""The command line tells how a run ended by its exit code, so scripts can act on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowkit import make_target_repo

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))


def test_a_run_nobody_reviews_exits_6_and_integrating_it_is_refused(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    run = subprocess.run([ULTRAWORK, "run", "--repo", str(repo), "--task", "Map the code", "--agents", "explore",
                          "--review-timeout", "2"], capture_output=True, text=True, env=env, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 6, run.stdout + run.stderr
    assert "review-timed-out" in run.stdout
    run_id = next(p.name for p in (uw_home / "runs").iterdir())
    again = subprocess.run([ULTRAWORK, "integrate", run_id], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 1 and "has no decided review to integrate" in again.stderr, again.stderr
