"""Process workers as an installation runs them, for tests and benchmarks.

The work pool on a given server, ``prefect deploy --all`` from this checkout, N ``prefect worker
start`` processes each with its own ``ULTRAWORK_HOME`` and log (nothing shared but the server),
the nightly sweep started with ``prefect deployment run``, and a reviewer that decides each issue
as it reaches review. Plain Python (no pytest): ``bench/sweep.py`` uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
ULTRAWORK = str(BIN / "ultrawork")
POOL = "ultrawork-process"
SWEEP = "backlog-sweep/nightly-backlog-sweep"
DEPLOYMENTS = ("sisyphus/sisyphus", SWEEP, "evaluate/nightly-evaluation")
SETTLED = ("accepted", "define")       # where a swept issue goes when its run has ended (integrated, rejected)


class SweepFailed(Exception):
    """The sweep did not bring every issue through its review in time, or an issue went back to the backlog."""


def edit_task(path: str, text: str) -> str:
    """A task the built-in ``frontend`` agent carries out exactly: write ``path`` with ``text``."""
    return (f"Add {path}.\n\n```ultrawork-edit\n"
            f"{json.dumps([{'path': path, 'write': text}])}\n```\n")


def worker_env(api_url: str, home: Path, auth: str | None = None) -> dict[str, str]:
    """The environment of a worker (and of the flow runs it starts) on ``api_url`` with its own home."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ULTRAWORK_GITHUB", "PREFECT_LOGGING", "PREFECT_API_AUTH_STRING"))}
    env.update({"PREFECT_API_URL": api_url, "ULTRAWORK_HOME": str(home), "PWD": str(ROOT),
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                # the worker logs are read while the workers run: no block buffering, no wrapped lines
                "PYTHONUNBUFFERED": "1", "COLUMNS": "400",
                # at INFO whatever the caller's environment says: "submitting flow run" lines say who ran what
                "PREFECT_LOGGING_LEVEL": "INFO"})
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    return env


@contextmanager
def on_server(api_url: str | None = None, auth: str | None = None) -> Iterator[None]:
    """This process's Prefect calls (clients, blocks) go to ``api_url`` (default: its settings) meanwhile."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates = {PREFECT_API_URL: api_url} if api_url else {}
    if auth:
        updates[PREFECT_API_AUTH_STRING] = auth
    with temporary_settings(updates=updates):
        yield


@contextmanager
def api_client(api_url: str | None = None, auth: str | None = None) -> Iterator:
    """A synchronous Prefect client on ``api_url`` (default: this process's settings)."""
    from prefect.client.orchestration import get_client

    with on_server(api_url, auth), get_client(sync_client=True) as client:
        yield client


def create_pool(api_url: str | None = None, auth: str | None = None) -> None:
    """The process work pool of ``prefect.yaml`` (kept when it exists)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with api_client(api_url, auth) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass


def deploy(env: dict[str, str], timeout: float = 180) -> str:
    """``prefect deploy --all`` from this checkout; its output (RuntimeError with it when it fails)."""
    done = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy --all failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def remove_deployments(api_url: str | None = None, auth: str | None = None) -> None:
    """No nightly schedule left behind on a server that outlives the caller."""
    with api_client(api_url, auth) as client:
        for name in DEPLOYMENTS:
            try:
                client.delete_deployment(client.read_deployment_by_name(name).id)
            except Exception:  # noqa: BLE001 - not deployed
                pass


def start_worker(name: str, env: dict, log: Path, limit: int = 3) -> subprocess.Popen:
    """``prefect worker start`` in its own process group, its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", name,
                                 "--limit", str(limit), "--prefetch-seconds", "5"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGINT, then SIGKILL: the worker and anything it started (its own process group)."""
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            os.killpg(proc.pid, signal.SIGKILL)     # children that outlived the worker
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def home_tag(home: Path) -> str:
    """The ``ultrawork.home`` label of the sandboxes made under ``home`` (sandbox.spec.home_tag)."""
    return hashlib.sha256(str(home.expanduser().resolve()).encode()).hexdigest()[:16]


def sandboxes(docker_client, homes) -> list:
    """The sandbox containers (any state) made by runs under ``homes``."""
    tags = {home_tag(h) for h in homes}
    found = docker_client.containers.list(all=True, filters={"label": ["ultrawork.managed=true"]},
                                          ignore_removed=True)
    return [c for c in found if (c.labels or {}).get("ultrawork.home") in tags]


def remove_sandboxes(docker_client, homes) -> list[str]:
    """Remove what runs under ``homes`` left (after a stop or a failure), with their volumes."""
    removed = []
    for container in sandboxes(docker_client, homes):
        try:
            container.remove(force=True, v=True)
            removed.append(container.name)
        except Exception:  # noqa: BLE001 - already gone
            pass
    return removed


@dataclass
class Worker:
    """One worker process, the home its flow runs use and its log."""

    name: str
    home: Path
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None

    def start(self, limit: int = 3) -> "Worker":
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = start_worker(self.name, self.env, self.log, limit)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_worker(self.proc)

    def wait_started(self, timeout: float = 120) -> None:
        """Until the worker polls its pool (its log says so); RuntimeError with the log if it ends first."""
        deadline = time.monotonic() + timeout
        while f"Worker '{self.name}' started" not in self.text():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start; log:\n{self.text()[-3000:]}")
            time.sleep(0.3)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def submitted(self, flow_run_ids) -> set[str]:
        """Those of ``flow_run_ids`` this worker's log says it submitted (not those whose submission the
        server refused because another worker had taken the run first)."""
        text = self.text()
        took = set(re.findall(r"submitting flow run '([0-9a-f-]{36})'", text))
        lost = set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text))
        return {str(i) for i in flow_run_ids} & (took - lost)

    def runs(self) -> set[str]:
        """The run ids whose records are in this worker's home."""
        runs = self.home / "runs"
        return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


def start_workers(api_url: str, where: Path, count: int, limit: int = 3, auth: str | None = None,
                  prefix: str = "worker") -> list[Worker]:
    """``count`` workers named ``<prefix>-1..N``, each with a fresh home ``where/<name>-home``."""
    where.mkdir(parents=True, exist_ok=True)
    workers = []
    try:
        for i in range(1, count + 1):
            name = f"{prefix}-{i}"
            home = where / f"{name}-home"
            workers.append(Worker(name, home, where / f"{name}.log", worker_env(api_url, home, auth)).start(limit))
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.stop()


def run_sweep(env: dict[str, str], backlog: Path, *, concurrency: int, poll_seconds: float = 1,
              review_timeout: int = 600, limit: int | None = None) -> str:
    """``prefect deployment run`` of the nightly sweep on ``backlog``; the sweep's flow run id."""
    params = {"backlog": str(backlog), "concurrency": concurrency, "poll_seconds": poll_seconds,
              "review_timeout": review_timeout}
    if limit is not None:
        params["limit"] = limit
    argv = [PREFECT, "deployment", "run", SWEEP]
    for key, value in params.items():
        argv += ["-p", f"{key}={value}"]
    started = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    found = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout)
    if started.returncode != 0 or not found:
        raise RuntimeError(f"prefect deployment run {SWEEP} failed:\n{started.stdout[-3000:]}{started.stderr[-3000:]}")
    return found.group(1)


def flow_run_state(flow_run_id: str, api_url: str | None = None, auth: str | None = None):
    with api_client(api_url, auth) as client:
        return client.read_flow_run(uuid.UUID(flow_run_id)).state


def cli_review(run_id: str, env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``ultrawork review RUN ARGS`` as a person types it, in ``env`` (its home and server)."""
    return subprocess.run([ULTRAWORK, "review", run_id, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@dataclass
class Reviewer:
    """Decides each issue of a backlog once it reaches review, several at a time, until ``done()``.

    ``decide(issue_id, run_id)`` raises to refuse; its error ends the loop with the issue named.
    ``reviewed`` maps issue -> run id; ``settled`` issue -> (state, monotonic time) when it was first seen
    past its run (accepted, define), within the loop's half-second polls."""

    backlog: object
    decide: Callable[[str, str], object]
    issues: set[str]
    parallel: int = 3
    reviewed: dict[str, str] = field(default_factory=dict)
    settled: dict[str, tuple[str, float]] = field(default_factory=dict)

    def run(self, done: Callable[[], bool], timeout: float, describe: Callable[[], str] = lambda: "") -> None:
        pending: dict[str, Future] = {}
        deadline = time.monotonic() + timeout
        pool = ThreadPoolExecutor(self.parallel)
        try:
            while True:
                for issue_id, future in list(pending.items()):
                    if future.done():
                        future.result()         # a refused review ends the loop with its error
                        del pending[issue_id]
                for issue in self.backlog.scan()[0]:
                    if issue.id not in self.issues:
                        continue
                    if issue.state == "backlog" and issue.version:
                        raise SweepFailed(f"issue {issue.id} went back to the backlog: {issue.history[-1].data}")
                    if issue.state in SETTLED and issue.id not in self.settled:
                        self.settled[issue.id] = (issue.state, time.monotonic())
                    if issue.state == "review" and issue.id not in self.reviewed:
                        run_id = issue.history[-1].data["run_id"]
                        self.reviewed[issue.id] = run_id
                        pending[issue.id] = pool.submit(self.decide, issue.id, run_id)
                if not pending and len(self.reviewed) == len(self.issues) and done():
                    return
                if time.monotonic() > deadline:
                    states = {i.id: i.state for i in self.backlog.scan()[0] if i.id in self.issues}
                    raise SweepFailed(f"not done after {timeout:.0f} s; issue states {states}; {describe()}")
                time.sleep(0.5)
        finally:       # on any error too: the reviews under way end (bounded by their timeout), queued ones never start
            pool.shutdown(wait=True, cancel_futures=True)
