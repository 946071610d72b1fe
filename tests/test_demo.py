"""The main job, `ultrawork demo`, without a terminal: it approves on its own and always ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))


def demo(env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING", **(env_extra or {})}
    return subprocess.run([ULTRAWORK, "demo"], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def assert_demo_integrated(done: subprocess.CompletedProcess, home: Path) -> None:
    """Every agent succeeded and the greeting change is on the run's integration branch."""
    assert done.returncode == 0, done.stdout + done.stderr
    assert "integrated" in done.stdout
    agents = [line.split() for line in done.stdout.splitlines()
              if line.strip().split(" ")[0] in ("explore", "librarian", "oracle", "frontend") and "ultrawork/" in line]
    assert len(agents) == 4 and all(a[1] == "succeeded" for a in agents), done.stdout
    run_id = agents[0][2].split("/")[1]
    repo = max((home / "demo").iterdir(), key=lambda p: p.stat().st_mtime)
    core = subprocess.run(["git", "-C", str(repo), "show", f"ultrawork/{run_id}/integration:greetings/core.py"],
                          capture_output=True, text=True, check=True).stdout
    assert 'f"Hello, {name}!"' in core


def leftover_containers(docker_client, home: Path) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"ultrawork.home={home}"})


def test_the_demo_without_a_terminal_ends_integrated_every_time(prefect_api, uw_home, docker_client):
    for attempt in range(3):
        done = demo()
        assert_demo_integrated(done, uw_home)
        assert "review sent: approved" in done.stdout
    assert leftover_containers(docker_client, uw_home) == []


def test_a_review_that_fails_to_send_is_shown_and_retried(prefect_api, uw_home, tmp_path, docker_client):
    faults = json.dumps([{"at": "review:send", "action": "sandbox_error", "times": 2}])
    done = demo({"ULTRAWORK_FAULTS": faults, "ULTRAWORK_FAULTS_STATE": str(tmp_path / "faults.json")})
    assert_demo_integrated(done, uw_home)
    assert done.stdout.count("the review could not be sent") == 2


def test_a_review_that_can_never_be_sent_ends_the_command_with_the_reason(prefect_api, uw_home, tmp_path,
                                                                          docker_client):
    faults = json.dumps([{"at": "review:send", "action": "sandbox_error", "times": 99}])
    started = time.monotonic()
    done = demo({"ULTRAWORK_FAULTS": faults, "ULTRAWORK_FAULTS_STATE": str(tmp_path / "faults.json")})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the review was not sent" in done.stderr and "ultrawork resume" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert time.monotonic() - started < 240          # not the hour the run would wait for a review
    assert leftover_containers(docker_client, uw_home) == []
