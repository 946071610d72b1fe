"""ultrawork's MCP server, offered to an agent, never gives it more than its role; its connections are capped.

A read-only explore agent's sandbox reaches the real host-side server through
``/mcp/ultrawork.sock`` (the bridge a run starts for it) and asks, as a
prompt-injected agent would, for a writable workspace, the bridge network, more
memory and processes, another image. Then it opens 64 connections at once.
"""

from __future__ import annotations

import json
import os
import time

import pytest

pytestmark = pytest.mark.docker

CLIENT = r'''
import json, socket, sys
def call(sock, f, message):
    sock.sendall((json.dumps(message) + "\n").encode())
    if "id" in message:
        return json.loads(f.readline())
sock = socket.socket(socket.AF_UNIX); sock.connect("/mcp/ultrawork.sock"); f = sock.makefile("rb")
call(sock, f, dict(jsonrpc="2.0", id=1, method="initialize", params=dict(protocolVersion="2025-06-18",
     capabilities=dict(), clientInfo=dict(name="hostile", version="1"))))
call(sock, f, dict(jsonrpc="2.0", method="notifications/initialized"))
asks = dict(rw=dict(workspace_mode="rw"), bridge=dict(network="bridge"), host=dict(network="host"),
            memory=dict(limits=dict(memory_mb=8192)), pids=dict(limits=dict(pids=4096)),
            image=dict(image="busybox:latest"), own=dict())
out = {}
for i, (name, args) in enumerate(asks.items()):
    reply = call(sock, f, dict(jsonrpc="2.0", id=10 + i, method="tools/call",
                               params=dict(name="create_sandbox", arguments=dict(role="explore", **args))))
    result = reply.get("result", {})
    out[name] = dict(error=result.get("isError", "error" in reply),
                     text=" ".join(c.get("text", "") for c in result.get("content", [])),
                     made=result.get("structuredContent"))
print(json.dumps(out))
'''

FLOOD = r'''
import socket, time
held = []
for _ in range(64):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("/mcp/ultrawork.sock")
        held.append(s)
    except OSError:
        pass
time.sleep(6)
alive = 0
for s in held:
    s.setblocking(False)
    try:
        alive += s.recv(1) != b""
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print("connected", len(held), "still-open", alive, flush=True)
'''


@pytest.fixture
def explore_agent(engine, sandbox_root, monkeypatch, tmp_path, run_id):
    """A run whose read-only explore agent has its sandbox up, recorded as the flows record it,
    with ultrawork's MCP server offered at /mcp."""
    from conftest_git import make_repo
    from ultrawork.sandbox.access import agent_sandbox_spec, record_role_sandbox
    from ultrawork.sandbox.mcp_bridge import start_bridge, stop_bridges, with_mcp_mount
    from ultrawork.sandbox.spec import DEFAULT_IMAGE, Limits
    from ultrawork.workspace import RunSuperproject

    home = sandbox_root / "uwhome"                       # its runs lie in the engine's workspace roots
    (home / "runs").mkdir(parents=True)
    monkeypatch.setenv("ULTRAWORK_HOME", str(home))
    run = RunSuperproject.create(run_id, make_repo(tmp_path / "target"), "task\n")
    ws = run.add_agent("explore")
    bridge = start_bridge(run_id, "explore", home / "mcp" / run_id / "explore")
    spec = agent_sandbox_spec(ws, image=DEFAULT_IMAGE, workspace_mode="ro", network="none", limits=Limits(),
                              exec_timeout=120)
    record_role_sandbox(spec)
    sandbox = engine.create(with_mcp_mount(spec))
    try:
        yield engine, sandbox, bridge, ws
    finally:
        stop_bridges(run_id)
        for info in engine.list(run_id=run_id):
            engine.cleanup(info.id)


def test_a_read_only_role_is_refused_rw_other_networks_higher_limits_and_other_images(explore_agent, run_id):
    engine, sandbox, _, _ = explore_agent
    done = engine.execute(sandbox, ["python3", "-c", CLIENT], 120)
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    for ask, field in [("rw", "workspace_mode"), ("bridge", "network"), ("host", "network"),
                       ("memory", "limits.memory_mb"), ("pids", "limits.pids"), ("image", "image")]:
        assert out[ask]["error"], f"{ask} was served: {out[ask]}"
        assert f"beyond the role: {field}" in out[ask]["text"], out[ask]["text"]
    own = out["own"]["made"]
    assert not out["own"]["error"] and own["workspace_mode"] == "ro" and own["network"] == "none", out["own"]
    made = [i for i in engine.list(run_id=run_id) if i.id != sandbox.id]
    assert [i.id for i in made] == [own["sandbox_id"]]            # the refused asks created nothing
    attrs = engine.client.api.inspect_container(own["sandbox_id"])
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert attrs["HostConfig"]["Memory"] == 512 * 2**20 and attrs["HostConfig"]["PidsLimit"] == 256
    workspace = [m for m in attrs["Mounts"] if m["Destination"] == "/workspace"]
    assert workspace and workspace[0]["RW"] is False


def test_64_connections_from_one_sandbox_start_at_most_the_cap_of_host_servers(explore_agent):
    from ultrawork.sandbox.mcp_bridge import MAX_CONNECTIONS

    engine, sandbox, bridge, _ = explore_agent

    def rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as status:
                return next(int(line.split()[1]) << 10 for line in status if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return 0

    def host_memory() -> int:     # this process and every host-side server the bridge started
        return rss(os.getpid()) + sum(rss(pid) for pid in list(bridge.servers))

    rest = host_memory()
    peak_servers, peak_memory = 0, rest
    import threading

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(r=engine.execute(sandbox, ["python3", "-c", FLOOD], 60)))
    thread.start()
    while thread.is_alive():
        peak_servers = max(peak_servers, len(bridge.servers))
        peak_memory = max(peak_memory, host_memory())
        time.sleep(0.1)
    thread.join()
    words = box["r"].stdout.split()
    assert int(words[words.index("connected") + 1]) > MAX_CONNECTIONS, box["r"].stdout
    assert peak_servers <= MAX_CONNECTIONS and bridge.started <= MAX_CONNECTIONS, (peak_servers, bridge.started)
    assert int(words[words.index("still-open") + 1]) <= MAX_CONNECTIONS, box["r"].stdout
    assert bridge.refused >= 64 - MAX_CONNECTIONS - 8, bridge.refused     # (the listen backlog may still hold some)
    print(f"peak host-side servers {peak_servers}, host memory +{(peak_memory - rest) >> 20} MiB")
    assert peak_memory - rest < 300 * 2**20, f"host memory grew by {(peak_memory - rest) >> 20} MiB"
