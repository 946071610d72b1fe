"""Evaluation throughput: tasks per hour at concurrency 1, 2 and 4, with sleeping agents.

N tasks (copies of one tiny repository with a failing test and the task's fix as an edit
script); one setting whose writer sleeps WORKLOAD seconds in its sandbox, then applies the
fix. The same evaluation runs at each concurrency on one Prefect server, each in a fresh
evaluation folder; concurrency 1 is the same runs one after another. Prints JSON: wall time,
tasks per hour and the speed-up over concurrency 1, and whether every task was resolved.
Usage: python bench/eval.py [--tasks 4] [--workload 5] [--concurrency 1,2,4]
(uses $PREFECT_API_URL, else starts ultrawork's local Prefect server in a temporary home).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TASK = ("add() in calc.py returns the wrong result: make the tests pass.\n\n```ultrawork-edit\n"
        '[{"path": "calc.py", "replace": ["return a - b", "return a + b"]}]\n```\n')


def task_set(folder: Path, count: int) -> Path:
    """``count`` tasks, each its own copy of the calc repository."""
    tasks = []
    for i in range(count):
        repo = folder / "repos" / f"calc{i}"
        shutil.copytree(ROOT / "evals" / "repos" / "calc", repo, ignore=shutil.ignore_patterns("__pycache__"))
        tasks.append({"name": f"calc{i}", "repo": f"repos/calc{i}", "task": TASK,
                      "checks": "python3 -m unittest -q test_calc"})
    path = folder / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": tasks}))
    return path


def settings(folder: Path, workload: float) -> Path:
    sleeper = ["sh", "-c", f"sleep {workload} && exec python3 /agent/builtin_agent.py frontend"]
    path = folder / "settings.yaml"
    path.write_text(yaml.safe_dump({"settings": [{"name": "sleeping", "agent_commands": {"frontend": sleeper}}]}))
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--workload", type=float, default=5.0, help="seconds each writer sleeps")
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated concurrencies to measure")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    work = Path(tempfile.mkdtemp(prefix="ultrawork-bench-eval-"))
    os.environ["ULTRAWORK_HOME"] = str(work / "home")
    from ultrawork.local_server.manager import ensure_server, stop_server

    own_server = not os.environ.get("PREFECT_API_URL")
    results = []
    try:
        ensure_server()
        from ultrawork.flows.evaluate import evaluate

        tasks_file, settings_file = task_set(work, args.tasks), settings(work, args.workload)
        for level in levels:
            started = time.monotonic()
            report = asyncio.run(evaluate(str(tasks_file), str(settings_file), level, f"c{level}{os.getpid() % 1000}"))
            wall = time.monotonic() - started
            results.append({"concurrency": level, "wall_seconds": round(wall, 2),
                            "tasks_per_hour": round(args.tasks * 3600 / wall, 1),
                            "resolved": report.settings[0].resolved, "tasks": args.tasks})
            print(f"concurrency {level}: {wall:.1f} s for {args.tasks} tasks", file=sys.stderr)
    finally:
        if own_server:
            try:
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)   # the runs' last log lines, while the server still answers
            finally:
                stop_server()
        shutil.rmtree(work, ignore_errors=True)
    sequential = next((r["wall_seconds"] for r in results if r["concurrency"] == 1), None)
    for r in results:
        r["speedup_vs_one_after_another"] = round(sequential / r["wall_seconds"], 2) if sequential else None
    report = {"tasks": args.tasks, "workload_seconds": args.workload, "results": results}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
