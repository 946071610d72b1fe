"""PostgreSQL for the tests: a fresh database on the local server and a Prefect server on it.

scripts/provision.sh starts Debian's PostgreSQL and gives this user a role that signs in
over the Unix socket (peer authentication: no password anywhere). With CI=true a server
that does not answer fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_SOCKET = os.environ.get("UW_PG_SOCKET", "/var/run/postgresql")
SERVER_LOGS: dict[str, Path] = {}           # API URL -> log of the Prefect server these fixtures started


def psql(sql: str, database: str = "postgres") -> str:
    return subprocess.run(["psql", "-h", PG_SOCKET, "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used here (None when it answers and this user may sign in)."""
    problem = None
    if not shutil.which("psql") or not shutil.which("pg_isready"):
        problem = "psql/pg_isready are missing"
    elif subprocess.run(["pg_isready", "-q", "-h", PG_SOCKET, "-t", "5"]).returncode != 0:
        problem = f"no PostgreSQL answers on {PG_SOCKET}"
    else:
        try:
            psql("SELECT 1")
        except subprocess.CalledProcessError as exc:
            problem = f"cannot sign in to PostgreSQL as this user: {exc.stderr.strip()}"
    return problem


def require_postgres() -> None:
    """PostgreSQL answers on its socket and this user may sign in; otherwise fail (CI) or skip."""
    problem = postgres_problem()
    if problem:
        message = f"{problem} (scripts/provision.sh starts Debian's PostgreSQL)"
        if IN_CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)


def create_database() -> tuple[str, str]:
    """A new empty database: its name and its SQLAlchemy URL (asyncpg over the Unix socket)."""
    require_postgres()
    name = f"uwtest_{uuid.uuid4().hex[:10]}"
    psql(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+asyncpg:///{name}?host={PG_SOCKET}"


def drop_database(name: str) -> None:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class PrefectServer:
    """``prefect server start`` on a PostgreSQL database, as a scaled-out installation runs it."""

    def __init__(self, database_url: str, home: Path, timeout: float = 180.0):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self.log = home / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ULTRAWORK_"))}
        env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"})
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                 "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=home,
                start_new_session=True)
        SERVER_LOGS[self.url] = self.log
        deadline = time.monotonic() + timeout
        try:
            while not healthy(self.url):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Prefect server on PostgreSQL did not start; log:\n"
                                       f"{self.log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)
        except BaseException:      # also a signal that stops the caller while it waits: no server left
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        SERVER_LOGS.pop(self.url, None)


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh PostgreSQL database for the session: ``(name, url)``; dropped at the end."""
    name, url = create_database()
    try:
        yield name, url
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def prefect_pg_server(postgres_database, tmp_path_factory):
    """One Prefect server on PostgreSQL for the session."""
    server = PrefectServer(postgres_database[1], tmp_path_factory.mktemp("prefect-pg"))
    try:
        yield server
    finally:
        from conftest import flush_prefect_workers

        flush_prefect_workers()    # logs and events still held go out while the server answers
        server.stop()


@pytest.fixture
def prefect_pg_api(prefect_pg_server, monkeypatch):
    """This test's Prefect client (and its subprocesses) talk to the PostgreSQL-backed server."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_pg_server.url)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: prefect_pg_server.url},
                            restore_defaults={PREFECT_API_AUTH_STRING}):
        yield prefect_pg_server.url
