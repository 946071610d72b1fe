"""bench/fanout.py ends on SIGTERM and on its overall timeout, leaving no sandbox, server or scratch folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
BENCH = Path(__file__).resolve().parents[1] / "bench" / "fanout.py"


def bench_containers(docker_client) -> list:
    return [c for c in docker_client.containers.list(all=True, filters={"label": "ultrawork.managed=true"},
                                                          ignore_removed=True)
            if c.labels.get("ultrawork.run", "").startswith("bench-")]


def start(extra: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.Popen([sys.executable, str(BENCH), "--workload", "60", *extra], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_sandbox(docker_client, proc, before: set, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not {c.id for c in bench_containers(docker_client)} - before:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no sandbox started"
        time.sleep(0.3)


@pytest.mark.parametrize("how", ["sigterm", "timeout"])
def test_the_benchmark_stops_and_cleans_up(how, prefect_api, docker_client, tmp_path):
    before = {c.id for c in bench_containers(docker_client)}      # e.g. another benchmark on this engine
    proc = start(["--timeout", "25"] if how == "timeout" else [], tmp_path)
    try:
        wait_for_sandbox(docker_client, proc, before)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:                    # a failed check leaves no benchmark running (nor blocked on its full pipes)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "BenchmarkStopped" in err and ("SIGTERM" in err if how == "sigterm" else "after 25 s" in err)
    assert {c.id for c in bench_containers(docker_client)} - before == set()
    assert not list(tmp_path.glob("ultrawork-bench-*"))          # the scratch folder is gone
