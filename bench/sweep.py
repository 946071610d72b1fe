"""Scale-out: the nightly backlog sweep of N issues on 1 process worker versus 3.

Each configuration runs on its own fresh server (a new PostgreSQL database and ``prefect server
start`` on it when PostgreSQL answers; else ultrawork's embedded SQLite server in a fresh home),
with workers that each have their own ``ULTRAWORK_HOME`` and a fresh ``file://`` bare remote as
every issue's repository: nothing shared but the server and the remote, as on separate machines.
Every issue is one ``frontend`` agent writing its own file; ``prefect deploy --all``, then the
sweep deployment is started with ``prefect deployment run``, and a fourth home approves each run
with ``ultrawork review RUN --approve-all`` as soon as it asks (three reviews at a time).

Reported per configuration: wall time from the sweep's start (its flow run's start on the server)
to every issue integrated (seen by half-second polls of the backlog), and from the request
(``prefect deployment run``); the peak of concurrent sandboxes (the containers labelled with the
homes of its workers, sampled every 0.5 s); how the runs spread over the workers; the CPU time the
whole machine spent meanwhile and how busy that kept its cores (workers on one machine share them:
when they are busy, more workers add processes, not speed). With ``--repeat``
the configurations alternate and the medians are reported with every run.
Usage: python bench/sweep.py [--issues 12] [--workers 1,3] [--repeat 1] [--concurrency N]
       [--worker-limit 3] [--backend auto|postgresql|sqlite] [--timeout 1800] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))        # tests/workers.py, tests/pg.py: the harness the tests use
sys.path.insert(0, str(ROOT / "bench"))

from fanout import BenchmarkStopped, remove_scratch, restore_signals  # noqa: E402
import fanout  # noqa: E402

SMALL_SANDBOXES = {"memory_mb": 256, "cpus": 0.5, "pids": 128}


def stop_on_signals(timeout: float) -> dict:
    """SIGTERM and the overall timeout end the benchmark as BenchmarkStopped; the ``finally`` blocks
    stop the workers, remove the sandboxes of their homes, the server, its database and the scratch folder."""
    fanout.STARTED_RUNS.clear()          # nothing of fanout's own to remove
    return fanout.stop_on_signals(timeout)


@contextmanager
def fresh_server(where: Path, backend: str):
    """``(api_url, auth, backend)`` of a server of its own for one configuration; stopped (and its
    database dropped) at the end."""
    from pg import PrefectServer, create_database, drop_database, postgres_problem

    if backend in ("auto", "postgresql"):
        problem = postgres_problem()
        if problem and backend == "postgresql":
            raise RuntimeError(f"--backend postgresql: {problem}")
        if not problem:
            name, url = create_database()
            try:
                server = PrefectServer(url, where / "server")
                try:
                    yield server.url, None, "postgresql"
                finally:
                    server.stop()
            finally:
                drop_database(name)
            return
    from ultrawork.local_server.manager import ensure_server, stop_server

    saved = {k: os.environ.get(k) for k in ("ULTRAWORK_HOME", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    os.environ["ULTRAWORK_HOME"] = str(where / "server")
    os.environ.pop("PREFECT_API_URL", None)
    try:
        url = ensure_server(start_timeout=180)
        yield url, os.environ["PREFECT_API_AUTH_STRING"], "sqlite"
    finally:
        os.environ["ULTRAWORK_HOME"] = str(where / "server")
        stop_server()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()        # this process's Prefect settings: as they were


class SandboxSampler(threading.Thread):
    """Counts the sandbox containers of ``homes`` every ``every`` seconds; ``peak`` is the most seen."""

    def __init__(self, docker_client, homes, every: float = 0.5):
        super().__init__(daemon=True)
        self.client, self.homes, self.every = docker_client, homes, every
        self.peak, self.samples = 0, 0
        self.halt = threading.Event()

    def run(self) -> None:
        from workers import sandboxes

        while not self.halt.is_set():
            try:
                self.peak = max(self.peak, len(sandboxes(self.client, self.homes)))
                self.samples += 1
            except Exception:  # noqa: BLE001 - a container removed while listed; the next sample counts
                pass
            self.halt.wait(self.every)


def make_backlog(where: Path, url: str, issues: int):
    from ultrawork.backlog import FileBacklog
    from workers import edit_task

    where.mkdir(parents=True)
    backlog = FileBacklog(where)
    names = [f"issue-{i:02d}" for i in range(1, issues + 1)]
    for name in names:
        backlog.create(name, title=f"Add {name}.txt", repo=url, task=edit_task(f"{name}.txt", f"{name}\n"),
                       agents=["frontend"])
    return backlog, names


def bare_remote(where: Path) -> Path:
    from flowkit import make_target_repo

    source = make_target_repo(where / "widgets")
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(where / "widgets.git")], check=True,
                   capture_output=True)
    return where / "widgets.git"


def one_sweep(work: Path, *, workers: int, issues: int, concurrency: int, worker_limit: int, backend: str,
              timeout: float) -> dict:
    """One configuration on its own server: the sweep of ``issues`` on ``workers`` workers, measured."""
    from ultrawork.blocks import SandboxSettings
    from ultrawork.sandbox import SandboxEngine
    from workers import (Reviewer, cli_review, create_pool, deploy, flow_run_state, on_server, remove_sandboxes,
                         run_sweep, start_workers, stop_workers, worker_env, api_client)

    docker_client = SandboxEngine().client
    with fresh_server(work, backend) as (url, auth, used):
        with on_server(url, auth):
            SandboxSettings(**SMALL_SANDBOXES).save("default", overwrite=True)
        create_pool(url, auth)
        remote = bare_remote(work)
        backlog, names = make_backlog(work / "backlog", remote.as_uri(), issues)
        reviewer_home = work / "reviewer-home"
        reviewer_home.mkdir()
        reviewer_env = worker_env(url, reviewer_home, auth)
        deploy(reviewer_env)
        fleet = start_workers(url, work / "workers", workers, limit=worker_limit, auth=auth)
        sampler = SandboxSampler(docker_client, [w.home for w in fleet])
        try:
            for worker in fleet:
                worker.wait_started()
            sampler.start()
            requested, cpu = time.monotonic(), fanout.machine_cpu_seconds()
            sweep_id = run_sweep(reviewer_env, backlog.root, concurrency=concurrency, limit=issues, poll_seconds=1,
                                 review_timeout=3600)

            def approve(issue_id: str, run_id: str) -> None:
                done = cli_review(run_id, reviewer_env, "--approve-all", "--comment", "bench")
                if done.returncode != 0:
                    raise RuntimeError(f"review of {issue_id} ({run_id}) refused: {done.stdout}{done.stderr}")

            reviewer = Reviewer(backlog, approve, set(names))
            reviewer.run(lambda: flow_run_state(sweep_id, url, auth).is_final(), timeout=timeout,
                         describe=lambda: "; ".join(f"{w.name}: {w.text()[-1500:]}" for w in fleet))
            window, cpu = time.monotonic() - requested, fanout._spent(cpu)
        finally:
            sampler.halt.set()
            stop_workers(fleet)
            left = remove_sandboxes(docker_client, [w.home for w in fleet])
        with api_client(url, auth) as client:
            sweep = client.read_flow_run(uuid.UUID(sweep_id))
        states = {i.id: i.state for i in backlog.scan()[0]}
        integrated = [n for n in names if states.get(n) == "accepted"]
        if len(integrated) != issues:
            raise RuntimeError(f"not every issue was integrated: {states}")
        last = max(t for _, t in reviewer.settled.values())
        offset = time.time() - time.monotonic()
        started = sweep.start_time.timestamp() if sweep.start_time else requested + offset
        flow_runs = {h.data.get("flow_run_id") for i in backlog.scan()[0] for h in i.history if h.trigger == "run_started"}
        return {
            "workers": workers, "backend": used, "issues": issues, "integrated": len(integrated),
            "wall_seconds": round(last + offset - started, 2),
            "from_request_seconds": round(last - requested, 2),
            "sweep_pickup_seconds": round(started - (requested + offset), 2),
            "peak_sandboxes": sampler.peak, "sandbox_samples": sampler.samples,
            # CPU the whole machine (2 cores here, shared) spent from the request until the sweep ended
            "machine_cpu_seconds": cpu,
            "machine_busy": round(cpu / (window * (os.cpu_count() or 1)), 3) if cpu is not None else None,
            "runs_per_worker": {w.name: len(w.submitted(flow_runs)) for w in fleet},
            "sweep_state": sweep.state.name if sweep.state else None,
            "run_ids": sorted(reviewer.reviewed.values()),
            "left_sandboxes_removed": left,
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=12, help="issues in the backlog, one run each")
    parser.add_argument("--workers", default="1,3", help="comma-separated worker counts to compare")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every configuration; medians reported")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="the sweep's concurrency (default: the number of issues: the workers are the limit)")
    parser.add_argument("--worker-limit", type=int, default=3, help="flow runs per worker at once (the sweep "
                                                                    "itself takes one slot)")
    parser.add_argument("--backend", choices=["auto", "postgresql", "sqlite"], default="auto",
                        help="the server's database (auto: PostgreSQL when it answers, else SQLite)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the benchmark gives up")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.workers.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--workers {args.workers!r} must be comma-separated numbers, e.g. 1,3")
    if not counts or min(counts) < 1 or args.issues < 1 or args.repeat < 1:
        parser.error("--workers, --issues and --repeat must be at least 1")
    if args.worker_limit < 2:
        parser.error("--worker-limit must be at least 2: the sweep itself runs on a worker slot")
    concurrency = args.concurrency or args.issues
    handlers = stop_on_signals(args.timeout)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    work = Path(tempfile.mkdtemp(prefix="ultrawork-bench-sweep-"))
    runs: list[dict] = []
    deadline = time.monotonic() + args.timeout
    try:
        for round_ in range(args.repeat):
            for count in counts:
                run = one_sweep(work / f"r{round_}-w{count}", workers=count, issues=args.issues,
                                concurrency=concurrency, worker_limit=args.worker_limit, backend=args.backend,
                                timeout=max(60.0, deadline - time.monotonic()))
                runs.append(run)
                print(f"round {round_ + 1}/{args.repeat}, {count} worker(s): {run['wall_seconds']:.1f} s, "
                      f"peak {run['peak_sandboxes']} sandboxes, {run['runs_per_worker']}", file=sys.stderr)
    finally:
        restore_signals(handlers)
        remove_scratch(work)
    configurations = {}
    for count in counts:
        mine = [r for r in runs if r["workers"] == count]
        configurations[str(count)] = {
            "wall_seconds": round(statistics.median(r["wall_seconds"] for r in mine), 2),
            "from_request_seconds": round(statistics.median(r["from_request_seconds"] for r in mine), 2),
            "peak_sandboxes": max(r["peak_sandboxes"] for r in mine),
            "machine_busy": statistics.median(r["machine_busy"] or 0 for r in mine), "runs": mine}
    report = {"issues": args.issues, "workers": counts, "repeat": args.repeat, "concurrency": concurrency,
              "cpus": os.cpu_count(),
              "worker_limit": args.worker_limit, "backend": runs[0]["backend"],
              "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "configurations": configurations}
    if len(counts) > 1:
        first, most = configurations[str(counts[0])], configurations[str(counts[-1])]
        report["speedup"] = round(first["wall_seconds"] / most["wall_seconds"], 3)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for count, row in configurations.items():
            print(f"{count} worker(s): {row['wall_seconds']:.1f} s sweep start -> all integrated "
                  f"({row['from_request_seconds']:.1f} s from the request), peak {row['peak_sandboxes']} sandboxes, "
                  f"cores {row['machine_busy']:.0%} busy")
        if "speedup" in report:
            print(f"speedup {counts[-1]} vs {counts[0]} worker(s): {report['speedup']}x")
    return report


if __name__ == "__main__":
    main()
