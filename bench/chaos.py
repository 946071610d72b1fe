"""Chaos: N ultrawork runs with faults injected at random points (seeded), then the damage counted.

Each run works on its own small repository with a local GitHub stand-in, in its
own process (``python -m ultrawork.cli.launch``). Faults are drawn from: a container
removed mid-step, an agent command failing, the engine reporting an error, git
failing (commit, publish, integrate), and the orchestrating process killed
(after an agent finished, or after the pull request was opened). A killed run is
continued with ``ultrawork resume``. A reviewer approves every run.

Prints JSON: runs completed, faults injected and survived, containers leaked,
commits lost, duplicate pull requests.
Usage: python bench/chaos.py [--runs 20] [--seed 7]
(uses $PREFECT_API_URL, else starts ultrawork's local Prefect server in a temporary home).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

ROLES = ["explore", "frontend"]
TASK = """Document the widget.

```ultrawork-edit
[{"path": "docs.md", "append": "The widget is documented.\\n"}]
```
"""
MENU = [
    lambda r: {"at": "step", "role": r.choice(ROLES), "action": "kill_container"},
    lambda r: {"at": "step", "role": r.choice(ROLES), "action": "agent_fail"},
    lambda r: {"at": "step", "role": r.choice(ROLES), "action": "sandbox_error"},
    lambda r: {"at": "git:commit", "role": r.choice(ROLES), "action": "git_error", "times": r.randint(1, 2)},
    lambda r: {"at": "git:publish", "role": r.choice(ROLES), "action": "git_error"},
    lambda r: {"at": "git:integrate", "action": "git_error", "times": r.randint(1, 2)},
    lambda r: {"at": "stage:agent-finished", "after": r.randint(0, 1), "action": "kill_process"},
    lambda r: {"at": "stage:pull-request-opened", "action": "kill_process"},
]


def git(repo: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-c", "user.name=c", "-c", "user.email=c@c.invalid", *args], cwd=repo,
                          capture_output=True, text=True, check=check).stdout.strip()


def make_repo(path: Path) -> tuple[Path, Path]:
    path.mkdir(parents=True)
    (path / "docs.md").write_text("# Widget\n")
    (path / "widget.py").write_text("def widget():\n    return 1\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    remote = path.with_name(path.name + ".git")
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(path, "push", "-q", str(remote), "main")
    return path, remote


class Reviewer(threading.Thread):
    """Approves every agent of every run that asks for review."""

    def __init__(self, home: Path):
        super().__init__(daemon=True)
        self.home, self.stop, self.done = home, threading.Event(), set()

    def run(self) -> None:
        from ultrawork.cli.runs import ReviewRejected, submit_review

        while not self.stop.is_set():
            for review in (self.home / "runs").glob("*/review.json"):
                run_id = review.parent.name
                try:
                    data = json.loads(review.read_text())
                    orchestration = json.loads((review.parent / "orchestration.json").read_text())
                except (OSError, ValueError):
                    continue
                key = (run_id, orchestration.get("flow_run_id"))
                if data.get("state") == "requested" and key not in self.done:
                    try:
                        submit_review(run_id, approve=ROLES, reject=[], wait=30)
                        self.done.add(key)
                    except (ReviewRejected, Exception):  # noqa: BLE001 - a killed run stops answering
                        self.done.add(key)
            time.sleep(0.3)


def one_run(index: int, rng: random.Random, work: Path, stub, env: dict) -> dict:
    from ultrawork.sandbox import SandboxEngine

    run_id = f"chaos-{index:03d}-{rng.randrange(16**4):04x}"
    repo, remote = make_repo(work / f"repo{index}")
    faults = [MENU[i](rng) for i in sorted(rng.sample(range(len(MENU)), rng.randint(1, 3)))]
    state = work / f"faults{index}.json"
    run_env = {**env, "ULTRAWORK_FAULTS": json.dumps(faults), "ULTRAWORK_FAULTS_STATE": str(state),
               "ULTRAWORK_GITHUB_REPOSITORY": stub.repository, "ULTRAWORK_GITHUB_TOKEN": stub.token,
               "ULTRAWORK_GITHUB_API_URL": stub.url, "ULTRAWORK_GITHUB_PUSH_URL": str(remote)}
    params = {"task": TASK, "repo": str(repo), "agents": ROLES, "run_id": run_id, "review_timeout": 300}
    log = open(work / f"{run_id}.log", "ab")
    argv = [sys.executable, "-m", "ultrawork.cli.launch", json.dumps(params)]
    attempts, killed = 0, 0
    while attempts < 4:
        attempts += 1
        proc = subprocess.run(argv, env=run_env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
        if proc.returncode == 0:
            break
        killed += proc.returncode == -9
        argv = [str(Path(sys.executable).with_name("ultrawork")), "resume", run_id]
    outcome_file = Path(env["ULTRAWORK_HOME"]) / "runs" / run_id / "integration.json"
    integration = json.loads(outcome_file.read_text()) if outcome_file.exists() else {}
    fired = json.loads(state.read_text()) if state.exists() else {}
    injected = sum(1 for i, rule in enumerate(faults)
                   if fired.get(str(i), 0) > int(rule.get("after", 0)))
    leaked = len(SandboxEngine().list(run_id=run_id))
    lost = 0  # an agent commit missing from its branch, or (approved, integrated) from the integration
    for role in ROLES:
        outcome = Path(env["ULTRAWORK_HOME"]) / "runs" / run_id / "outcomes" / f"{role}.json"
        commits = json.loads(outcome.read_text())["commits"] if outcome.exists() else []
        refs = [f"ultrawork/{run_id}/{role}"] + ([integration["branch"]] if integration.get("outcome") == "merged" else [])
        for ref in refs:
            for sha in commits:
                lost += subprocess.run(["git", "merge-base", "--is-ancestor", sha, ref], cwd=repo,
                                       capture_output=True).returncode != 0
    return {"run_id": run_id, "completed": integration.get("outcome") == "merged", "attempts": attempts,
            "killed": killed, "faults": faults, "faults_injected": injected, "containers_leaked": leaked,
            "commits_lost": lost}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    from github_stub import GitHubStub

    from ultrawork.local_server.manager import ensure_server, stop_server

    work = Path(tempfile.mkdtemp(prefix="ultrawork-chaos-"))
    saved_home = os.environ.get("ULTRAWORK_HOME")
    own_server = not os.environ.get("PREFECT_API_URL")
    os.environ["ULTRAWORK_HOME"] = str(work / "home")
    rng = random.Random(args.seed)
    results = []
    reviewer = Reviewer(work / "home")
    try:
        ensure_server()
        env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
        reviewer.start()
        with GitHubStub(repository="acme/widgets") as stub:
            for index in range(args.runs):
                results.append(one_run(index, rng, work, stub, env))
                print(f"run {index + 1}/{args.runs}: {results[-1]['run_id']} completed={results[-1]['completed']} "
                      f"attempts={results[-1]['attempts']}", file=sys.stderr, flush=True)
            heads = Counter(p["head"]["ref"] for p in stub.pulls)
    finally:
        reviewer.stop.set()
        if own_server:
            stop_server()
        if saved_home is None:
            os.environ.pop("ULTRAWORK_HOME", None)
        else:
            os.environ["ULTRAWORK_HOME"] = saved_home
        from ultrawork.sandbox.disk import unmount_under

        unmount_under(work)             # the disk caps a killed run left mounted there
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "runs": args.runs, "seed": args.seed,
        "runs_completed": sum(r["completed"] for r in results),
        "faults_injected": sum(r["faults_injected"] for r in results),
        "faults_survived": sum(r["faults_injected"] for r in results if r["completed"]),
        "processes_killed_and_resumed": sum(r["killed"] for r in results),
        "containers_leaked": sum(r["containers_leaked"] for r in results),
        "commits_lost": sum(r["commits_lost"] for r in results),
        "duplicate_pull_requests": sum(n - 1 for n in heads.values() if n > 1),
        "pull_requests": len(stub.pulls),
        "incomplete_runs": [r for r in results if not r["completed"]],
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
