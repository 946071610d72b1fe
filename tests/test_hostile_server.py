"""Races and other local users against the local Prefect server and resume.

Every server these tests start lives in the test's own ``$ULTRAWORK_HOME`` and
is stopped by the test; the suite's shared server (``prefect_api``) is used only
where a run needs one. The processes a test looks for are found independently
of the code under test: by their command line and ``PREFECT_HOME``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, review_state

ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))
STRAY_DATABASE = "postgresql+asyncpg://nobody:nothing@127.0.0.1:9/elsewhere"
ENSURE = "from ultrawork.local_server.manager import ensure_server; print(ensure_server(start_timeout=150))"


def own_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a command with its own home: no suite server, no suite auth string."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    return {**env, "ULTRAWORK_HOME": str(home), "COLUMNS": "200", **extra}


def server_processes(home: Path) -> list[int]:
    """Live Prefect server processes whose PREFECT_HOME is ``home/prefect`` (this user's)."""
    want = f"PREFECT_HOME={home / 'prefect'}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"ultrawork.local_server.process" in (proc / "cmdline").read_bytes() and \
                    want in (proc / "environ").read_bytes().split(b"\0") and \
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def kill_servers(home: Path) -> None:
    for pid in server_processes(home):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ultrawork(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([ULTRAWORK, *args], env=own_env(home, **extra), capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def raced_home(tmp_path_factory):
    """A fresh home whose server four processes asked for at once (with a stray database URL set)."""
    home = tmp_path_factory.mktemp("raced") / "home"
    env = own_env(home, PREFECT_API_DATABASE_CONNECTION_URL=STRAY_DATABASE,
                  PREFECT_SERVER_DATABASE_CONNECTION_URL=STRAY_DATABASE)
    starters = [subprocess.Popen([sys.executable, "-c", ENSURE], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        outputs = [p.communicate(timeout=240) for p in starters]
        yield home, starters, outputs
    finally:
        for p in starters:
            p.kill()
        subprocess.run([ULTRAWORK, "server", "stop", "--force"], env=own_env(home), capture_output=True, timeout=120)
        kill_servers(home)


def test_concurrent_starts_end_with_one_server_on_the_homes_own_database(raced_home):
    home, starters, outputs = raced_home
    assert [p.returncode for p in starters] == [0, 0, 0, 0], [err[-2000:] for _, err in outputs]
    urls = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(urls) == 1, f"all four got the same server: {urls}"
    time.sleep(1)   # a second server would still be starting, not gone
    assert len(server_processes(home)) == 1, "exactly one server process for the home"
    assert (home / "prefect" / "prefect.db").stat().st_size > 0, \
        "the stray PREFECT_*_DATABASE_CONNECTION_URL was not passed on: the home's SQLite file holds the data"
    record = json.loads((home / "prefect" / "server.json").read_text())
    assert record["url"] == urls.pop() and record["pid"] == server_processes(home)[0]


def test_state_is_private_and_the_api_refuses_requests_without_the_auth_string(raced_home):
    home, _, outputs = raced_home
    prefect_home = home / "prefect"
    url = json.loads((prefect_home / "server.json").read_text())["url"]
    assert prefect_home.stat().st_mode & 0o777 == 0o700
    for name in ("server.json", "auth-string", "prefect.db", "server.log"):
        assert (prefect_home / name).stat().st_mode & 0o777 == 0o600, name
    for path in prefect_home.glob("prefect.db*"):
        assert path.stat().st_mode & 0o077 == 0, path

    with pytest.raises(urllib.error.HTTPError) as refused:           # another local user: no auth string
        urllib.request.urlopen(urllib.request.Request(f"{url}/flow_runs/filter", data=b"{}", method="POST",
                                                      headers={"Content-Type": "application/json"}), timeout=30)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(urllib.request.Request(f"{url}/admin/version", headers={
            "Authorization": "Basic " + base64.b64encode(b"ultrawork:guessed").decode()}), timeout=30)
    assert wrong.value.code == 401
    secret = (prefect_home / "auth-string").read_text().strip()
    token = base64.b64encode(secret.encode()).decode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/admin/version",
                                                       headers={"Authorization": f"Basic {token}"}), timeout=30) as ok:
        assert ok.status == 200

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 + Path("/proc/net/tcp6").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].rsplit(":", 1)[1], 16) == port]
    assert listening == ["0100007F:" + f"{port:04X}"], f"bound to 127.0.0.1 only: {listening}"

    status = ultrawork(home, "server", "status")
    assert status.returncode == 0 and url in status.stdout, status.stdout + status.stderr
    for text in [*(out + err for out, err in outputs), status.stdout + status.stderr,
                 (prefect_home / "server.log").read_text(errors="replace"),
                 (prefect_home / "server.json").read_text()]:
        assert secret.split(":", 1)[1] not in text, "the auth string is never printed, logged or recorded"


def test_stop_never_signals_a_process_a_stale_record_names(tmp_path):
    home = tmp_path / "home"
    (home / "prefect").mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)   # its own group, as a server's is
    try:
        start = Path(f"/proc/{bystander.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        for record in ({"url": "http://127.0.0.1:9/api", "pid": bystander.pid},
                       {"url": "http://127.0.0.1:9/api", "pid": bystander.pid, "start": start}):
            (home / "prefect" / "server.json").write_text(json.dumps(record))
            status = ultrawork(home, "server", "status")
            assert status.returncode == 1 and "stale" in status.stdout, status.stdout + status.stderr
            stopped = ultrawork(home, "server", "stop", "--force")
            assert stopped.returncode == 0, stopped.stderr
            assert "stale" in stopped.stdout and str(bystander.pid) in stopped.stdout, stopped.stdout
            time.sleep(0.5)
            assert bystander.poll() is None and alive(bystander.pid), "the unrelated process was not signalled"
            assert not (home / "prefect" / "server.json").exists(), "the stale record is removed"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_starter_killed_mid_start_leaves_a_server_that_status_reports_and_stop_stops(tmp_path):
    home = tmp_path / "home"
    starter = subprocess.Popen([sys.executable, "-c", ENSURE], env=own_env(home), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not server_processes(home) and time.monotonic() < deadline:
            time.sleep(0.05)
        servers = server_processes(home)
        assert servers, "the starter started a server"
        starter.send_signal(signal.SIGKILL)                              # killed before the server answered
        starter.wait()
        deadline = time.monotonic() + 150
        while True:
            status = ultrawork(home, "server", "status")
            if status.returncode == 0 or time.monotonic() > deadline:
                break
            assert f"pid {servers[0]}" in status.stdout, "a starting server is reported, not denied"
            time.sleep(1)
        assert status.returncode == 0 and f"pid {servers[0]}" in status.stdout and "answering" in status.stdout, \
            status.stdout + status.stderr

        # the next command reuses it: still one server
        again = subprocess.run([sys.executable, "-c", ENSURE], env=own_env(home), capture_output=True, text=True,
                               timeout=200)
        assert again.returncode == 0 and server_processes(home) == servers, again.stderr[-2000:]

        stopped = ultrawork(home, "server", "stop")
        assert stopped.returncode == 0 and str(servers[0]) in stopped.stdout, stopped.stdout + stopped.stderr
        deadline = time.monotonic() + 15
        while server_processes(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server_processes(home) == [], "stop stopped the server the killed starter left"
    finally:
        starter.kill()
        kill_servers(home)


def test_a_resume_is_refused_while_another_process_drives_the_run(uw_home, tmp_path):
    """Without Docker or a server: the refusal comes first and changes nothing (no server is started)."""
    from ultrawork.cli.runs import claim_run
    from ultrawork.workspace.superproject import RunSuperproject

    run = RunSuperproject.create("held-run", make_target_repo(tmp_path / "widgets"), "task")
    before = git(run.path, "rev-parse", "HEAD")
    holder_code = ("import sys, time; from ultrawork.cli.runs import claim_run; claim_run(sys.argv[1], 'a test driver'); "
                   "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", holder_code, "held-run"], env=own_env(uw_home),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for _ in range(2):
            refused = ultrawork(uw_home, "resume", "held-run")
            assert refused.returncode != 0
            assert f"process {holder.pid} (a test driver)" in refused.stderr, refused.stderr
        assert git(run.path, "rev-parse", "HEAD") == before
        assert git(run.path, "status", "--porcelain") == ""
        assert not (uw_home / "prefect").exists(), "no server was started for a refused resume"
    finally:
        holder.kill()
        holder.wait()
    claim_run("held-run", "this test").release()      # its holder was killed: the lock went with it


def test_a_background_run_keeps_the_lock_its_parent_handed_it(tmp_path):
    """``ultrawork resume --detach``: the child inherits the lock and is named as its holder."""
    from ultrawork.sandbox.procs import HolderLock, LockBusy

    path = tmp_path / "driver.lock"
    lock = HolderLock(path).acquire("parent")
    child = subprocess.Popen(["sleep", "300"], pass_fds=(lock.fd,))
    try:
        lock.hand_to(child.pid, "in the background")
        assert lock.fd is None
        with pytest.raises(LockBusy) as busy:
            HolderLock(path).acquire("a second driver")
        assert busy.value.holder == f"process {child.pid} (in the background)"
    finally:
        child.kill()
        child.wait()
    HolderLock(path).acquire("after the child").release()


@pytest.mark.docker
@pytest.mark.prefect
def test_two_resumes_of_a_crashed_run_run_its_agents_once(prefect_api, uw_home, tmp_path, docker_client):
    from collections import Counter

    from ultrawork.cli.runs import submit_review

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"race-{uuid.uuid4().hex[:6]}"
    # explore (research) finishes first; the process dies as the writer's first step starts in its sandbox
    env = {**os.environ, "ULTRAWORK_FAULTS_STATE": str(tmp_path / "faults.json"),
           "ULTRAWORK_FAULTS": json.dumps([{"at": "step", "role": "frontend", "action": "kill_process"}])}
    params = {"task": "Document make_widget.", "repo": str(repo), "agents": ["explore", "frontend"],
              "run_id": run_id, "review_timeout": 180}
    created: Counter = Counter()
    stream = docker_client.events(decode=True, filters={"type": "container", "event": "create",
                                                        "label": f"ultrawork.run={run_id}"})

    def count() -> None:   # live, from now on: the engine keeps only its last few hundred events
        for event in stream:
            created[event["Actor"]["Attributes"].get("ultrawork.agent")] += 1

    threading.Thread(target=count, daemon=True).start()
    first = subprocess.Popen([sys.executable, "-m", "ultrawork.cli.launch", json.dumps(params)], env=env,
                             stdout=open(tmp_path / "first.log", "ab"), stderr=subprocess.STDOUT)
    assert first.wait(timeout=180) == -9, (tmp_path / "first.log").read_text()[-3000:]

    resumes = [subprocess.Popen([ULTRAWORK, "resume", run_id], env=os.environ.copy(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 240
        while review_state(run_id) != "requested" and time.monotonic() < deadline:
            time.sleep(0.2)
        submit_review(run_id, ["explore", "frontend"], [])
        results = [p.communicate(timeout=240) for p in resumes]
    finally:
        for p in resumes:
            p.kill()
    codes = [p.returncode for p in resumes]
    assert sorted(codes) != [0, 0] and 0 in codes, (codes, results)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert "integrated" in results[winner][0], results[winner]
    assert f"process {resumes[winner].pid}" in results[loser][1], results[loser][1]

    time.sleep(1)
    stream.close()
    assert created == Counter({"explore": 1, "frontend": 2}), f"frontend ran once more, not twice: {created}"
    orchestration = json.loads((uw_home / "runs" / run_id / "orchestration.json").read_text())
    assert len(orchestration["flow_runs"]) == 2, "the crashed flow run and one resumed flow run"
    history = git(uw_home / "runs" / run_id, "log", "--format=%s").splitlines()
    assert sum(h == "review requested" for h in history) == 1, history
