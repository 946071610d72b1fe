"""ultrawork's MCP server for one agent of a run, offered to the CLI inside its sandbox.

The server runs on the host (it drives the Docker engine, which no sandbox may
reach), bound to the agent's run and role (``mcp_server.serve(run, role)``). The
sandbox reaches it through a Unix socket in a folder mounted read-only at
``/mcp``, next to a stdlib relay (``/mcp/relay.py``: stdin/stdout <-> the socket)
and the client configuration (``/mcp/mcp.json``, Claude Code's ``--mcp-config``
format). Each connection gets its own server process; no network is involved.

A server that exits while its client is still connected died mid-step:
:meth:`McpBridge.take_failure` reports it once, the step fails with ``McpError``
and the recovery table restarts the server (any left running is killed; the
retried step's client connects to a fresh one) before retrying the step.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

logger = logging.getLogger("ultrawork")

MCP_TARGET = "/mcp"
SOCKET_NAME = "ultrawork.sock"
SERVER_NAME = "ultrawork"

RELAY = r'''"""stdin/stdout <-> the Unix socket of ultrawork's MCP server (an MCP client's stdio command)."""
import os, socket, sys, threading
conn = socket.socket(socket.AF_UNIX)
conn.connect(sys.argv[1])
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = conn.recv(65536)
    if not data:
        break
    os.write(1, data)
'''

MAX_CONNECTIONS = 3                 # host-side servers one agent may hold at once (~75 MB each); more are refused
SERVER_MEMORY = 3 << 29             # address space of one host-side server (RLIMIT_AS, 1.5 GiB; it uses ~75 MB)
SERVER_SECONDS = 3600.0             # lifetime of one host-side server: killed after it

_SERVE = "import sys\nfrom ultrawork.sandbox.mcp_server import serve\nserve(sys.argv[1], sys.argv[2])\n"


def client_config() -> dict:
    """The MCP client configuration the sandbox sees (stdio command: the relay)."""
    return {"mcpServers": {SERVER_NAME: {"type": "stdio", "command": "python3",
                                         "args": [f"{MCP_TARGET}/relay.py", f"{MCP_TARGET}/{SOCKET_NAME}"]}}}


class McpBridge:
    """The host end: a Unix socket that starts a bound MCP server per connection and relays to it."""

    def __init__(self, run_id: str, role: str, folder: Path, argv: list[str] | None = None,
                 max_connections: int = MAX_CONNECTIONS):
        self.run_id, self.role, self.folder = run_id, role, folder
        self.max_connections = max_connections
        self.active = 0                                     # connections being served
        self.refused = 0                                    # connections refused over the cap
        self.argv = argv or [sys.executable, "-c", _SERVE, run_id, role]
        self.servers: dict[int, subprocess.Popen] = {}     # pid -> running server
        self.failures: list[str] = []
        self.started = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "McpBridge":
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)
        (self.folder / "relay.py").write_text(RELAY)
        (self.folder / "mcp.json").write_text(json.dumps(client_config(), indent=2))
        for name in ("relay.py", "mcp.json"):
            os.chmod(self.folder / name, 0o644)
        path = self.folder / SOCKET_NAME
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        folder_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:   # through the folder's descriptor: a socket path may not exceed 107 bytes
            listener.bind(f"/proc/self/fd/{folder_fd}/{SOCKET_NAME}")
        finally:
            os.close(folder_fd)
        os.chmod(path, 0o666)          # the sandbox user connects; the folder itself stays read-only to it
        listener.listen(8)
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True, name=f"mcp-bridge-{self.role}").start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.kill_servers()
        shutil.rmtree(self.folder, ignore_errors=True)

    def kill_servers(self) -> int:
        with self._lock:
            running = list(self.servers.values())
        for proc in running:
            if proc.poll() is None:
                proc.kill()
        return len(running)

    def take_failure(self) -> str | None:
        """Why a server died while its client was connected, since the last call (once), or None."""
        with self._lock:
            if not self.failures:
                return None
            why, self.failures = "; ".join(self.failures), []
        return why

    def restart(self) -> None:
        """Kill what is left of the old servers: the next connection starts a fresh one."""
        self.kill_servers()

    # -- relaying -------------------------------------------------------------
    def _accept(self) -> None:
        while self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                over = self.active >= self.max_connections
                if over:
                    self.refused += 1
                else:
                    self.active += 1
                refused = self.refused
            if over:             # a flood: refused, never served (and said once per power of two)
                conn.close()
                if refused & (refused - 1) == 0:
                    logger.warning("%s: MCP connection refused: %d are open, the cap is %d (%d refused so far)",
                                   self.role, self.max_connections, self.max_connections, refused)
                continue
            threading.Thread(target=self._serve_counted, args=(conn,), daemon=True).start()

    def _serve_counted(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        finally:
            with self._lock:
                self.active -= 1

    def _serve(self, conn: socket.socket) -> None:
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:                 # bounded in memory and in time, whatever its client asks of it
            resource.prlimit(proc.pid, resource.RLIMIT_AS, (SERVER_MEMORY, SERVER_MEMORY))
        except (OSError, ValueError):
            pass
        timer = threading.Timer(SERVER_SECONDS, lambda: proc.poll() is None and proc.kill())
        timer.daemon = True
        timer.start()
        with self._lock:
            self.servers[proc.pid] = proc
            self.started += 1
        client_gone = threading.Event()

        def upstream() -> None:      # the client's requests -> the server's stdin
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    proc.stdin.write(data)
                    proc.stdin.flush()
            except OSError:
                pass
            client_gone.set()
            try:
                proc.stdin.close()   # EOF: the server ends its session cleanly
            except OSError:
                pass

        threading.Thread(target=upstream, daemon=True).start()
        try:
            while True:
                data = proc.stdout.read1(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        code = proc.wait()
        timer.cancel()
        if not client_gone.wait(0.5):   # the server went while its client was still there
            with self._lock:
                self.failures.append(f"the MCP server of {self.role} exited ({code}) while its client was connected")
        with self._lock:
            self.servers.pop(proc.pid, None)
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()


# -- one process's bridges, by run and role ------------------------------------------
_LOCK = threading.Lock()
_BRIDGES: dict[tuple[str, str], McpBridge] = {}


def start_bridge(run_id: str, role: str, folder: Path, argv: list[str] | None = None) -> McpBridge:
    bridge = McpBridge(run_id, role, folder, argv).start()
    with _LOCK:
        _BRIDGES[(run_id, role)] = bridge
    return bridge


def bridge_for(run_id: str, role: str) -> McpBridge | None:
    with _LOCK:
        return _BRIDGES.get((run_id, role))


def stop_bridges(run_id: str) -> int:
    with _LOCK:
        mine = [key for key in _BRIDGES if key[0] == run_id]
        bridges = [_BRIDGES.pop(key) for key in mine]
    for bridge in bridges:
        bridge.stop()
    return len(bridges)


def with_mcp_mount(spec):
    """``spec`` with its agent's MCP folder mounted read-only at /mcp, when the run offers one."""
    from .spec import Mount

    bridge = bridge_for(spec.run_id, spec.role)
    if bridge is None or any(m.target == MCP_TARGET for m in spec.mounts):
        return spec
    return spec.model_copy(update={"mounts": [*spec.mounts, Mount(source=bridge.folder, target=MCP_TARGET)]})


def check_mcp(spec) -> None:
    """Raise ``McpError`` when the agent's MCP server died during the step (restarting it first)."""
    from .errors import McpError

    bridge = bridge_for(spec.run_id, spec.role)
    why = bridge.take_failure() if bridge is not None else None
    if why:
        bridge.restart()
        raise McpError(f"{why}; restarted it")
