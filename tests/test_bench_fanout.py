"""bench/fanout.py runs in the suite with a short workload; its ratio is reported, not asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.prefect]


def test_fanout_benchmark_runs_and_reports(prefect_api, docker_client, monkeypatch, capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "fanout.py"
    spec = importlib.util.spec_from_file_location("bench_fanout", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("ULTRAWORK_HOME", "/nonexistent")  # restored after; the bench uses its own
    report = bench.main(["--workload", "1", "--agents", "4"])
    with capsys.disabled():
        print(f"\nfanout: ultrawork {report['ultrawork']['wall_seconds']:.2f}s, "
              f"baseline {report['baseline']['wall_seconds']:.2f}s, ratio {report['ratio']}")
    assert report["ultrawork"]["outcome"] == "nothing-approved"
    assert report["baseline"]["wall_seconds"] >= 1.0
    assert report["ultrawork"]["wall_seconds"] >= 1.0
    assert set(report["ultrawork"]["agent_durations"]) == {"explore", "librarian", "oracle", "frontend"}
    # each agent's setup, from its start (the writer's: its prompt) to its first command: a second or so here
    setups = report["ultrawork"]["setup_seconds"]
    assert set(setups) == {"explore", "librarian", "oracle", "frontend"} and all(0 < v < 30 for v in setups.values())
    assert report["setup_seconds"]["agents"] == 4
    assert min(setups.values()) <= report["setup_seconds"]["p50"] <= report["setup_seconds"]["p90"] == max(setups.values())
    # the memory of each run (peaks reset before it) and of the whole benchmark
    memory = report["memory"]
    assert len(memory["per_run_peak_total_mb"]) == 1 and memory["target_mb"] == 400
    assert 0 < memory["per_run"][0]["orchestrator"]["peak_mb"] <= memory["orchestrator"]["peak_mb"]
