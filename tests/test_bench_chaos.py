"""bench/chaos.py with a small N: no container leaked, no commit lost, no duplicate pull request."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.prefect]


def test_chaos_runs_survive_their_faults(prefect_api, docker_client, capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "chaos.py"
    spec = importlib.util.spec_from_file_location("bench_chaos", path)
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    report = chaos.main(["--runs", "3", "--seed", "11"])
    with capsys.disabled():
        print(f"\nchaos: {report['runs_completed']}/{report['runs']} completed, "
              f"{report['faults_injected']} faults injected, {report['processes_killed_and_resumed']} kills resumed")
    assert report["faults_injected"] >= 3
    assert report["containers_leaked"] == 0
    assert report["commits_lost"] == 0
    assert report["duplicate_pull_requests"] == 0
    assert report["runs_completed"] == report["runs"], report["incomplete_runs"]
