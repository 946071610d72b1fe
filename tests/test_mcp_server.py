"""The MCP server over the real engine, driven by the SDK's own stdio client running ``ultrawork mcp``.

One unbound server session is shared by most tests (module scope); the
disconnect and bound-run tests start their own. Every test leaves no container.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal
from mcp import Client, StdioServerParameters

from conftest_git import make_repo

pytestmark = pytest.mark.docker

ULTRAWORK = Path(sys.executable).with_name("ultrawork")
TOOLS = {"create_sandbox", "deploy_agent_to_sandbox", "execute_in_sandbox", "cleanup_sandbox", "list_sandboxes"}


def server_env(home: Path, roots: Path) -> dict[str, str]:
    env = {"ULTRAWORK_HOME": str(home), "ULTRAWORK_WORKSPACE_ROOTS": str(roots)}
    for name in ("DOCKER_HOST", "PYTHONPATH"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


class McpClient:
    """An MCP session with ``ultrawork mcp`` (a subprocess), usable from synchronous tests."""

    def __init__(self, env: dict[str, str], *args: str):
        self._stack = ExitStack()
        self.portal = self._stack.enter_context(start_blocking_portal())
        params = StdioServerParameters(command=str(ULTRAWORK), args=["mcp", *args], env=env)
        self.client = self._stack.enter_context(
            self.portal.wrap_async_context_manager(Client(params, read_timeout_seconds=120)))

    def call(self, tool: str, **arguments):
        return self.portal.call(lambda: self.client.call_tool(tool, arguments))

    def ok(self, tool: str, **arguments) -> dict:
        result = self.call(tool, **arguments)
        assert not result.is_error, result.content[0].text
        return result.structured_content

    def error(self, tool: str, **arguments) -> str:
        result = self.call(tool, **arguments)
        assert result.is_error, result.structured_content
        return result.content[0].text

    def close(self) -> None:
        self._stack.close()


def containers(client, run: str) -> list:
    return client.containers.list(all=True, filters={"label": ["ultrawork.managed=true", f"ultrawork.run={run}"]},
                                  ignore_removed=True)   # one removed between the list and its inspect is gone


def remove_run(client, run: str) -> None:
    for c in containers(client, run):
        c.remove(force=True, v=True)


def wait_gone(client, run: str, within: float = 8.0) -> float:
    started = time.monotonic()
    while containers(client, run):
        assert time.monotonic() - started < within, f"containers of {run} still there after {within}s"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mcp-roots")
    (root / "ws").mkdir()
    (root / "ws" / "README.md").write_text("hello from the workspace\n")
    (root / "agent-src").mkdir()
    (root / "agent-src" / "main.py").write_text("print('deployed from a directory')\n")
    return root


@pytest.fixture(scope="module")
def mcp(docker_client, roots, tmp_path_factory):
    session = McpClient(server_env(tmp_path_factory.mktemp("mcp-home"), roots))
    run = session.ok("list_sandboxes")["run"]
    try:
        yield session
    finally:
        session.close()
        wait_gone(docker_client, run)


@pytest.fixture(scope="module")
def sandbox_id(mcp, roots) -> str:
    return mcp.ok("create_sandbox", role="explore", workspace=str(roots / "ws"))["sandbox_id"]


def test_list_tools_gives_the_five_tools_with_schemas(mcp):
    tools = {t.name: t for t in mcp.portal.call(mcp.client.list_tools).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 60
        assert tool.input_schema["type"] == "object" and tool.output_schema["type"] == "object"
    assert tools["create_sandbox"].input_schema["required"] == ["role"]
    assert set(tools["execute_in_sandbox"].input_schema["required"]) == {"sandbox_id", "argv"}
    assert tools["execute_in_sandbox"].input_schema["properties"]["argv"]["items"] == {"type": "string"}
    assert {"exit_code", "stdout", "stderr", "duration_s", "truncated"} <= set(
        tools["execute_in_sandbox"].output_schema["properties"])


def test_full_cycle(mcp, roots, docker_client):
    created = mcp.ok("create_sandbox", role="frontend", workspace=str(roots / "ws"))
    sid, run = created["sandbox_id"], created["run"]
    assert run.startswith("mcp-") and created["removed_on_disconnect"] is True
    assert created["workspace_mode"] == "ro" and created["network"] == "none"
    reader = "print(open('/agent/data.txt').read().strip(), open('/workspace/README.md').read().strip())\n"
    deployed = mcp.ok("deploy_agent_to_sandbox", sandbox_id=sid,
                      files={"bin/read.py": reader, "data.txt": "deployed data\n"}, entrypoint="bin/read.py")
    assert sorted(deployed["files"]) == ["bin/read.py", "data.txt"]
    assert deployed["entrypoint"] == "/agent/bin/read.py"
    mcp.ok("deploy_agent_to_sandbox", sandbox_id=sid, directory=str(roots / "agent-src"))
    done = mcp.ok("execute_in_sandbox", sandbox_id=sid, argv=["python3", deployed["entrypoint"]])
    assert (done["exit_code"], done["stdout"]) == (0, "deployed data hello from the workspace\n")
    assert done["plan_step"] is None and done["duration_s"] > 0
    other = mcp.ok("execute_in_sandbox", sandbox_id=sid, argv=["python3", "main.py"], workdir="/agent")
    assert other["stdout"] == "deployed from a directory\n"
    failing = mcp.ok("execute_in_sandbox", sandbox_id=sid, argv=["sh", "-c", "echo oops >&2; exit 3"])
    assert (failing["exit_code"], failing["stderr"]) == (3, "oops\n")
    listed = mcp.ok("list_sandboxes")["sandboxes"]
    assert [(s["sandbox_id"], s["this_session"], s["status"]) for s in listed if s["role"] == "frontend"] == [
        (sid, True, "running")]
    assert mcp.ok("cleanup_sandbox", sandbox_id=sid) == {"sandbox_id": sid, "removed": True}
    assert sid not in [s["sandbox_id"] for s in mcp.ok("list_sandboxes")["sandboxes"]]
    assert sid not in [c.id for c in containers(docker_client, run)]
    assert "no sandbox" in mcp.error("execute_in_sandbox", sandbox_id=sid, argv=["true"])


def test_bad_create_is_a_tool_error_and_creates_nothing(mcp, roots, docker_client, tmp_path):
    run = mcp.ok("list_sandboxes")["run"]
    before = {c.id for c in containers(docker_client, run)}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cases = [
        ({"network": "host"}, "network"),
        ({"limits": {"memory_mb": 1}}, "limits.memory_mb"),
        ({"limits": {"pids": 10 ** 6}}, "limits.pids"),
        ({"workspace": "/etc"}, "system directory"),
        ({"workspace": str(outside)}, "outside the workspace roots"),
        ({"workspace": "relative/path"}, "not an absolute path"),
        ({"role": "Not A Role!"}, "role"),
        ({"workspace_mode": "rwx"}, "workspace_mode"),
        ({"image": "no-such-image:0"}, "ImageMissing"),
    ]
    for extra, expected in cases:
        message = mcp.error("create_sandbox", **{"role": "explore", **extra})
        assert expected in message, (extra, message)
    assert {c.id for c in containers(docker_client, run)} == before
    assert mcp.ok("list_sandboxes")["run"] == run  # still serving


def test_bad_calls_are_tool_errors_and_the_session_goes_on(mcp, sandbox_id, roots):
    unknown = "0" * 64
    assert "no sandbox 000000000000 in this MCP session" in mcp.error("execute_in_sandbox", sandbox_id=unknown,
                                                                       argv=["true"])
    assert "not a sandbox id" in mcp.error("cleanup_sandbox", sandbox_id="../etc")
    assert "not a run id" in mcp.error("list_sandboxes", run="x,ultrawork.managed=true")
    assert "argv" in mcp.error("execute_in_sandbox", sandbox_id=sandbox_id, argv="ls -la")
    assert "argv" in mcp.error("execute_in_sandbox", sandbox_id=sandbox_id, argv=["ls", 1])
    assert "argv" in mcp.error("execute_in_sandbox", sandbox_id=sandbox_id, argv=[])
    denied = mcp.error("execute_in_sandbox", sandbox_id=sandbox_id, argv=["sh", "-c", "curl http://example.com"])
    assert "CommandDeniedError" in denied and "network access" in denied
    assert "timeout" in mcp.error("execute_in_sandbox", sandbox_id=sandbox_id, argv=["true"], timeout=10 ** 9)
    assert "files" in mcp.error("deploy_agent_to_sandbox", sandbox_id=sandbox_id)
    assert "entrypoint" in mcp.error("deploy_agent_to_sandbox", sandbox_id=sandbox_id, files={"a.py": ""},
                                     entrypoint="b.py")
    assert "entrypoint" in mcp.error("deploy_agent_to_sandbox", sandbox_id=sandbox_id,
                                     directory=str(roots / "agent-src"), entrypoint="../ws/README.md")
    assert "credential folder" in mcp.error("deploy_agent_to_sandbox", sandbox_id=sandbox_id,
                                            directory=str(roots / ".ssh"))
    assert "relative path" in mcp.error("deploy_agent_to_sandbox", sandbox_id=sandbox_id,
                                        files={"../escape.sh": "x"})
    started = time.monotonic()
    timed_out = mcp.error("execute_in_sandbox", sandbox_id=sandbox_id, argv=["sh", "-c", "echo started; sleep 30"],
                          timeout=1)
    assert "SandboxTimeout" in timed_out and "1s timeout" in timed_out and "started" in timed_out
    assert time.monotonic() - started < 10
    assert mcp.ok("execute_in_sandbox", sandbox_id=sandbox_id, argv=["echo", "still", "here"])["stdout"] == \
        "still here\n"


def test_oversize_output_is_bounded_with_a_marker(mcp, sandbox_id):
    big = mcp.ok("execute_in_sandbox", sandbox_id=sandbox_id,
                 argv=["python3", "-c", "import sys; sys.stdout.write('a' * 100000 + 'b' * 200000 + 'END')"])
    assert big["truncated"] is True and big["exit_code"] == 0
    assert "bytes truncated ...]" in big["stdout"] and len(big["stdout"]) < 70 * 1024
    assert big["stdout"].startswith("aaaa") and big["stdout"].endswith("bbbEND")


def test_a_sandbox_of_another_run_is_refused(mcp, docker_client, roots):
    from ultrawork.sandbox import SandboxEngine, SandboxPolicy, SandboxSpec

    engine = SandboxEngine(SandboxPolicy(workspace_roots=[roots]), client=docker_client)
    foreign = engine.create(SandboxSpec(role="explore", run_id="someone-else"))
    try:
        for tool, extra in (("execute_in_sandbox", {"argv": ["true"]}), ("cleanup_sandbox", {}),
                            ("deploy_agent_to_sandbox", {"files": {"x": "y"}})):
            assert "in this MCP session" in mcp.error(tool, sandbox_id=foreign.id, **extra)
        assert engine.is_running(foreign)
        refused = mcp.error("list_sandboxes", run="someone-else")
        assert "lists only the sandboxes it created" in refused and foreign.id not in refused
        assert foreign.id not in [s["sandbox_id"] for s in mcp.ok("list_sandboxes")["sandboxes"]]
    finally:
        engine.cleanup(foreign)


def test_attach_rebuilds_the_spec_of_a_running_sandbox(docker_client, roots):
    from ultrawork.sandbox import Limits, SandboxEngine, SandboxPolicy, SandboxSpec

    engine = SandboxEngine(SandboxPolicy(workspace_roots=[roots]), client=docker_client)
    spec = SandboxSpec(role="oracle", run_id="attach-test", workspace=roots / "ws", workspace_mode="rw",
                       limits=Limits(memory_mb=300, cpus=0.5, pids=64))
    made = engine.create(spec)
    try:
        again = engine.attach(made.id[:12])
        assert (again.id, again.name) == (made.id, made.name)
        assert again.spec.model_dump(include={"role", "run_id", "image", "workspace", "workspace_mode",
                                              "network", "limits"}) == spec.model_dump(
            include={"role", "run_id", "image", "workspace", "workspace_mode", "network", "limits"})
        assert engine.execute(again, ["cat", "/workspace/README.md"]).stdout == "hello from the workspace\n"
    finally:
        engine.cleanup(made)
    with pytest.raises(Exception, match="no longer exists"):
        engine.attach(made.id)


# -- disconnects -------------------------------------------------------------------------------
def test_closing_the_session_mid_command_removes_its_sandboxes(docker_client, roots, tmp_path):
    session = McpClient(server_env(tmp_path / "home", roots))
    sid = session.ok("create_sandbox", role="explore")["sandbox_id"]
    run = session.ok("list_sandboxes")["run"]
    session.portal.start_task_soon(
        lambda: session.client.call_tool("execute_in_sandbox", {"sandbox_id": sid, "argv": ["sleep", "60"]}))
    time.sleep(0.5)
    started = time.monotonic()
    try:
        session.close()  # stdin EOF while a command runs
    except BaseException:  # noqa: BLE001 - the in-flight call may fail as the session goes
        pass
    assert time.monotonic() - started < 4, "the server did not exit on stdin EOF"
    assert wait_gone(docker_client, run, within=3) < 3


def test_sigterm_to_the_server_removes_its_sandboxes(docker_client, roots, tmp_path):
    session = McpClient(server_env(tmp_path / "home", roots))
    run = session.ok("list_sandboxes")["run"]
    try:
        created = session.ok("create_sandbox", role="explore")
        session.ok("create_sandbox", role="oracle")
        owner = docker_client.containers.get(created["sandbox_id"]).labels["ultrawork.owner"]
        os.kill(int(owner.split(":")[1]), signal.SIGTERM)
        assert wait_gone(docker_client, run, within=5) < 5
    finally:
        try:
            session.close()
        except BaseException:  # noqa: BLE001 - the server is already gone
            pass
        remove_run(docker_client, run)


CLIENT_SCRIPT = textwrap.dedent("""
    import sys, time, anyio
    from mcp import Client, StdioServerParameters

    async def main():
        params = StdioServerParameters(command=sys.argv[1], args=["mcp"], env=dict(zip(sys.argv[2::2], sys.argv[3::2])))
        async with Client(params) as client:
            made = (await client.call_tool("create_sandbox", {"role": "explore"})).structured_content
            print(made["run"], made["sandbox_id"], flush=True)
            await anyio.sleep(600)

    anyio.run(main)
""")


def test_killing_the_client_removes_the_servers_sandboxes(docker_client, roots, tmp_path):
    env = server_env(tmp_path / "home", roots)
    pairs = [x for kv in env.items() for x in kv]
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(ULTRAWORK), *pairs],
                              stdout=subprocess.PIPE, text=True)
    run = ""
    try:
        run, sid = client.stdout.readline().split()
        server_pid = int(docker_client.containers.get(sid).labels["ultrawork.owner"].split(":")[1])
        client.kill()  # SIGKILL: the server only sees its stdin close
        client.wait(5)
        assert wait_gone(docker_client, run, within=5) < 5
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{server_pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{server_pid}"), "the server outlived its client"
    finally:
        client.kill()
        client.wait(5)
        if run:
            remove_run(docker_client, run)


# -- bound to a run ----------------------------------------------------------------------------
def test_bound_to_a_run_each_call_is_a_plan_step_and_sandboxes_stay_the_runs(docker_client, tmp_path, monkeypatch):
    from ultrawork.sandbox import SandboxEngine, SandboxPolicy, SandboxSpec
    from ultrawork.workspace import RunSuperproject
    from ultrawork.workspace.plan import PlanDocument

    home, roots = tmp_path / "home", tmp_path / "roots"
    roots.mkdir()
    monkeypatch.setenv("ULTRAWORK_HOME", str(home))
    run = RunSuperproject.create("mcp-run", make_repo(tmp_path / "target"), "Explore the app.\n")
    ws = run.add_agent("explore")
    run.add_agent("oracle")
    engine = SandboxEngine(SandboxPolicy(workspace_roots=[home / "runs"]), client=docker_client)
    foreign = engine.create(SandboxSpec(role="explore", run_id="other-run"))
    sibling = engine.create(SandboxSpec(role="oracle", run_id="mcp-run"))
    session = McpClient(server_env(home, roots), "--run", "mcp-run", "--role", "explore")
    try:
        created = session.ok("create_sandbox", role="explore")
        sid = created["sandbox_id"]
        assert created["run"] == "mcp-run" and created["workspace"] == str(ws.path.resolve())
        assert created["removed_on_disconnect"] is False
        assert "agent 'explore'" in session.error("create_sandbox", role="oracle")
        assert "outside agent 'explore'" in session.error("create_sandbox", role="explore",
                                                          workspace=str(run.path / "plans"))
        first = session.ok("execute_in_sandbox", sandbox_id=sid, argv=["cat", "README.md"])
        assert (first["exit_code"], first["stdout"], first["plan_step"]) == (0, "# target\n", 1)
        second = session.ok("execute_in_sandbox", sandbox_id=sid, argv=["sh", "-c", "exit 3"])
        assert (second["exit_code"], second["plan_step"]) == (3, 2)
        assert "CommandDeniedError" in session.error("execute_in_sandbox", sandbox_id=sid, argv=["git", "push"])
        assert "SandboxTimeout" in session.error("execute_in_sandbox", sandbox_id=sid, argv=["sleep", "30"],
                                                 timeout=1)
        assert "belongs to run 'other-run'" in session.error("execute_in_sandbox", sandbox_id=foreign.id,
                                                             argv=["true"])
        assert "belongs to agent 'oracle'" in session.error("execute_in_sandbox", sandbox_id=sibling.id,
                                                            argv=["true"])
        assert "bound to run 'mcp-run'" in session.error("list_sandboxes", run="other-run")
        listed = {s["sandbox_id"]: s["this_session"] for s in session.ok("list_sandboxes")["sandboxes"]}
        assert listed == {sid: True, sibling.id: False}

        summary = PlanDocument(ws.plan_path).summary()
        assert (summary.steps, summary.failed_steps, summary.last_exit_code) == (3, 2, -1)
        text = ws.plan.text()
        assert "`cat README.md`" in text and "`sh -c 'exit 3'`" in text and "`sleep 30`" in text
        assert "step refused before it ran" in text and "git push" in text
        assert "MCP session created sandbox" in text
        history = run.history()
        assert [h for h in history if h.startswith("explore: step ") and "(exit" in h] == [
            "explore: step 1 (exit 0)", "explore: step 2 (exit 3)", "explore: step 3 (exit -1)"]
        assert "explore: step refused" in history
        assert PlanDocument(run.path / "plans" / "oracle" / "Plan.md").summary().steps == 0
    finally:
        session.close()
        time.sleep(0.5)
        kept = containers(docker_client, "mcp-run")
        for sb in (foreign, sibling):
            engine.cleanup(sb)
        remove_run(docker_client, "mcp-run")
    assert created["sandbox_id"] in [c.id for c in kept], "a bound session's sandbox must stay the run's"
    assert all(c.labels["ultrawork.agent"] in ("explore", "oracle") for c in kept)


def test_role_without_run_and_unknown_run_fail_at_start(tmp_path):
    env = {**os.environ, "ULTRAWORK_HOME": str(tmp_path)}
    for args, expected in ((["--role", "explore"], "--role needs --run"), (["--run", "nope"], "no run 'nope'")):
        proc = subprocess.run([str(ULTRAWORK), "mcp", *args], env=env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 1 and expected in proc.stderr, proc.stderr
