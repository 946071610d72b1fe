"""Time to the first agent step of ``bash scripts/demo.sh`` from a fresh home.

Each run gets a new, empty ``ULTRAWORK_HOME`` in a temporary folder (the virtualenv, the
Docker engine, the sandbox image and the machine's Prefect database template are what
they are: provisioning them should then be near no-ops). The clock starts when
``bash scripts/demo.sh`` is started and stops at **the first agent step**: the first
``<agent>: step ...`` commit in the run's superproject, which is what the demo's live
display shows as "step 1" in an agent's row (and ``ultrawork status`` reports). Two earlier
marks are reported too: the first sandbox container of this home started (Docker's
``start`` event) and the first command executed in one (``exec_start``).

The demo is then stopped the way a user stops it (SIGINT, as Ctrl-C), this home's
sandboxes are reaped, its local Prefect server is stopped, the stopped (resumable) run's
capped folders are released, and the run is checked to have left nothing: no container labelled with this home, no process naming the home, no mount
under it; then the temporary folder is removed. A run that leaves something fails.

Prints JSON: each run's marks (seconds since the start) and the medians; with them, when the demo
printed its progress lines (the local server starting, the CLI's first line, the run's first line,
which follows the server's readiness, and the UI address).
Usage: python bench/demo_start.py [--runs 3] [--timeout 120] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("UW_VENV", ROOT / ".venv"))


def home_tag(home: Path) -> str:
    """What the sandboxes of ``home`` are labelled with (``ultrawork.sandbox.spec.home_tag``)."""
    return hashlib.sha256(str(home.expanduser().resolve()).encode()).hexdigest()[:16]


class DockerMarks(threading.Thread):
    """The first container start and the first exec in a container labelled with the home's tag."""

    def __init__(self, tag: str, t0: float):
        super().__init__(daemon=True)
        self.t0, self.marks = t0, {}
        self.proc = subprocess.Popen(
            ["docker", "events", "--format", "{{.Action}}", "--filter", "type=container",
             "--filter", f"label=ultrawork.home={tag}", "--filter", "event=start", "--filter", "event=exec_start"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def run(self) -> None:
        for line in self.proc.stdout:
            name = "first_container" if line.startswith("start") else "first_exec"
            self.marks.setdefault(name, round(time.monotonic() - self.t0, 3))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def first_step_subject(home: Path) -> str | None:
    """The subject of the first agent-step commit of any run of ``home`` (read from the reflog: no git process)."""
    runs = home / "runs"
    if not runs.is_dir():
        return None
    for run in runs.iterdir():
        try:
            text = (run / ".git" / "logs" / "HEAD").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            subject = line.split("\t", 1)[-1].removeprefix("commit: ")
            role, _, rest = subject.partition(": ")
            if rest.startswith("step ") and " " not in role:
                return subject
    return None


def copy_with_times(stream, path: Path, t0: float) -> None:
    """The demo's output, each line stamped with the seconds since the start (where the time goes)."""
    with open(path, "w") as log:
        for line in iter(stream.readline, b""):
            log.write(f"{time.monotonic() - t0:7.3f} {line.decode(errors='replace')}")
            log.flush()


LOG_MARKS = {"server_starting": "starting the local Prefect server", "cli_started": "demo repository:",
             "run_started": "run ", "ui_shown": "UI: "}


def log_marks(path: Path) -> dict:
    """When the demo printed what shows its progress: the server's start, the CLI's first line, the run's
    first line (printed once the server answers), the UI address (the flow run exists)."""
    marks: dict = {}
    for line in path.read_text(errors="replace").splitlines():
        seconds, _, text = line.strip().partition(" ")
        for name, start in LOG_MARKS.items():
            if text.startswith(start) and name not in marks and (name != "run_started" or " on" in text):
                marks[name] = float(seconds)
    return marks


def leftovers(home: Path, tag: str) -> list[str]:
    """What a stopped demo of ``home`` left: containers, processes, mounts."""
    found = []
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=ultrawork.home={tag}"],
                         capture_output=True, text=True).stdout.split()
    found += [f"container {i}" for i in ids]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(home).encode() in a for a in argv) or f"ULTRAWORK_HOME={home}".encode() in env:
            found.append(f"process {pid}: {b' '.join(argv).decode(errors='replace')[:120]}")
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    found += [f"mount {m.split()[1]}" for m in mounts if m.split()[1].startswith(str(home.parent))]
    return found


RELEASE = """
import os
from pathlib import Path
from ultrawork.sandbox import disk
home = Path(os.environ["ULTRAWORK_HOME"])
for run in (home / "runs").iterdir() if (home / "runs").is_dir() else ():
    disk.release_run(run.name)
disk.unmount_under(home)
"""


def one_run(timeout: float, keep_logs: Path | None, index: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="uw-demo-bench-")).resolve()
    home = scratch / "home"
    home.mkdir()
    env = {**os.environ, "ULTRAWORK_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)              # the demo's own local server, as on a user's machine
    tag = home_tag(home)
    log_path = scratch / "demo.log"
    t0 = time.monotonic()
    docker = DockerMarks(tag, t0)
    docker.start()
    demo = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    logger = threading.Thread(target=copy_with_times, args=(demo.stdout, log_path, t0), daemon=True)
    logger.start()
    result: dict = {}
    try:
        while time.monotonic() - t0 < timeout:
            subject = first_step_subject(home)
            if subject:
                result = {"first_step": round(time.monotonic() - t0, 3), "step": subject}
                break
            if demo.poll() is not None:
                raise RuntimeError(f"the demo exited ({demo.returncode}) before any agent step; see {log_path}")
            time.sleep(0.02)
        else:
            raise RuntimeError(f"no agent step within {timeout:.0f} s; see {log_path}")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)         # Ctrl-C: the run stops and keeps its work
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
        result["demo_exit"] = demo.returncode
        logger.join(10)
        time.sleep(0.5)
        docker.stop()
        result.update(docker.marks)
        uw = [str(VENV / "bin" / "ultrawork")]
        for argv in (["sandboxes", "reap", "--all"], ["server", "stop", "--force"]):
            subprocess.run(uw + argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        # a stopped run is resumable, so it keeps its capped folders (Plan.md, work trees): released here
        subprocess.run([str(VENV / "bin" / "python"), "-c", RELEASE], env=env, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=120)
        deadline = time.monotonic() + 30        # a gateway's networks and containers go in the background
        while (left := leftovers(home, tag)) and time.monotonic() < deadline:
            time.sleep(0.5)
        result.update(log_marks(log_path))
        if keep_logs:
            keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(log_path, keep_logs / f"demo-{index}.log")
            server_log = home / "prefect" / "server.log"
            if server_log.exists():
                shutil.copy(server_log, keep_logs / f"server-{index}.log")
        if left:
            raise RuntimeError(f"the stopped demo left {left}; {scratch} is kept")
        shutil.rmtree(scratch)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the first step")
    parser.add_argument("--keep-logs", type=Path, help="copy each run's demo log (its lines timed) and "
                                                         "server log here")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.timeout, args.keep_logs, i))
        print(json.dumps({"run": i, **runs[-1]}), file=sys.stderr, flush=True)
    medians = {k: round(statistics.median(r[k] for r in runs), 3)
               for k in ("first_step", "first_container", "first_exec", *LOG_MARKS) if all(k in r for r in runs)}
    print(json.dumps({"runs": runs, "median": medians}, indent=2))


if __name__ == "__main__":
    main()
