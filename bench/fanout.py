"""Fan-out overhead: ultrawork versus the same work in plain Python threads.

Four agents whose command sleeps WORKLOAD seconds in the sandbox. Measured side
by side in one invocation:

- ultrawork: the Sisyphus flow on a Prefect server, from start until the run
  pauses for review (then it is rejected so it ends);
- baseline: four threads doing the same branch, clone, Plan.md, hardened
  ``docker run`` and exec, without Prefect.

Prints JSON: both wall times, their ratio (target <= 1.10), per-stage timings, each agent's setup (from its
start, or a writer's prompt, to its first command in its sandbox: p50 and p90 over every agent), and the CPU time the
whole machine spent in each window (server, Docker and git included: on a small
machine the overhead is CPU the two sides compete for). With ``--repeat N``
the two sides alternate N times on the same server and the report holds every pair
and the median ratio: on a small, shared machine one pair can be off by several
percent either way, and the median of alternating pairs is what a change moved.
With ``--network gateway`` the ultrawork side's agents run a Claude Code profile, so the run
starts its egress gateway and each sandbox sits on its own internal network behind it.
With more than four agents (up to 16: role instances such as frontend-2) a 4-agent run goes before each
pair and the report holds the ratio of the two wall times (target <= 1.5) and the peak RSS of this
process (the orchestrator) and the server (target <= 400 MB together): over the whole benchmark, and
(on Linux, the peaks reset before each run) of each run with that many agents, with their median.
``disk_caps`` is what bounding an agent's disk costs it: making and releasing a writer's three capped folders.
Usage: python bench/fanout.py [--workload 5] [--agents 4..16] [--repeat 1] [--network none|gateway]
(uses $PREFECT_API_URL, else starts ultrawork's local Prefect server in a temporary home).
"""

from __future__ import annotations

import argparse
import signal
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ROLES = ["explore", "librarian", "oracle", "frontend"]


def agent_names(agents: int) -> list[str]:
    """Four roles, then their instances: explore, ..., frontend, explore-2, ..., frontend-4 (16 agents)."""
    return [ROLES[i % 4] + (f"-{i // 4 + 1}" if i >= 4 else "") for i in range(agents)]


def rss_mb(pid: int) -> dict[str, float] | None:
    """Current and peak resident memory of ``pid`` in MB (Linux), or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kb = lambda name: int(fields.get(name, "0 kB").split()[0])   # noqa: E731
    return {"rss_mb": round(kb("VmRSS") / 1024, 1), "peak_mb": round(kb("VmHWM") / 1024, 1)}


def _server_pid() -> int | None:
    from ultrawork.local_server.manager import _read_record, server_home

    record = _read_record(server_home())
    return record["pid"] if record else None


def reset_peaks() -> bool:
    """Start the peak RSS of this process and the server anew (Linux: ``clear_refs`` 5), so a peak
    read after a run is that run's; False where the kernel does not allow it."""
    try:
        for pid in (os.getpid(), _server_pid()):
            if pid:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_report() -> dict:
    """This process (the orchestrator) and ultrawork's local Prefect server, peak RSS in MB."""
    pid = _server_pid()
    server = rss_mb(pid) if pid else None
    orchestrator = rss_mb(os.getpid())
    total = (orchestrator or {}).get("peak_mb", 0) + (server or {}).get("peak_mb", 0)
    return {"orchestrator": orchestrator, "server": server, "peak_total_mb": round(total, 1), "target_mb": 400}


def machine_cpu_seconds() -> float | None:
    """CPU time every process on the machine has used so far (Linux), to tell load from waiting."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")   # minus idle and iowait


def _spent(since: float | None) -> float | None:
    now = machine_cpu_seconds()
    return round(now - since, 2) if now is not None and since is not None else None


def disk_cap_cost(folder: Path, repeat: int = 5) -> dict:
    """What the disk caps cost one agent (``ultrawork.sandbox.disk``): making and releasing a writer's
    three capped folders (work tree, Plan.md folder, /agent) at their default sizes, median of ``repeat``."""
    from ultrawork.sandbox import disk
    from ultrawork.sandbox.spec import Limits

    limits, made, released = Limits(), [], []
    for i in range(repeat):
        sizes = (("workspace", limits.workspace_mb), ("plan", limits.plan_mb), ("scratch", limits.agent_mb))
        t0 = time.perf_counter()
        caps = [disk.cap_folder(folder / f"{kind}-{i}", mb, run_id="bench-disk", kind=kind) for kind, mb in sizes]
        t1 = time.perf_counter()
        for cap in caps:
            disk.release(cap)
        made.append(t1 - t0)
        released.append(time.perf_counter() - t1)
    return {"backend": disk.disk_backend().kind, "per_writer_make_ms": round(statistics.median(made) * 1000, 1),
            "per_writer_release_ms": round(statistics.median(released) * 1000, 1)}


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "README.md").write_text("# bench\n")
    (path / "app.py").write_text("print('hi')\n")
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b.invalid", *argv], cwd=path, check=True)
    return path


def baseline(repo: Path, workdir: Path, workload: float, agents: int) -> dict:
    """The same per-agent work in threads: branch + clone, Plan.md, hardened container, exec, cleanup,
    in the run's order (research roles together, then the writers together)."""
    from ultrawork.sandbox import Limits, Mount, SandboxEngine, SandboxPolicy, SandboxSpec

    engine = SandboxEngine(SandboxPolicy(workspace_roots=[workdir]))
    stages: dict[str, list[float]] = {"clone": [], "sandbox": [], "exec": [], "cleanup": []}
    lock = threading.Lock()

    def one(role: str) -> None:
        t0 = time.monotonic()
        clone = workdir / role
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", "-b", f"bench/{role}"], cwd=clone, check=True)
        plan = workdir / "plans" / role
        plan.mkdir(parents=True)
        (plan / "Plan.md").write_text(f"# Plan: {role}\n")
        t1 = time.monotonic()
        sb = engine.create(SandboxSpec(role=role, run_id="bench-baseline", workspace=clone, limits=Limits(),
                                       mounts=[Mount(source=plan, target="/plan", read_only=False)]))
        t2 = time.monotonic()
        engine.execute(sb, ["sh", "-c", f"sleep {workload}"])
        t3 = time.monotonic()
        engine.cleanup(sb)
        t4 = time.monotonic()
        with lock:
            for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[key].append(value)

    from ultrawork.agents.team import RESEARCH_ROLES, base_role

    names = agent_names(agents)
    research = [n for n in names if base_role(n) in RESEARCH_ROLES]
    writers = [n for n in names if n not in research]
    # the run's own order: research side by side, then the writers (with the findings) side by side
    groups = [research, writers] if research and writers else [names]
    started, cpu = time.monotonic(), machine_cpu_seconds()
    for group in groups:
        threads = [threading.Thread(target=one, args=(name,)) for name in group]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {"wall_seconds": time.monotonic() - started, "machine_cpu_seconds": _spent(cpu),
            "stages_max_seconds": {k: round(max(v), 3) for k, v in stages.items()}}


def ultrawork(repo: Path, workload: float, agents: int, network: str = "none") -> dict:
    from prefect.exceptions import TerminationSignal

    from ultrawork.cli.runs import submit_review
    from ultrawork.flows.sisyphus import sisyphus
    from ultrawork.gateway.run import gateway_seconds

    roles = agent_names(agents)
    run_id = f"bench-{int(time.time())}-{os.urandom(2).hex()}"
    STARTED_RUNS.append(run_id)
    marks: dict[str, float] = {}
    home = Path(os.environ["ULTRAWORK_HOME"])

    def watch() -> None:   # the review, sent as soon as the run asks; retried, never waited on forever
        review = home / "runs" / run_id / "review.json"
        while not review.exists() or "requested" not in review.read_text():
            if finished.wait(0.05):
                return
        marks["paused"], marks["cpu"] = time.monotonic(), _spent(cpu)
        for attempt in range(5):
            try:
                submit_review(run_id, approve=[], reject=roles)
                return
            except Exception as exc:  # noqa: BLE001 - shown, retried
                print(f"review not sent ({exc}); retrying", file=sys.stderr)
                if finished.wait(2 ** attempt):
                    return

    finished = threading.Event()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    marks["start"], cpu = time.monotonic(), machine_cpu_seconds()
    FLOW_LEFT.clear()
    IN_FLOW.set()
    try:
        result = asyncio.run(sisyphus("benchmark the fan-out", str(repo), agents=roles, run_id=run_id,
                                      review_timeout=REVIEW_TIMEOUT,
                                      agent_commands={r: ["sh", "-c", f"sleep {workload}"] for r in roles},
                                      # --network gateway: every agent a Claude Code profile behind the run's gateway
                                      agent_profiles={r: "claude-code" for r in roles} if network == "gateway" else None))
    except TerminationSignal as exc:   # Prefect's own SIGTERM handler, installed while a flow runs
        remove_started_runs()
        raise BenchmarkStopped(f"stopped by {signal.Signals(exc.signal).name}") from None
    except (Exception, KeyboardInterrupt):
        if TERMINATED.is_set():       # the SIGTERM seen by the wakeup fd ended the flow
            raise BenchmarkStopped("stopped by SIGTERM") from None
        raise
    finally:
        IN_FLOW.clear()
        FLOW_LEFT.set()
        finished.set()
        watcher.join(10)
    if TERMINATED.is_set():           # a SIGTERM that a nested subflow turned into a failed agent
        remove_started_runs()
        raise BenchmarkStopped("stopped by SIGTERM")
    marks["end"] = time.monotonic()
    if "paused" not in marks:
        raise RuntimeError(f"the run ended without asking for its review: {result.outcome}: {result.message}")
    failed = [f"{o.role}: {(o.errors or ['?'])[-1][:200]}" for o in result.agents if o.status != "succeeded"]
    if failed:                       # a run whose agents did not do the work measures nothing
        raise RuntimeError(f"{len(failed)} agent(s) did not run their workload: " + "; ".join(failed))
    starts = [o.started_at for o in result.agents]
    ends = [o.ended_at for o in result.agents]
    t0 = marks["start"]
    wall0 = time.time() - (time.monotonic() - t0)
    return {
        "wall_seconds": marks["paused"] - t0,
        "machine_cpu_seconds": marks["cpu"],
        "stages_seconds": {
            "until_first_agent_started": round(min(starts) - wall0, 3),
            "agent_start_spread": round(max(starts) - min(starts), 3),
            "agents_span": round(max(ends) - min(starts), 3),
            "after_agents_until_review_pause": round(marks["paused"] - t0 - (max(ends) - wall0), 3),
            "review_to_end": round(marks["end"] - marks["paused"], 3),
        },
        "agent_durations": {o.role: round(o.duration, 3) for o in result.agents},
        # from each agent's start (a writer set up during the research: its prompt) to its first command
        "setup_seconds": {o.role: o.setup_seconds for o in result.agents if o.setup_seconds is not None},
        "outcome": result.outcome,
        **({"gateway_seconds": gateway_seconds(run_id)} if network == "gateway" else {}),
    }


STARTED_RUNS: list[str] = []
REVIEW_TIMEOUT = 600          # a run whose review never comes ends on its own


class BenchmarkStopped(Exception):
    """SIGTERM, SIGINT or the overall timeout: the run is cancelled and everything cleaned up."""


def remove_started_runs() -> None:
    """At once: the steps waiting on their sandboxes end, and nothing is left running."""
    from ultrawork.tasks.sandboxes import engine

    for run_id in STARTED_RUNS:
        engine().remove_run(run_id)


def stop_on_signals(timeout: float) -> dict:
    """SIGTERM and the overall timeout (SIGALRM) end the benchmark the way Ctrl-C does: the flow is
    cancelled (its sandboxes removed), the local server stopped and the scratch folder deleted."""
    def stop(signum, frame):
        remove_started_runs()
        raise BenchmarkStopped(f"stopped by {signal.Signals(signum).name}"
                               + (f" after {timeout:.0f} s" if signum == signal.SIGALRM else ""))
    if threading.current_thread() is not threading.main_thread():
        return {}
    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGALRM)}
    watch_terminations(stop)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    return before


TERMINATED = threading.Event()
IN_FLOW, FLOW_LEFT = threading.Event(), threading.Event()     # the main thread is inside / has left the flow


def watch_terminations(ours) -> None:
    """Every SIGTERM, whoever's Python handler is installed. While a flow runs Prefect's handler replaces
    ours, and a signal that lands inside an agent's subflow can end as that agent failing while the run
    goes on; the interpreter's wakeup fd receives every signal before any handler runs. On SIGTERM the
    runs' sandboxes go and, unless ``ours`` (the handler that stops the benchmark itself) took it, the
    main thread is interrupted (asyncio cancels the flow)."""
    import _thread

    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            if signal.SIGTERM.value in os.read(read, 64) and not TERMINATED.is_set():
                TERMINATED.set()
                if signal.getsignal(signal.SIGTERM) is ours:
                    continue
                # Prefect's handler: its TerminationSignal usually ends the flow at once; if the flow
                # still runs a few seconds later, the signal was swallowed by a subflow: end it from here
                if IN_FLOW.is_set() and not FLOW_LEFT.wait(5) and IN_FLOW.is_set():
                    remove_started_runs()
                    _thread.interrupt_main()

    threading.Thread(target=watch, daemon=True, name="sigterm-watch").start()


def restore_signals(before: dict) -> None:
    if before:
        signal.setitimer(signal.ITIMER_REAL, 0)
    for sig, handler in before.items():
        signal.signal(sig, handler)


def remove_scratch(work: Path, wait: float = 15.0) -> None:
    """Delete the scratch folder; after a stop, a cancelled run's last git writes may still land in it."""
    from ultrawork.sandbox.disk import unmount_under

    deadline = time.monotonic() + wait
    while True:
        unmount_under(work)             # the disk caps a stopped run left mounted there
        shutil.rmtree(work, ignore_errors=True)
        if not work.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def percentile(values: list[float], pct: float) -> float | None:
    """The nearest-rank percentile (None of no values)."""
    if not values:
        return None
    ranked = sorted(values)
    return round(ranked[max(0, -(-len(ranked) * pct // 100) - 1)], 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=float, default=5.0, help="seconds each agent sleeps")
    parser.add_argument("--agents", type=int, default=4, choices=range(1, 17),
                        help="agents in the run (above 4: role instances such as frontend-2); above 4 the report "
                             "also holds a 4-agent run and the ratio of the two wall times")
    parser.add_argument("--repeat", type=int, default=1, help="alternating pairs; the median ratio is reported")
    parser.add_argument("--network", choices=["none", "gateway"], default="none",
                        help="gateway: the agents reach the network only through the run's egress gateway")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the benchmark gives up")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    handlers = stop_on_signals(args.timeout)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    if args.network == "gateway":   # the gateway starts only with the secret its profile names (never sent anywhere)
        os.environ.setdefault("ANTHROPIC_API_KEY", "bench-placeholder-not-a-key")
        from ultrawork.gateway.image import build_gateway_image
        from ultrawork.sandbox.agent_image import build_agent_image

        build_agent_image("claude-code", say=lambda line: print(line, file=sys.stderr))   # a no-op once built
        build_gateway_image(say=lambda line: print(line, file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="ultrawork-bench-"))
    os.environ["ULTRAWORK_HOME"] = str(work / "home")
    from ultrawork.local_server.manager import ensure_server, stop_server

    own_server = not os.environ.get("PREFECT_API_URL")
    pairs, four, memory, disk_cost, runs_memory = [], [], {}, {}, []
    try:
        ensure_server()
        repo = make_repo(work / "repo")
        for i in range(args.repeat):
            if args.agents > 4:                  # the 4-agent run the larger fan-out is held against
                four.append(ultrawork(repo, args.workload, 4, args.network)["wall_seconds"])
            per_run = reset_peaks()
            uw = ultrawork(repo, args.workload, args.agents, args.network)
            if per_run:                            # this run's own peak (else the process's, below)
                runs_memory.append(memory_report())
            raw = baseline(repo, work / f"baseline-{i}", args.workload, args.agents)
            pairs.append({"ultrawork": uw, "baseline": raw,
                          "ratio": round(uw["wall_seconds"] / raw["wall_seconds"], 3)})
            if args.repeat > 1:
                print(f"pair {i + 1}/{args.repeat}: ratio {pairs[-1]['ratio']} (ultrawork "
                      f"{uw['wall_seconds']:.2f}s, baseline {raw['wall_seconds']:.2f}s)", file=sys.stderr)
        memory = memory_report()
        disk_cost = disk_cap_cost(work / "disk-cost")
    finally:
        restore_signals(handlers)
        if own_server:
            stop_server()
        remove_scratch(work)
    ratios = [p["ratio"] for p in pairs]
    typical = sorted(pairs, key=lambda p: p["ratio"])[(len(pairs) - 1) // 2]   # its timings are shown
    report = {"workload_seconds": args.workload, "agents": args.agents, "network": args.network, **typical,
              "ratio": round(statistics.median(ratios), 3), "target_ratio": 1.10}
    setups = [v for p in pairs for v in p["ultrawork"]["setup_seconds"].values()]
    report["setup_seconds"] = {"agents": len(setups), "p50": percentile(setups, 50), "p90": percentile(setups, 90)}
    report["memory"] = memory
    report["disk_caps"] = disk_cost
    if runs_memory:                               # each run of --agents, peaks reset before it
        totals = [m["peak_total_mb"] for m in runs_memory]
        report["memory"] = {**memory, "per_run_peak_total_mb": totals,
                            "median_peak_total_mb": round(statistics.median(totals), 1),
                            "max_peak_total_mb": max(totals), "per_run": runs_memory}
    if four:
        walls = [p["ultrawork"]["wall_seconds"] for p in pairs]
        report["versus_4_agents"] = {"wall_seconds_4": round(statistics.median(four), 3),
                                     f"wall_seconds_{args.agents}": round(statistics.median(walls), 3),
                                     "ratio": round(statistics.median(walls) / statistics.median(four), 3),
                                     "target_ratio": 1.5}
    if args.network == "gateway":   # what the runs waited for: start (alongside setup) plus stop; removal after
        lifecycles = [p["ultrawork"]["gateway_seconds"] for p in pairs]
        report["gateway"] = {
            "start_plus_stop_seconds": [round(g["start"] + g["stop"], 3) for g in lifecycles],
            "median_start_plus_stop_seconds": round(statistics.median(g["start"] + g["stop"] for g in lifecycles), 3),
            "median_removal_seconds": round(statistics.median(g.get("removal", 0.0) for g in lifecycles), 3),
            "target_seconds": 1.5}
    if len(pairs) > 1:
        report.update(ratios=ratios, ratio_min=min(ratios), ratio_max=max(ratios), pairs=pairs)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
