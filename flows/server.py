"""One local Prefect server that every ultrawork command shares.

A run paused for review in one process is resumed by ``ultrawork review`` in
another; both must talk to the same API. When ``PREFECT_API_URL`` is set it is
used as it is. Otherwise Prefect's server on SQLite under
``$ULTRAWORK_HOME/prefect`` (``flows.prefect_server``: ``prefect server start``
plus short retries on SQLite lock contention) is started on demand and reused
while it answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sandbox.spec import ultrawork_home

STATE_FILE = "server.json"
# Settings of the local server (the environment overrides them). Prefect's task-run
# recorder commits one SQLite transaction per task-run event by default; a run's
# parallel agents emit about a hundred in their first second, each queueing for
# SQLite's one write lock ahead of the API requests that start the agents.
# Batched, task runs reach the UI within a second.
SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _warm(url: str) -> None:
    """The server's first API request pays for its lazy start-up (~0.6 s); pay it here, not in a run."""
    try:
        urllib.request.urlopen(f"{url}/admin/version", timeout=30).close()
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_home() -> Path:
    home = ultrawork_home() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    return home


def ensure_server(start_timeout: float = 90.0, say=lambda msg: None) -> str:
    """The API URL of a live server, starting the local one if needed; exports it."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    home = server_home()
    state = home / STATE_FILE
    if state.exists():
        try:
            url = json.loads(state.read_text())["url"]
        except (ValueError, KeyError):
            url = None
        if url and _healthy(url):
            os.environ["PREFECT_API_URL"] = url
            return url
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = open(home / "server.log", "ab")
    env = {**SERVER_SETTINGS, **os.environ, "PREFECT_HOME": str(home),
           "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true")}
    env.pop("PREFECT_API_URL", None)
    say(f"starting the local Prefect server on 127.0.0.1:{port} (log: {home / 'server.log'})")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.prefect_server", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited ({proc.returncode}); see {home / 'server.log'}")
        if _healthy(url):
            _warm(url)
            state.write_text(json.dumps({"url": url, "pid": proc.pid}))
            os.environ["PREFECT_API_URL"] = url
            return url
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the Prefect server did not answer within {start_timeout:.0f}s; see {home / 'server.log'}")


def local_server() -> dict | None:
    """The shared local server this home started (``url``, ``pid``, ``healthy``), or None."""
    state = server_home() / STATE_FILE
    try:
        data = json.loads(state.read_text())
        url, pid = data["url"], int(data["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return {"url": url, "pid": pid, "healthy": _healthy(url)}


def stop_server() -> bool:
    """Stop the shared local server if this machine started one."""
    state = server_home() / STATE_FILE
    if not state.exists():
        return False
    try:
        pid = json.loads(state.read_text())["pid"]
        os.killpg(pid, 15)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.killpg(pid, 0)  # raises once the whole group is gone
            time.sleep(0.2)
        os.killpg(pid, 9)
    except (ValueError, KeyError, ProcessLookupError, PermissionError):
        pass
    state.unlink(missing_ok=True)
    return True
