"""The sandbox engine: hardened Docker containers with a clear lifecycle.

create -> deploy -> execute (many) / stats -> cleanup, plus list and reap.
Every container gets the hardened defaults below whatever the spec says, and
every spec passes :func:`validate_spec` before the first Docker call.
"""

from __future__ import annotations

import io
import os
import secrets
import socket
import struct
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import docker
import docker.errors
import requests
from docker.types import Mount as DockerMount

from . import disk
from .deploy_files import add_directory
from .errors import (
    ContainerGone,
    EngineUnavailable,
    ImageMissing,
    ResourceLimitExceeded,
    SandboxError,
    SandboxPolicyError,
    SandboxTimeout,
)
from .output import BoundedBuffer, OutputLog
from ultrawork.secret_names import looks_secret

from .policy import SandboxPolicy, validate_spec
from .procs import owner_token, owner_alive
from .spec import (
    CACHE_ENV,
    HOME_TARGET,
    LABEL_AGENT,
    LABEL_CREATED,
    LABEL_DISK,
    LABEL_HOME,
    LABEL_MANAGED,
    LABEL_MCP_BOUND,
    LABEL_OWNER,
    LABEL_RUN,
    SANDBOX_UID,
    WORKSPACE_TARGET,
    Limits,
    Mount,
    SandboxSpec,
    home_tag,
)

AGENT_DIR = "/agent"

# Run after every command, as the sandbox user: kill every process a command
# started -- including ones that left its process group or session -- except
# docker-init (pid 1), the keep-alive `sleep infinity` (the oldest child of pid
# 1: nothing a command starts can be older) and this probe. Stopped first, so a
# fork loop cannot outrun the killing; repeated until none is left. Then print
# how many were killed and the cgroup's OOM-kill and pids-max event counters.
_AFTER_EXEC = r"""
import os, signal, sys, time
me = os.getpid()
def procs():
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found.append((int(name), fields[0], int(fields[1]), int(fields[19])))
    return found
children = [(start, pid) for pid, state, ppid, start in procs() if ppid == 1]
spare = {1, me, min(children)[1] if children else 1}
killed, ends = set(), time.monotonic() + float(sys.argv[1])
while time.monotonic() < ends:
    victims = [pid for pid, state, ppid, start in procs() if pid not in spare and state not in "ZX"]
    if not victims:
        break
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in victims:
            try:
                os.kill(pid, sig)
            except OSError:
                continue
            if sig == signal.SIGKILL:
                killed.add(pid)
    time.sleep(0.002)
else:
    print("== survivors")
print("== killed " + str(len(killed)))
for f in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control",
          "/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events"):
    try:
        print("== " + f + "\n" + open(f).read())
    except OSError:
        pass
"""
_PROBE_SECONDS = 3.0           # how long the probe keeps killing a respawning fork loop
_EXEC_LOCKS_GUARD = threading.Lock()


class _Overdue(Exception):
    """A Docker call did not return within its bound."""


def _bounded(fn: Callable, seconds: float):
    """``fn()``, or :class:`_Overdue` after ``seconds`` (the call is left to finish on its own)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="bounded-docker-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _Overdue(f"no answer within {seconds:g}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _exec_lock(sandbox: "Sandbox") -> threading.Lock:
    """One command at a time per sandbox: the cleanup after a command kills every process in it."""
    with _EXEC_LOCKS_GUARD:
        lock = sandbox.__dict__.get("_exec_lock")
        if lock is None:
            lock = sandbox.__dict__["_exec_lock"] = threading.Lock()
        return lock


def _recv(sock, n: int) -> bytes:
    return sock.recv(n) if hasattr(sock, "recv") else sock.read(n)


def _frames(sock) -> Iterable[tuple[int, bytes]]:
    """Docker's multiplexed exec stream: (1 stdout | 2 stderr, chunk), read in pieces of 64 KiB at most."""
    while True:
        header = b""
        while len(header) < 8:
            piece = _recv(sock, 8 - len(header))
            if not piece:
                return
            header += piece
        stream_id, length = struct.unpack(">BxxxL", header)
        while length:
            chunk = _recv(sock, min(length, 65536))
            if not chunk:
                return
            length -= len(chunk)
            yield stream_id, chunk


def _close_stream(sock) -> None:
    """Stop a reader blocked on the exec stream, whatever the daemon does."""
    raw = getattr(sock, "_sock", sock)
    for close in (lambda: raw.shutdown(socket.SHUT_RDWR), sock.close,
                  lambda: getattr(sock, "_response", None) and sock._response.close()):
        try:
            close()
        except Exception:  # already closed or never opened
            pass


@dataclass
class Sandbox:
    """A live sandbox: the container and the spec it was made from."""

    id: str
    name: str
    spec: SandboxSpec
    created_at: float = field(default_factory=time.time)
    counters: dict[str, int] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)   # its scratch volumes, removed with it
    scratch: str | None = None   # the disk cap (key) of its /agent folder; None: read from its label

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass
class ExecResult:
    """What one command did inside a sandbox."""

    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    truncated: bool = False
    leftovers_killed: int = 0   # processes the command left running, killed after it
    output_bytes: int = 0       # all it printed (stdout + stderr), kept or not


@dataclass
class SandboxStats:
    """One sample of a sandbox's resource use."""

    memory_bytes: int
    memory_limit_bytes: int
    cpu_percent: float
    pids: int
    pids_limit: int


@dataclass
class SandboxInfo:
    """A managed container as ``list`` and ``reap`` see it."""

    id: str
    name: str
    run_id: str
    role: str
    status: str
    image: str
    created: float
    owner: str
    disk: str = ""      # the disk cap (key) of its /agent folder

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.created)


def _check_argv(argv: object) -> list[str]:
    if not isinstance(argv, (list, tuple)) or not argv:
        raise SandboxPolicyError("argv", "must be a non-empty list of strings")
    for item in argv:
        if not isinstance(item, str) or "\x00" in item:
            raise SandboxPolicyError("argv", f"{item!r} is not a string without NUL bytes")
    return list(argv)


class SandboxEngine:
    """Creates and drives hardened sandboxes on a Docker engine."""

    def __init__(
        self,
        policy: SandboxPolicy | None = None,
        client: docker.DockerClient | None = None,
        output_limit: int = 256 * 1024,
        kill_grace: float = 5.0,
    ):
        self.policy = policy or SandboxPolicy()
        self._client = client
        self.output_limit = output_limit
        self.kill_grace = kill_grace

    # -- connection -------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            try:
                client = docker.from_env(timeout=120)
                client.ping()
            except Exception as exc:  # docker raises several unrelated types here
                raise EngineUnavailable(
                    f"no Docker engine answers at {where} (DOCKER_HOST); start one "
                    f"(e.g. 'sudo systemctl start docker' or 'bash scripts/provision.sh'): {exc.__class__.__name__}"
                ) from None
            self._client = client
        return self._client

    def _container(self, sandbox: Sandbox | str):
        cid = sandbox.id if isinstance(sandbox, Sandbox) else sandbox
        try:
            return self.client.containers.get(cid)
        except docker.errors.NotFound:
            raise ContainerGone(f"sandbox {cid[:12]} no longer exists") from None
        except requests.exceptions.ConnectionError as exc:
            raise EngineUnavailable(f"Docker engine unreachable: {exc}") from None

    # -- create -----------------------------------------------------------
    def create(self, spec: SandboxSpec) -> Sandbox:
        """Validate ``spec``, then start a hardened container for it."""
        validate_spec(spec, self.policy)
        client = self.client
        try:
            client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            raise ImageMissing(f"sandbox image {spec.image} is missing; build it with 'ultrawork sandbox build'") from None
        name = f"ultrawork-{spec.run_id}-{spec.role}-{secrets.token_hex(3)}"[:120]
        mounts = []
        if spec.workspace is not None:
            mounts.append(DockerMount(WORKSPACE_TARGET, str(spec.workspace.resolve()), type="bind",
                                      read_only=spec.workspace_mode == "ro"))
        for m in spec.mounts:
            mounts.append(DockerMount(m.target, str(m.source.resolve()), type="bind", read_only=m.read_only))
        labels = {
            **spec.labels,
            LABEL_MANAGED: "true",
            LABEL_RUN: spec.run_id,
            LABEL_AGENT: spec.role,
            LABEL_OWNER: owner_token(),
            LABEL_CREATED: str(int(time.time())),
            LABEL_HOME: home_tag(),
        }
        memory = f"{spec.limits.memory_mb}m"
        # /agent: a folder of its own capped at agent_mb on the host's disk (ultrawork.sandbox.disk)
        try:
            scratch = disk.cap_scratch(spec.run_id, name, spec.limits.agent_mb)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"making the sandbox's {AGENT_DIR} folder failed: {exc}") from None
        labels[LABEL_DISK] = scratch.key
        try:
            container = client.containers.create(
                spec.image,
                command=["sleep", "infinity"],
                name=name,
                hostname=spec.role,
                user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                working_dir=WORKSPACE_TARGET if spec.workspace is not None else HOME_TARGET,
                environment={**CACHE_ENV, **spec.env, "HOME": HOME_TARGET},
                labels=labels,
                network_mode=spec.network,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                read_only=True,
                tmpfs={
                    "/tmp": "rw,nosuid,nodev,size=256m,mode=1777",
                    HOME_TARGET: f"rw,nosuid,nodev,size=256m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0755",
                },
                mounts=[*mounts, DockerMount(AGENT_DIR, str(scratch.path), type="bind")],
                pids_limit=spec.limits.pids,
                mem_limit=memory,
                memswap_limit=memory,
                nano_cpus=int(spec.limits.cpus * 1e9),
                init=True,
                detach=True,
            )
        except BaseException as exc:
            disk.release(scratch)
            if isinstance(exc, docker.errors.ImageNotFound):
                raise ImageMissing(f"sandbox image {spec.image} is missing; build it with 'ultrawork sandbox build'") from None
            if isinstance(exc, docker.errors.APIError):
                raise SandboxError(f"creating the sandbox failed: {exc.explanation or exc}") from None
            raise
        sandbox = Sandbox(id=container.id, name=name, spec=spec, scratch=scratch.key,
                          volumes=[m["Name"] for m in container.attrs.get("Mounts") or []
                                   if m.get("Type") == "volume" and m.get("Name")])
        try:
            container.start()
        except docker.errors.APIError as exc:
            self.cleanup(sandbox)
            raise SandboxError(f"starting the sandbox failed: {exc.explanation or exc}") from None
        return sandbox

    # -- deploy -----------------------------------------------------------
    def deploy(
        self,
        sandbox: Sandbox,
        files: Mapping[str, bytes | str] | None = None,
        directory: Path | None = None,
        dest: str = AGENT_DIR,
    ) -> list[str]:
        """Copy ``files`` (relative path -> content) and/or a host ``directory`` into ``dest``."""
        buf = io.BytesIO()
        names: list[str] = []
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for rel, content in (files or {}).items():
                rel_path = Path(rel)
                if rel_path.is_absolute() or ".." in rel_path.parts or not rel_path.parts:
                    raise SandboxPolicyError("files", f"{rel!r} must be a relative path inside {dest}")
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(rel_path.as_posix())
                info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o755, SANDBOX_UID, SANDBOX_UID, time.time()
                tar.addfile(info, io.BytesIO(data))
                names.append(rel_path.as_posix())
            if directory is not None:  # walked by descriptor: nothing a sandbox planted is followed
                names += add_directory(tar, Path(directory))
        container = self._container(sandbox)
        try:
            ok = container.put_archive(dest, buf.getvalue())
        except docker.errors.APIError as exc:
            raise SandboxError(f"deploying to {dest} failed: {exc.explanation or exc}") from None
        if not ok:
            raise SandboxError(f"deploying to {dest} failed")
        return names

    # -- execute ----------------------------------------------------------
    def execute(
        self,
        sandbox: Sandbox,
        argv: list[str],
        timeout: float | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        output_log: OutputLog | None = None,
        should_stop: Callable[[], "str | ResourceLimitExceeded | None"] | None = None,
    ) -> ExecResult:
        """Run ``argv`` (never a shell string) and return its exit code and bounded output.

        Afterwards every process the command started is killed, wherever it
        went (``ExecResult.leftovers_killed`` counts them). ``output_log`` gets the
        output as it comes (batched and capped). Raises :class:`SandboxTimeout`
        when it runs past ``timeout`` -- at most ``kill_grace`` seconds later,
        whatever the output rate or the engine does: a command that will not die
        takes its container down -- :class:`ResourceLimitExceeded` when the memory
        or pids limit stopped it (or ``should_stop``, polled twice a second, gave a
        reason), and :class:`ContainerGone` if the container died.
        """
        argv = _check_argv(argv)
        timeout = sandbox.spec.exec_timeout if timeout is None else float(timeout)
        if not 0 < timeout <= self.policy.max_exec_timeout:
            raise SandboxPolicyError("timeout", f"{timeout} is outside (0, {self.policy.max_exec_timeout}]")
        for name in env or {}:
            if looks_secret(name) and name not in sandbox.spec.allow_env:
                raise SandboxPolicyError(f"env.{name}", "looks like a secret; secrets never enter a sandbox")
        with _exec_lock(sandbox):
            try:
                return self._execute(sandbox, argv, timeout, workdir, env, output_log, should_stop)
            finally:
                if output_log is not None:
                    output_log.close()

    def _execute(self, sandbox, argv, timeout, workdir, env, output_log, should_stop) -> ExecResult:
        api = self.client.api
        container = self._container(sandbox)
        try:
            exec_id = api.exec_create(
                container.id, argv, stdout=True, stderr=True, user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                workdir=workdir, environment=dict(env or {}),
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)   # read raw: closable, nothing buffered
        except docker.errors.NotFound:
            raise ContainerGone(f"sandbox {sandbox.name} no longer exists") from None
        except docker.errors.APIError as exc:
            if "is not running" in str(exc) or exc.status_code == 409:
                raise ContainerGone(f"sandbox {sandbox.name} is not running: {exc.explanation}") from None
            raise SandboxError(f"exec failed: {exc.explanation or exc}") from None
        except requests.exceptions.ConnectionError as exc:
            raise EngineUnavailable(f"Docker engine unreachable: {exc}") from None
        getattr(sock, "_sock", sock).settimeout(None)    # a quiet command is not a dead stream

        out, err = BoundedBuffer(self.output_limit), BoundedBuffer(self.output_limit)
        failure: list[BaseException] = []

        def pump() -> None:
            try:
                for stream_id, chunk in _frames(sock):
                    name, buf = ("stderr", err) if stream_id == 2 else ("stdout", out)
                    buf.write(chunk)
                    if output_log is not None:
                        output_log.feed(name, chunk)
            except BaseException as exc:  # surfaced below; the stream dies with the container
                failure.append(exc)

        started = time.monotonic()
        reader = threading.Thread(target=pump, name=f"exec-{sandbox.name}", daemon=True)
        reader.start()
        deadline = started + timeout
        stopped = None
        while reader.is_alive() and time.monotonic() < deadline:
            reader.join(min(0.5, max(0.0, deadline - time.monotonic())))
            if output_log is not None:
                output_log.tick()
            stopped = should_stop() if should_stop and reader.is_alive() else None
            if stopped:
                break
        cut = reader.is_alive()   # past the deadline, or stopped by the monitor
        probe = self._after_exec(container)
        _close_stream(sock)
        taken_down = False
        if cut:
            reader.join(1.0)
            if probe is None or probe.get("survivors") or reader.is_alive():
                taken_down = True   # the command would not die: take the whole sandbox down
                try:
                    _bounded(lambda: self.cleanup(sandbox), self.kill_grace / 2)
                except (_Overdue, SandboxError):
                    pass
        duration = time.monotonic() - started
        stdout, stderr = out.text(), err.text()
        killed = (probe or {}).get("killed", 0)
        if not taken_down:
            try:
                self._raise_if_limited(sandbox, container, probe, cut)
            except ResourceLimitExceeded as exc:
                exc.leftovers_killed = killed
                raise
        if isinstance(stopped, ResourceLimitExceeded):
            raise stopped
        if stopped:
            raise ResourceLimitExceeded("monitor", stopped)
        if cut:
            error = SandboxTimeout(argv, timeout, stdout, stderr)
            error.leftovers_killed = killed
            raise error
        try:
            exit_code = _bounded(lambda: api.exec_inspect(exec_id).get("ExitCode"), self.kill_grace)
        except (_Overdue, docker.errors.APIError, requests.exceptions.RequestException):
            exit_code = None
        if exit_code is None or failure:
            self._raise_if_gone(sandbox)
            exit_code = -1 if exit_code is None else exit_code
        if exit_code != 0:
            self._raise_if_gone(sandbox)
        return ExecResult(argv, exit_code, stdout, stderr, duration, out.truncated or err.truncated,
                          leftovers_killed=killed, output_bytes=out.total + err.total)

    def _after_exec(self, container) -> dict[str, int] | None:
        """Kill every process the command left; return the count and the cgroup event counters.

        Bounded by ``kill_grace``. None means the probe could not run (no pid
        left to start it, or no answer in time). ``survivors`` is set when
        processes were still respawning when the probe gave up.
        """
        try:
            res = _bounded(lambda: container.exec_run(
                ["python3", "-c", _AFTER_EXEC, str(_PROBE_SECONDS)], user=f"{SANDBOX_UID}:{SANDBOX_UID}"),
                self.kill_grace)
        except (_Overdue, docker.errors.APIError, requests.exceptions.RequestException):
            return None
        if res.exit_code != 0:
            return None
        counters: dict[str, int] = {}
        current = ""
        for line in res.output.decode(errors="replace").splitlines():
            if line.startswith("== killed "):
                counters["killed"] = int(line.split()[-1])
            elif line == "== survivors":
                counters["survivors"] = 1
            if line.startswith("== "):
                current = line[3:]
                continue
            key, _, value = line.partition(" ")
            if not value.strip().isdigit():
                continue
            if key == "oom_kill" and "memory" in current:
                counters["oom_kill"] = counters.get("oom_kill", 0) + int(value)
            elif key == "max" and "pids" in current:
                counters["pids_max"] = counters.get("pids_max", 0) + int(value)
        return counters

    def _raise_if_gone(self, sandbox: Sandbox) -> None:
        try:
            container = _bounded(lambda: self._container(sandbox), self.kill_grace)
        except _Overdue:
            raise ContainerGone(f"sandbox {sandbox.name} does not answer") from None
        state = container.attrs.get("State", {})
        if state.get("OOMKilled"):
            raise ResourceLimitExceeded("memory", f"sandbox {sandbox.name} was OOM-killed", 137)
        if not state.get("Running"):
            raise ContainerGone(f"sandbox {sandbox.name} stopped ({state.get('Status')}, exit {state.get('ExitCode')})")

    def _raise_if_limited(self, sandbox: Sandbox, container, probe: dict[str, int] | None, cut: bool) -> None:
        """Turn an OOM kill or pids exhaustion seen after a command into an error (every call bounded)."""
        try:
            _bounded(container.reload, self.kill_grace)
        except docker.errors.NotFound:
            if cut:
                return
            raise ContainerGone(f"sandbox {sandbox.name} was removed") from None
        except (_Overdue, docker.errors.APIError, requests.exceptions.RequestException):
            if cut:
                return
            raise ContainerGone(f"sandbox {sandbox.name} does not answer after the command") from None
        if container.attrs.get("State", {}).get("OOMKilled"):
            raise ResourceLimitExceeded("memory", f"sandbox {sandbox.name} was OOM-killed", 137)
        if container.status != "running":
            return
        limits = sandbox.spec.limits
        if probe is None:  # no probe could start: the container is going, or its pids are exhausted
            time.sleep(0.5)  # a removal from outside takes a moment to show
            try:
                def look():
                    container.reload()
                    stats = container.stats(stream=False, one_shot=True)
                    return container.status == "running", (stats.get("pids_stats") or {}).get("current", 0)
                running, pids = _bounded(look, self.kill_grace)
            except (_Overdue, docker.errors.NotFound, docker.errors.APIError, requests.exceptions.RequestException):
                running, pids = False, 0
            if not running:
                if cut:
                    return
                raise ContainerGone(f"sandbox {sandbox.name} stopped or was removed during the command")
            if pids < limits.pids - 2:
                if cut:
                    return
                raise ContainerGone(f"sandbox {sandbox.name} no longer runs commands ({pids} processes)")
            try:
                _bounded(container.kill, self.kill_grace)
            except (_Overdue, docker.errors.APIError, requests.exceptions.RequestException):
                raise ContainerGone(f"sandbox {sandbox.name} stopped during the command") from None
            raise ResourceLimitExceeded("pids", f"the {limits.pids}-process limit is exhausted; the sandbox was stopped")
        before = dict(sandbox.counters)
        sandbox.counters.update({k: v for k, v in probe.items() if k in ("oom_kill", "pids_max")})
        if probe.get("oom_kill", 0) > before.get("oom_kill", 0):
            raise ResourceLimitExceeded("memory", f"a process passed the {limits.memory_mb} MiB memory limit and was killed", 137)
        if probe.get("pids_max", 0) > before.get("pids_max", 0):
            raise ResourceLimitExceeded("pids", f"the {limits.pids}-process limit was reached")

    # -- observe ----------------------------------------------------------
    def is_running(self, sandbox: Sandbox) -> bool:
        try:
            return self._container(sandbox).status == "running"
        except ContainerGone:
            return False

    def stats(self, sandbox: Sandbox) -> SandboxStats:
        """Memory, CPU and process counts now (CPU since the previous sample): one engine call
        (asked every second of every step, so not preceded by an inspect of the container)."""
        try:
            raw = self.client.api.stats(sandbox.id, stream=False, one_shot=True)
        except docker.errors.NotFound:
            raise ContainerGone(f"sandbox {sandbox.name} no longer exists") from None
        except (docker.errors.APIError, requests.exceptions.RequestException, ValueError) as exc:
            raise SandboxError(f"stats of {sandbox.name} failed: {exc}") from None
        mem = raw.get("memory_stats", {})
        usage = mem.get("usage", 0) - (mem.get("stats", {}) or {}).get("inactive_file", 0)
        cpu = raw.get("cpu_stats", {})
        total = cpu.get("cpu_usage", {}).get("total_usage", 0)
        now = time.monotonic()
        prev = sandbox.counters.get("_cpu_total"), sandbox.counters.get("_cpu_at")
        percent = 0.0
        if prev[0] is not None and now > prev[1] / 1e9:
            percent = 100.0 * (total - prev[0]) / ((now - prev[1] / 1e9) * 1e9)
        sandbox.counters["_cpu_total"], sandbox.counters["_cpu_at"] = total, int(now * 1e9)
        pids = raw.get("pids_stats", {})
        return SandboxStats(
            memory_bytes=max(0, usage),
            memory_limit_bytes=mem.get("limit") or sandbox.spec.limits.memory_mb * 2**20,
            cpu_percent=max(0.0, percent),
            pids=pids.get("current", 0),
            pids_limit=pids.get("limit") or sandbox.spec.limits.pids,
        )

    def list(self, run_id: str | None = None, role: str | None = None, home: str | None = None,
             mcp_bound: bool = False) -> list[SandboxInfo]:
        """Managed containers, optionally only one run's (or one role's, one home's, or those of
        MCP servers bound to a run)."""
        labels = [f"{LABEL_MANAGED}=true"]
        if home:
            labels.append(f"{LABEL_HOME}={home}")
        if mcp_bound:
            labels.append(f"{LABEL_MCP_BOUND}=true")
        if run_id:
            labels.append(f"{LABEL_RUN}={run_id}")
        if role:
            labels.append(f"{LABEL_AGENT}={role}")
        try:
            found = self.client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)
        except requests.exceptions.ConnectionError as exc:
            raise EngineUnavailable(f"Docker engine unreachable: {exc}") from None
        return [_info(c) for c in found]

    def attach(self, sandbox_id: str) -> Sandbox:
        """A :class:`Sandbox` for a managed container another process created.

        The spec is rebuilt from the container (labels, mounts, limits, network);
        fields Docker does not keep (env, exec_timeout) take their defaults.
        """
        container = self._container(sandbox_id)
        attrs, labels = container.attrs, container.labels or {}
        if labels.get(LABEL_MANAGED) != "true":
            raise ContainerGone(f"{sandbox_id[:12]} is not an ultrawork sandbox")
        host = attrs.get("HostConfig") or {}
        workspace, mode, mounts = None, "ro", []
        for m in attrs.get("Mounts") or []:
            if m.get("Type") != "bind":
                continue
            if m.get("Destination") == WORKSPACE_TARGET:
                workspace, mode = Path(m["Source"]), "rw" if m.get("RW") else "ro"
            elif m.get("Destination") == AGENT_DIR:      # the engine's own /agent folder (its label names it)
                continue
            else:
                mounts.append(Mount(source=Path(m["Source"]), target=m["Destination"], read_only=not m.get("RW")))
        spec = SandboxSpec(
            image=(attrs.get("Config") or {}).get("Image", ""), role=labels.get(LABEL_AGENT, ""),
            run_id=labels.get(LABEL_RUN, ""), workspace=workspace, workspace_mode=mode, mounts=mounts,
            network=host.get("NetworkMode") or "none",
            limits=Limits(memory_mb=(host.get("Memory") or 0) // 2**20, cpus=(host.get("NanoCpus") or 0) / 1e9,
                          pids=host.get("PidsLimit") or 0),
        )
        return Sandbox(id=container.id, name=container.name, spec=spec, scratch=labels.get(LABEL_DISK, ""),
                       created_at=float(labels.get(LABEL_CREATED) or 0) or time.time())

    # -- remove -----------------------------------------------------------
    def cleanup(self, sandbox: Sandbox | str) -> bool:
        """Remove the container, its anonymous volumes and its /agent folder; True if something was removed."""
        cid = sandbox.id if isinstance(sandbox, Sandbox) else sandbox
        scratch = sandbox.scratch if isinstance(sandbox, Sandbox) else None
        if scratch is None:
            try:
                scratch = (self.client.api.inspect_container(cid).get("Config") or {}).get("Labels", {}).get(LABEL_DISK)
            except docker.errors.APIError:
                scratch = None      # gone already: the reaper releases a folder whose sandbox is gone
        try:
            self.client.api.remove_container(cid, v=True, force=True)
            return True
        except docker.errors.NotFound:   # removed from outside (without -v): its scratch volume stays
            for volume in sandbox.volumes if isinstance(sandbox, Sandbox) else []:
                try:
                    self.client.api.remove_volume(volume, force=True)
                except docker.errors.APIError:
                    pass
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "already in progress" in str(exc):
                return False
            scratch = None
            raise SandboxError(f"removing sandbox {cid[:12]} failed: {exc.explanation or exc}") from None
        finally:
            if scratch:
                disk.release_key(scratch)

    def reap(
        self,
        all: bool = False,
        older_than: float | None = None,
        is_active: Callable[[str], bool] | None = None,
    ) -> list[SandboxInfo]:
        """Remove this home's managed containers whose run is no longer active (or older than ``older_than`` s).

        A run is active while the process that created its container lives
        (and, when ``is_active`` is given, while it says the run is active).
        Containers of other homes are never touched, nor, even with ``all``, those
        of an MCP server bound to a run while that server lives.
        """
        removed, home = [], home_tag()
        kept = {i.id for i in self.list(home=home, mcp_bound=True) if owner_alive(i.owner)}
        for info in self.list(home=home):
            if info.id in kept:
                continue
            stale = all or (older_than is not None and info.age > older_than)
            if not stale and not owner_alive(info.owner):
                stale = is_active is None or not is_active(info.run_id)
            if stale and self.cleanup(info.id):
                removed.append(info)
        return removed

    def remove_run(self, run_id: str) -> list[SandboxInfo]:
        """Remove every sandbox of this home's run ``run_id`` at once (its driver is stopping)."""
        return [info for info in self.list(run_id=run_id, home=home_tag()) if self.cleanup(info.id)]

    def prune_volumes(self) -> list[str]:
        """Remove the scratch volumes of sandboxes that are gone: a container removed from
        outside without ``-v`` (``docker rm -f``) leaves its anonymous volume behind."""
        try:
            result = self.client.volumes.prune(filters={"label": [f"{LABEL_MANAGED}=true",
                                                                  f"{LABEL_HOME}={home_tag()}"]})
        except docker.errors.APIError as exc:
            if "already running" in str(exc.explanation or exc):   # another run's reaper is pruning them now
                return []
            raise SandboxError(f"removing leftover sandbox volumes failed: {exc.explanation or exc}") from None
        return list(result.get("VolumesDeleted") or [])


def _info(container) -> SandboxInfo:
    labels = container.labels or {}
    try:
        created = float(labels.get(LABEL_CREATED, "0"))
    except ValueError:
        created = 0.0
    return SandboxInfo(
        id=container.id,
        name=container.name,
        run_id=labels.get(LABEL_RUN, ""),
        role=labels.get(LABEL_AGENT, ""),
        status=container.status,
        image=(container.attrs.get("Config") or {}).get("Image", ""),
        created=created,
        owner=labels.get(LABEL_OWNER, ""),
        disk=labels.get(LABEL_DISK, ""),
    )



