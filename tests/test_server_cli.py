"""`ultrawork server status|stop`: the shared local Prefect server can be seen and stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.prefect]
EXE = str(Path(sys.executable).with_name("ultrawork"))


def ultrawork(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ULTRAWORK_HOME": str(home), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)       # the command's own shared server, not the suite's
    return subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=120)


def test_server_status_and_stop_refuse_while_a_run_uses_it(tmp_path):
    home = tmp_path / "home"
    assert ultrawork(home, "server", "status").returncode == 1          # none yet
    started = subprocess.run(
        [sys.executable, "-c", "from ultrawork.local_server.manager import ensure_server; print(ensure_server(start_timeout=120))"],
        env={**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "ULTRAWORK_HOME": str(home)},
        capture_output=True, text=True, timeout=180, check=True)
    url = started.stdout.strip().splitlines()[-1]
    pid = json.loads((home / "prefect" / "server.json").read_text())["pid"]
    try:
        status = ultrawork(home, "server", "status")
        assert status.returncode == 0 and url in status.stdout and "answering" in status.stdout

        # a run whose process lives (this test) holds the server
        run = home / "runs" / "busy-run"
        run.mkdir(parents=True)
        (run / "run.json").write_text("{}")
        from ultrawork.sandbox.procs import owner_token
        (run / "orchestration.json").write_text(json.dumps({"owner": owner_token()}))
        refused = ultrawork(home, "server", "stop")
        assert refused.returncode == 1 and "busy-run" in refused.stderr
        assert ultrawork(home, "server", "status").returncode == 0, "a refused stop leaves it running"

        stopped = ultrawork(home, "server", "stop", "--force")
        assert stopped.returncode == 0, stopped.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        assert not _alive(pid), "the server process is gone"
        assert ultrawork(home, "server", "status").returncode == 1
    finally:
        if _alive(pid):
            os.killpg(pid, 9)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (exited, not yet reaped by its parent) is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_server_status_names_the_server_prefect_api_url_points_at(prefect_api, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "ULTRAWORK_HOME": str(home), "PREFECT_API_URL": prefect_api, "COLUMNS": "200"}
    status = subprocess.run([EXE, "server", "status"], env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"PREFECT_API_URL is set: ultrawork commands use {prefect_api} (answering), not the local server" \
        in status.stdout
    assert "no local Prefect server is running" in status.stdout

    gone = subprocess.run([EXE, "server", "status"], env={**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 1 and "http://127.0.0.1:9/api (not answering)" in gone.stdout


def test_a_server_started_in_the_background_is_the_one_the_next_command_uses(tmp_path):
    """`python -m ultrawork.local_server.manager --start` (scripts/demo.sh) returns before the server
    answers; the next command waits for that server (no second one) and finds it warmed up."""
    home = tmp_path / "home"
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "ULTRAWORK_HOME": str(home)}
    from ultrawork.local_server.template import build

    build()                                     # what provisioning made: without it nothing starts early
    subprocess.run([sys.executable, "-m", "ultrawork.local_server.manager", "--start"], env=env, timeout=120,
                   check=True, capture_output=True)
    record = json.loads((home / "prefect" / "server.json").read_text())
    try:
        from ultrawork.local_server.manager import healthy

        assert not healthy(record["url"]), "it returned before the server answers (importing Prefect takes seconds)"
        assert _alive(record["pid"])
        ensured = subprocess.run(
            [sys.executable, "-c", "import time; from ultrawork.local_server.manager import ensure_server, _warm;"
             " import os; print(ensure_server(start_timeout=120));"
             " t = time.monotonic(); _warm(os.environ['PREFECT_API_URL'], os.environ['PREFECT_API_AUTH_STRING']);"
             " print(time.monotonic() - t)"],
            env=env, capture_output=True, text=True, timeout=180, check=True)
        url, warm_seconds = ensured.stdout.split()[-2:]
        assert url == record["url"]
        assert json.loads((home / "prefect" / "server.json").read_text())["pid"] == record["pid"]
        status = ultrawork(home, "server", "status")
        assert status.stdout.count("local server http") == 1 and f"pid {record['pid']}," in status.stdout, \
            status.stdout
        assert float(warm_seconds) < 0.5, "the server made its first API request itself"
        again = subprocess.run([sys.executable, "-m", "ultrawork.local_server.manager", "--start"], env=env,
                               timeout=120, check=True, capture_output=True, text=True)
        assert "starting" not in again.stderr     # a live server: nothing started
    finally:
        ultrawork(home, "server", "stop", "--force")
        if _alive(record["pid"]):
            os.killpg(record["pid"], 9)
