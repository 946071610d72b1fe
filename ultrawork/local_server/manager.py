"""One local Prefect server that every ultrawork command shares.

A run paused for review in one process is resumed by ``ultrawork review`` in
another; both must talk to the same API. When ``PREFECT_API_URL`` is set it is
used as it is. Otherwise Prefect's server on SQLite under
``$ULTRAWORK_HOME/prefect`` (``ultrawork.local_server.process``: ``prefect server start``
plus short retries on SQLite lock contention) is started on demand and reused
while it answers.

Only one server may use that SQLite file, so starting is done under a lock
(``server.lock``) and the record (``server.json``: pid, the process's start
time, port) is written as soon as the process exists: a starter killed
mid-start leaves a record of a live server, not an orphan. A record is
trusted only while its pid is still that process (same start time, same
command line, same user); the server's command line names its home, so a
live server is found even without a record. The server listens on 127.0.0.1
only and asks for an auth string kept in ``auth-string`` (0600; the home is
0700): other users of the machine can neither read the database nor call the API.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ultrawork.sandbox.procs import HolderLock, own_processes, process_cmdline, process_environ, process_start, process_uid
from ultrawork.local_server import template
from ultrawork.sandbox.spec import ultrawork_home

STATE_FILE = "server.json"
AUTH_FILE = "auth-string"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"
ENTRY = "ultrawork.local_server.process"
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
# Where the caller's environment could point the embedded server at another database.
NOT_INHERITED = ("PREFECT_API_DATABASE_", "PREFECT_SERVER_DATABASE_", "PREFECT_API_URL", "PREFECT_PROFILE")


def healthy(url: str, timeout: float = 2.0) -> bool:
    """``/health`` answers without the auth string (Prefect leaves it open for probes)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def auth_header(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def _warm(url: str, auth: str) -> None:
    """The server's first API request pays for its lazy start-up (~0.6 s); pay it here, not in a run."""
    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/admin/version", headers=auth_header(auth)),
                               timeout=30).close()
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_home() -> Path:
    """``$ULTRAWORK_HOME/prefect``, mode 0700 (it holds the database, the log and the auth string)."""
    home = ultrawork_home() / "prefect"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    return home


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` at once with a 0600 file (a reader never sees half a record)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _tighten(home: Path) -> None:
    """Files an earlier ultrawork left readable by others (the database, the log): this user's only."""
    for path in home.iterdir():
        if not path.is_symlink() and path.is_file() and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)


def auth_string(home: Path) -> str:
    """This home's API auth string, made once (``user:password``, as Prefect's basic auth expects)."""
    path = home / AUTH_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            return f.read().strip()
    secret = f"ultrawork:{secrets.token_urlsafe(32)}"
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def _read_record(home: Path) -> dict | None:
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return {"url": str(data["url"]), "pid": int(data["pid"]), "start": str(data.get("start", ""))}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _server_of(pid: int, home: Path) -> dict | None:
    """``pid`` as a server of ``home`` (its url, pid, start time), or None if it is anything else."""
    if process_uid(pid) != os.getuid():
        return None
    argv = process_cmdline(pid)
    if ENTRY not in argv:
        return None
    legacy = "--home" not in argv           # started by an earlier ultrawork: its home is in its environment
    if (process_environ(pid, "PREFECT_HOME") if legacy else _option(argv, "--home")) != str(home):
        return None
    start, port = process_start(pid), _option(argv, "--port")
    if not start or not port:
        return None
    return {"url": f"http://127.0.0.1:{port}/api", "pid": pid, "start": start, "legacy": legacy}


def _record_is_live(record: dict | None, home: Path) -> bool:
    """The record still names the process it was written for, and that process is this home's server."""
    if not record or not record["start"]:
        return False
    server = _server_of(record["pid"], home)
    return server is not None and server["start"] == record["start"]


def running_servers(home: Path) -> list[dict]:
    """Every live server process of ``home``, found by its command line (whatever the record says)."""
    found = [s for s in (_server_of(pid, home) for pid in own_processes()) if s]
    return sorted(found, key=lambda s: int(s["start"]))


def server_environment(home: Path, auth: str) -> dict[str, str]:
    """The embedded server's environment: the caller's, minus anything that points it elsewhere."""
    env = {**SERVER_SETTINGS, **{k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
        "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth,
    })
    return env


def _start(home: Path, auth: str, say) -> tuple[dict, subprocess.Popen]:
    port = _free_port()
    log_path = home / LOG_FILE
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.fchmod(log, 0o600)
    say(f"starting the local Prefect server on 127.0.0.1:{port} (log: {log_path})")
    template.seed(home / "prefect.db")      # a new home: the migrated empty database, not 8 s of migrations
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", ENTRY, "--host", "127.0.0.1", "--port", str(port), "--home", str(home)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_environment(home, auth),
            cwd=home, start_new_session=True, umask=0o077,   # the database and its journals: 0600
        )
    finally:
        os.close(log)
    record = {"url": f"http://127.0.0.1:{port}/api", "pid": proc.pid, "start": process_start(proc.pid)}
    _write_private(home / STATE_FILE, json.dumps({**record, "port": port}) + "\n")
    return record, proc


def _wait_until_healthy(server: dict, home: Path, auth: str, timeout: float, proc=None) -> None:
    log = home / LOG_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = proc.poll() is not None if proc else process_start(server["pid"]) != server["start"]
        if gone:
            (home / STATE_FILE).unlink(missing_ok=True)
            raise RuntimeError(f"the Prefect server exited{f' ({proc.returncode})' if proc else ''}; see {log}")
        if healthy(server["url"]):
            _warm(server["url"], auth)
            return
        time.sleep(0.05)         # a few local requests a second cost the starting server nothing
    _terminate(server, home, sig=signal.SIGKILL)
    (home / STATE_FILE).unlink(missing_ok=True)
    raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f}s; see {log}")


def _local_auth_for(url: str) -> None:
    """``PREFECT_API_URL`` names this home's own server but no auth string was given: use the home's."""
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        return
    home = ultrawork_home() / "prefect"
    record = _read_record(home)
    if record and record["url"] == url.rstrip("/") and (home / AUTH_FILE).exists():
        os.environ["PREFECT_API_AUTH_STRING"] = auth_string(home)


# How every ultrawork process's Prefect client retries (prefect.yaml's work pool gives the same
# values to the flow runs of every worker; tests/test_client_retries.py keeps them equal).
CLIENT_RETRY_SETTINGS = {
    # 2 + 4 + ... + 256 s of back-off: a server or database gone for ~8 min, not for ever
    "PREFECT_CLIENT_MAX_RETRIES": "8",
    # besides 502/503 and timeouts (always retried): a database stall or lock answers 500 or 504
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,504",
}


def configure_client() -> None:
    """How this process's Prefect client retries, unless the environment already says.

    Prefect's SQLite server answers lock contention with 503; the local server replays those itself
    for 5 s and then sends a short Retry-After, and the client's default of 5 retries may still run
    out on a busy server. A PostgreSQL server stalled by a lock or load answers 500 or times out.
    Retry those too, with back-off, but not without end (``CLIENT_RETRY_SETTINGS``).
    """
    missing = {name: value for name, value in CLIENT_RETRY_SETTINGS.items() if name not in os.environ}
    os.environ.update(missing)
    if missing and "prefect.context" in sys.modules:   # Prefect read its settings at import: read them again
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def start_server(say=lambda msg: None) -> bool:
    """Start this home's local server when none is live, without waiting for it to answer; whether it did.

    For a command that has other work before it needs the API (imports, provisioning): the
    server's own start-up (importing Prefect's server, about 4 s) runs meanwhile, and
    ``ensure_server`` later finds it by its record and waits for it. Nothing is started when
    ``PREFECT_API_URL`` names a server, or when no migrated template is there yet (a new
    machine: ``scripts/provision.sh`` makes it first, and ``ensure_server`` starts the server).
    """
    if os.environ.get("PREFECT_API_URL"):
        return False
    home = server_home()
    if not (home / "prefect.db").exists() and not template.template_path().is_file():
        return False
    with HolderLock(home / LOCK_FILE).acquire("starting the local Prefect server", wait=150):
        _tighten(home)
        auth = auth_string(home)
        if _record_is_live(_read_record(home), home) or running_servers(home):
            return False
        _start(home, auth, say)
    return True


def ensure_server(start_timeout: float = 90.0, say=lambda msg: None) -> str:
    """The API URL of a live server, starting the local one if needed; exports it and its auth string.

    Concurrent callers (any process) end with one server: they take turns under
    ``server.lock``, and each finds what the first started.
    """
    configure_client()
    url = os.environ.get("PREFECT_API_URL")
    if url:
        _local_auth_for(url)
        _refresh_prefect_settings()
        return url
    home = server_home()
    with HolderLock(home / LOCK_FILE).acquire("starting the local Prefect server", wait=start_timeout + 60):
        _tighten(home)
        auth = auth_string(home)
        record = _read_record(home)
        proc = None
        if _record_is_live(record, home):
            server = record
        else:
            live = running_servers(home)      # e.g. its starter was killed before it wrote the record
            if live:
                server = next((s for s in live if healthy(s["url"])), live[0])
                if server["legacy"]:
                    say(f"the local Prefect server (pid {server['pid']}) was started without an auth string; "
                        "`ultrawork server stop` it when no run uses it and the next command starts one with it")
                _write_private(home / STATE_FILE, json.dumps(server) + "\n")
            else:
                server, proc = _start(home, auth, say)
        _wait_until_healthy(server, home, auth, start_timeout, proc)
    os.environ["PREFECT_API_URL"] = server["url"]
    os.environ["PREFECT_API_AUTH_STRING"] = auth
    _refresh_prefect_settings()
    return server["url"]


def _refresh_prefect_settings() -> None:
    """Prefect reads its settings once, when it is imported; a process that imported it before the
    server was ensured would otherwise keep no API URL and start Prefect's own throwaway server."""
    import sys

    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def server_report() -> dict:
    """What is true of this home's server: its record, whether the record is live, every live server."""
    home = server_home()
    record = _read_record(home)
    servers = [{**s, "healthy": healthy(s["url"]), "recorded": bool(record) and record["pid"] == s["pid"]}
               for s in running_servers(home)]
    return {"home": str(home), "record": record, "record_live": _record_is_live(record, home),
            "servers": servers, "auth_file": str(home / AUTH_FILE)}


def _terminate(server: dict, home: Path, sig: int = signal.SIGTERM, wait: float = 10.0) -> bool:
    """Stop ``server`` if, right now, its pid is still that process; never signal anything else."""
    current = _server_of(server["pid"], home)
    if current is None or current["start"] != server["start"]:
        return False
    pid = server["pid"]
    try:
        group = os.getpgid(pid) == pid     # started as its own session: its group is its own
        (os.killpg if group else os.kill)(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process_start(pid) == server["start"]:
            time.sleep(0.1)
        if process_start(pid) == server["start"]:
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except ProcessLookupError:             # it exited meanwhile
        pass
    return True


def stop_server() -> dict:
    """Stop every live server of this home and drop its record; a stale record's pid is never signalled.

    Returns ``{"stopped": [pids], "stale": pid or None}``; truthy when something was stopped or removed.
    """
    home = server_home()
    with HolderLock(home / LOCK_FILE).acquire("stopping the local Prefect server", wait=120):
        record = _read_record(home)
        stale = record["pid"] if record and not _record_is_live(record, home) else None
        stopped = [s["pid"] for s in running_servers(home) if _terminate(s, home)]
        (home / STATE_FILE).unlink(missing_ok=True)
    return {"stopped": stopped, "stale": stale} if stopped or stale else {}


if __name__ == "__main__":
    # ``python -m ultrawork.local_server.manager --start``: start this home's server in the background
    # (scripts/demo.sh, while it provisions the rest); a command that needs it waits for it.
    if sys.argv[1:] != ["--start"]:
        sys.exit("usage: python -m ultrawork.local_server.manager --start")
    start_server(say=lambda msg: print(msg, file=sys.stderr))
