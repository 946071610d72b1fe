"""bench/sweep.py runs in the suite with a tiny backlog on one worker; its figures are reported, and checked
only for what must hold whatever the machine: every issue integrated, the run on the one worker, times and
the sandbox peak within what the run allows, nothing left behind."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
BENCH = Path(__file__).resolve().parents[1] / "bench" / "sweep.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_sweep", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_sweep_benchmark_runs_and_reports(docker_client, capsys):
    from pg import require_postgres

    require_postgres()                 # the benchmark's own fresh database and server (SQLite otherwise)
    bench = load_bench()
    report = bench.main(["--issues", "2", "--workers", "1", "--timeout", "400", "--json"])
    out = capsys.readouterr().out
    with capsys.disabled():
        one = report["configurations"]["1"]
        print(f"\nsweep bench: 2 issues on 1 worker: {one['wall_seconds']:.1f} s, peak {one['peak_sandboxes']}")

    assert bench.json.loads(out) == report, "--json prints the report"
    assert report["issues"] == 2 and report["workers"] == [1] and report["backend"] == "postgresql"
    run = report["configurations"]["1"]["runs"][0]
    assert run["integrated"] == 2 and run["sweep_state"] == "Completed"
    assert run["runs_per_worker"] == {"worker-1": 2}
    # one agent per run, at most two runs at once (the worker's three slots, one holding the sweep)
    assert 1 <= run["peak_sandboxes"] <= 2 and run["sandbox_samples"] > 0
    assert 0 < run["wall_seconds"] <= run["from_request_seconds"] < 400
    assert run["left_sandboxes_removed"] == []
    assert run["machine_cpu_seconds"] > 0 and 0 < run["machine_busy"] <= 1.05
    assert len(run["run_ids"]) == 2
    left = [c.name for rid in run["run_ids"]
            for c in docker_client.containers.list(all=True, filters={"label": [f"ultrawork.run={rid}"]})]
    assert left == [], "no sandbox of the benchmark's runs is left"


def test_sweep_benchmark_refuses_bad_options_before_starting(capsys):
    bench = load_bench()
    for argv in (["--workers", "one"], ["--workers", "0"], ["--issues", "0"], ["--worker-limit", "1"]):
        with pytest.raises(SystemExit) as stopped:
            bench.main(argv)
        assert stopped.value.code == 2, argv
    assert "--workers 'one' must be comma-separated numbers" in capsys.readouterr().err


def processes_under(folder: Path) -> list[str]:
    """Live processes whose environment names ``folder`` (the benchmark's workers, flow runs and server)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if str(folder).encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            continue
    return found


@pytest.mark.parametrize("how", ["sigterm", "timeout"])
def test_the_sweep_benchmark_stops_and_removes_what_it_started(how, docker_client, tmp_path):
    from pg import require_postgres

    require_postgres()
    # SIGTERM once a run is doing agent work; the overall timeout while runs still work (30 issues,
    # two at a time on the one worker, take minutes)
    argv = [sys.executable, str(BENCH), "--issues", "30", "--workers", "1"]
    proc = subprocess.Popen([*argv, "--timeout", "100" if how == "timeout" else "600"],
                            env={**os.environ, "TMPDIR": str(tmp_path)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while how == "sigterm" and not sandboxes_under(docker_client, tmp_path):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no sandbox started"
            time.sleep(0.3)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "BenchmarkStopped" in err and ("SIGTERM" in err if how == "sigterm" else "after 100 s" in err), err[-3000:]
    assert processes_under(tmp_path) == [], "no worker, flow run or server of the benchmark is left"
    assert sandboxes_under(docker_client, tmp_path) == []
    assert not list(tmp_path.glob("ultrawork-bench-*")), "the scratch folder is gone"


def sandboxes_under(docker_client, folder: Path) -> list[str]:
    """The sandboxes of runs whose home is inside ``folder`` (their workspace is mounted from there)."""
    found = docker_client.containers.list(all=True, filters={"label": ["ultrawork.managed=true"]}, ignore_removed=True)
    return [c.name for c in found
            if any(str(m.get("Source", "")).startswith(str(folder)) for m in c.attrs.get("Mounts", []))]
