"""Real coding agents in Prefect runs, their model reached only through the run's egress gateway.

The model provider is the only fake: the Anthropic stand-in of ``tests/model_standin.py``
serves TLS as ``api.anthropic.com`` (a certificate from a CA this test makes) in a
container on an internal network this test creates; the run's gateway is pointed at
that network and trusts that CA through the host settings a lab would use
(``ULTRAWORK_GATEWAY_UPSTREAM_*``). The real key is a host environment variable of
this process; the sandbox sees only a placeholder.

Claude Code is the CLI: its 2.1 line still ships as a Node script (no 400 MB native
binary), it honours ``ANTHROPIC_BASE_URL``, and the stand-in speaks its Messages API.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import secrets
import shutil
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, run_sisyphus, server_logs_since

from conftest import IN_CI

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

STANDIN = Path(__file__).with_name("model_standin.py")
TASK = 'Change greet() in app.py so that it returns "hello, world".'
FINAL_TEXT = "Done: greet() now returns hello, world."
SCRIPT = [  # the stand-in model's replies to Claude Code's turns, in order
    {"content": [{"type": "tool_use", "name": "Read", "input": {"file_path": "/agent/prompt.md"}}]},
    {"content": [{"type": "tool_use", "name": "Read", "input": {"file_path": "/workspace/app.py"}}]},
    {"content": [{"type": "tool_use", "name": "Edit", "input": {
        "file_path": "/workspace/app.py", "old_string": 'return "hello"', "new_string": 'return "hello, world"'}}]},
    {"content": [{"type": "text", "text": FINAL_TEXT}]},
]
TLS_STANDIN = r'''
import json, ssl, sys
sys.path.insert(0, "/standin")
import model_standin as m
server = m._Server(("0.0.0.0", 443), m.Script(json.load(open("/standin/script.json"))), m.Path("/records/requests.jsonl"))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/standin/server.pem", "/standin/server.key")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
'''
# What the explore agent runs: through the gateway to a host not on its allowlist, then straight at
# things it must not reach. Ports follow the rules: api.anthropic.com 8081, api.openai.com 8082.
PROBE = r'''
import json, socket, sys, threading, urllib.request, urllib.error
out = dict()
req = urllib.request.Request("http://gateway:8081/v1/messages", data=b"[]", method="POST",
                             headers=dict([("content-type", "application/json")]))
try:
    urllib.request.urlopen(req, timeout=20)
    out["off-allowlist"] = "allowed"
except urllib.error.HTTPError as exc:
    out["off-allowlist"] = [exc.code, exc.read().decode()[:300]]
except Exception as exc:
    out["off-allowlist"] = repr(exc)
peers = []
try:   # the oracle agent's sandbox addresses, written by the host just before this step
    peers = open("/plan/peer-addresses.txt").read().split()
except OSError:
    pass
out["peers"] = peers
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        out[target] = "connected"
    except OSError as exc:
        out[target] = type(exc).__name__
threads = [threading.Thread(target=probe, args=(t,))
           for t in sys.argv[1:] + [a + ":" + port for a in peers for port in ("22", "80", "443")]]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("PROBE " + json.dumps(out), flush=True)
'''
# (the commands are templates: no braces, they would be placeholders)
# An agent that calls its model once through the gateway and fails unless it got through.
CALL_MODEL = r'''
import json, os, sys, urllib.request
req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", method="POST",
                             data=json.dumps(dict(model="m", max_tokens=5, messages=[])).encode(),
                             headers=dict([("content-type", "application/json"),
                                           ("x-api-key", os.environ["ANTHROPIC_API_KEY"])]))
try:
    with urllib.request.urlopen(req, timeout=20) as resp:
        print("model answered", resp.status, flush=True)
except Exception as exc:
    print("model unreachable:", repr(exc), flush=True)
    sys.exit(1)
'''
CAPTURE_ENV = "UW_E2E_CAPTURE"


# -- user hooks the runs below load by dotted path (host side) ----------------------------------
def capture_sandbox(ctx) -> None:
    """after_step: what anyone could read of the agent's sandbox while it still runs."""
    import docker

    folder = Path(os.environ[CAPTURE_ENV])
    ws = ctx.workspace
    client = docker.from_env()
    for container in client.containers.list(filters={"label": [f"ultrawork.run={ws.run.run_id}",
                                                                 f"ultrawork.agent={ws.role}"]}):
        (folder / f"{ws.role}-inspect.json").write_text(json.dumps(client.api.inspect_container(container.id)))
        env = container.exec_run(["sh", "-c", "env; tr '\\0' '\\n' < /proc/1/environ"]).output
        (folder / f"{ws.role}-env.txt").write_bytes(env)
        files = container.exec_run(["tar", "-cf", "-", "/home", "/tmp", "/workspace", "/agent", "/plan"],
                                   stderr=False).output
        (folder / f"{ws.role}-files.tar").write_bytes(files)


def note_peer(ctx) -> None:
    """before_step of explore: the running oracle sandbox's addresses, for explore's probe to try
    (the research agents run side by side; the writer starts after them)."""
    import docker

    ws = ctx.workspace
    if ws.role != "explore":
        return
    client = docker.from_env()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for container in client.containers.list(filters={"label": [f"ultrawork.run={ws.run.run_id}",
                                                                     "ultrawork.agent=oracle"]}):
            networks = container.attrs["NetworkSettings"]["Networks"]
            addresses = [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]
            if addresses:
                (ws.plan_path.parent / "peer-addresses.txt").write_text("\n".join(addresses) + "\n")
                return
        time.sleep(0.2)


def kill_gateway_once(ctx) -> None:
    """before_step: the run's gateway dies just before the agent's first step."""
    import docker

    flag = Path(os.environ[CAPTURE_ENV]) / "gateway-killed"
    if flag.exists():
        return
    client = docker.from_env()
    for container in client.containers.list(filters={"label": [f"ultrawork.run={ctx.workspace.run.run_id}",
                                                                 "ultrawork.agent=gateway"]}):
        container.kill()
        flag.write_text(container.id)


# -- the lab: a TLS stand-in as api.anthropic.com on an internal network ------------------------
def _make_certs(folder: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ultrawork e2e upstream CA")])
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.anthropic.com")]),
                                    issuer_name=ca_name, public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("api.anthropic.com")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def model_lab(docker_client, tmp_path_factory, request):
    """The stand-in as api.anthropic.com, playing the test module's MODEL_SCRIPT (this module's SCRIPT)."""
    from ultrawork.gateway import build_gateway_image
    from ultrawork.sandbox.agent_image import build_agent_image

    if not shutil.which("npm"):
        if IN_CI:
            pytest.fail("CI=true and no npm: agent images install their CLI with the machine's npm")
        pytest.skip("no npm on this machine")
    images = {cli: build_agent_image(cli, say=lambda line: None).tag for cli in ("claude-code", "codex")}
    build_gateway_image()
    tag = uuid.uuid4().hex[:8]
    folder = tmp_path_factory.mktemp("e2e-model")
    (folder / "standin").mkdir()
    (folder / "records").mkdir()
    os.chmod(folder / "records", 0o777)
    ca_pem = _make_certs(folder / "standin")
    shutil.copy(STANDIN, folder / "standin" / "model_standin.py")
    (folder / "standin" / "tls_standin.py").write_text(TLS_STANDIN)
    (folder / "standin" / "script.json").write_text(json.dumps(getattr(request.module, "MODEL_SCRIPT", SCRIPT)))
    (folder / "ca.pem").write_text(ca_pem)
    for path in (folder / "standin").iterdir():
        path.chmod(0o644)
    network = docker_client.networks.create(f"uw-e2e-{tag}-up", driver="bridge", internal=True,
                                            labels={"ultrawork.test": tag})
    api = docker_client.api
    standin = None
    try:
        created = api.create_container(
            "ultrawork-sandbox:0.1.0", ["python3", "/standin/tls_standin.py"], user="1000:1000",
            labels={"ultrawork.test": tag},
            host_config=api.create_host_config(
                binds={str(folder / "standin"): {"bind": "/standin", "mode": "ro"},
                       str(folder / "records"): {"bind": "/records", "mode": "rw"}},
                read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], pids_limit=64,
                mem_limit="128m", network_mode=network.name, init=True),
            networking_config=api.create_networking_config(
                {network.name: api.create_endpoint_config(aliases=["api.anthropic.com"])}))
        standin = docker_client.containers.get(created["Id"])
        standin.start()
        deadline = time.monotonic() + 30
        while b"listening" not in standin.logs():
            assert time.monotonic() < deadline, standin.logs()
            time.sleep(0.2)
        standin.reload()
        network.reload()
        yield {"network": network.name, "subnet": network.attrs["IPAM"]["Config"][0]["Subnet"],
               "standin_ip": standin.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"],
               "ca_file": folder / "ca.pem", "records": folder / "records" / "requests.jsonl", "images": images}
    finally:
        if standin is not None:
            standin.remove(force=True)
        network.remove()


@pytest.fixture
def lab_env(model_lab, monkeypatch, tmp_path):
    """The host side of a run: the real keys in this process's environment, the lab's upstream."""
    keys = {"ANTHROPIC_API_KEY": f"sk-ant-real-{secrets.token_hex(16)}", "OPENAI_API_KEY": f"sk-real-{secrets.token_hex(16)}"}
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ULTRAWORK_GATEWAY_UPSTREAM_NETWORK", model_lab["network"])
    monkeypatch.setenv("ULTRAWORK_GATEWAY_UPSTREAM_CA", str(model_lab["ca_file"]))
    monkeypatch.setenv("ULTRAWORK_GATEWAY_ALLOWED_PRIVATE", model_lab["subnet"])
    capture = tmp_path / "capture"
    capture.mkdir()
    monkeypatch.setenv(CAPTURE_ENV, str(capture))
    return {"keys": keys, "capture": capture}


def _records(model_lab, since: int) -> list[dict]:
    lines = model_lab["records"].read_text().splitlines() if model_lab["records"].exists() else []
    return [json.loads(line) for line in lines[since:]]


def _record_count(model_lab) -> int:
    return len(_records(model_lab, 0))


def _logs_since(started: float) -> list[str]:
    return server_logs_since(started)


def _artifacts_text(run_id: str) -> str:
    from prefect.client.orchestration import get_client

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:   # by key: the session's server holds many artifacts
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=run_id.lower())),
                                      limit=200)
    return "\n".join(json.dumps({"key": a.key, "data": a.data, "description": a.description}, default=str)
                     for a in found)


def _leftovers(docker_client, run_id: str) -> list[str]:
    label = {"label": f"ultrawork.run={run_id}"}
    return ([c.name for c in docker_client.containers.list(all=True, filters=label)]
            + [n.name for n in docker_client.networks.list(filters=label)])


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


# -- the runs --------------------------------------------------------------------------------
def test_claude_code_edits_through_the_gateway_and_the_key_stays_on_the_host(
        prefect_api, uw_home, tmp_path, docker_client, model_lab, lab_env):
    from test_gateway import HostListeners
    from ultrawork.gateway.host import host_addresses

    repo = make_target_repo(tmp_path / "greeter", {"app.py": 'def greet():\n    return "hello"\n'})
    run_id = f"e2e-{uuid.uuid4().hex[:6]}"
    listeners = HostListeners()
    targets = [f"{model_lab['standin_ip']}:443", "api.anthropic.com:443", "169.254.169.254:80"]
    targets += [f"{address}:{port}" for address in host_addresses() if ":" not in address
                for port in (listeners.loopback_port, listeners.any_port)]
    seen = _record_count(model_lab)
    started = time.time()
    try:
        result = run_sisyphus({
            "task": TASK, "repo": str(repo), "agents": ["explore", "oracle", "frontend"], "run_id": run_id,
            "agent_profiles": {"frontend": "claude-code", "explore": "codex", "oracle": "claude-code"},
            "agent_commands": {"explore": ["python3", "-c", PROBE, *targets], "oracle": ["sleep", "15"]},
            "hooks": [{"target": "test_agents_e2e:capture_sandbox", "point": "after_step"},
                      {"target": "test_agents_e2e:note_peer", "point": "before_step"}],
            "review_timeout": 3})
    finally:
        listeners.close()
    keys = lab_env["keys"]
    outcomes = {o.role: o for o in result.agents}
    frontend, explore = outcomes["frontend"], outcomes["explore"]
    assert frontend.status == "succeeded", (frontend.errors, Path(frontend.plan_path).read_text()[-3000:])
    assert explore.status == "succeeded", explore.errors
    assert outcomes["oracle"].status == "succeeded", outcomes["oracle"].errors

    # the edit is committed on the agent's branch in the target repository
    assert git(repo, "show", f"ultrawork/{run_id}/frontend:app.py") == 'def greet():\n    return "hello, world"'
    assert frontend.commits

    # the model got the real key from the gateway on every call; the CLI sent only a placeholder
    calls = [r for r in _records(model_lab, seen) if r["path"].split("?")[0] == "/v1/messages"]
    turns = [r for r in calls if r["body"].get("tools")]
    assert len(turns) == len(SCRIPT)
    assert {r["headers"].get("x-api-key") for r in calls} == {keys["ANTHROPIC_API_KEY"]}

    # the explore agent: a host off its allowlist is refused; nothing else is reachable
    logs = _logs_since(started)
    probe = json.loads(next(m.split("PROBE ", 1)[1] for m in logs if "PROBE {" in m))
    assert probe.pop("off-allowlist")[0] == 403
    peers = probe.pop("peers")
    assert peers, "the oracle sandbox was running while explore probed"
    assert all(outcome != "connected" for outcome in probe.values()), probe
    # another agent's sandbox has no route at all: not even a refused connection
    peer_outcomes = {t: o for t, o in probe.items() if t.rsplit(":", 1)[0] in peers}
    assert len(peer_outcomes) == 3 * len(peers)
    assert "ConnectionRefusedError" not in peer_outcomes.values(), peer_outcomes
    assert listeners.hits == []
    assert any("[explore egress] refused POST api.anthropic.com/v1/messages -> 403" in m for m in logs), logs
    assert any("[frontend egress] allowed POST api.anthropic.com/v1/messages" in m for m in logs)

    # the egress summary is in each Plan.md and in the egress artifact
    plan = Path(frontend.plan_path).read_text()
    assert "egress: " in plan and "api.anthropic.com: " in plan and " allowed" in plan
    assert "1 refused" in Path(explore.plan_path).read_text()
    artifacts = _artifacts_text(run_id)
    assert f"egress-{run_id}".lower() in artifacts
    # ... and in each outcome, so the review form's sentence and the results table show it
    assert frontend.egress and "allowed" in frontend.egress and "api.anthropic.com" in frontend.egress
    assert explore.egress and "1 refused" in explore.egress
    from ultrawork.flows.review import agent_facts
    assert "Egress: " in agent_facts(explore) and "1 refused" in agent_facts(explore)

    # the key is nowhere: docker inspect, the sandbox's environment and files, logs, artifacts,
    # Plan.md, the run's home (rules folder gone), the target repository
    capture = lab_env["capture"]
    inspected = json.loads((capture / "frontend-inspect.json").read_text())
    assert "ultrawork-placeholder" in json.dumps(inspected["Config"]["Env"])
    env_text = (capture / "frontend-env.txt").read_bytes()
    assert b"ANTHROPIC_BASE_URL=http://gateway:" in env_text
    with tarfile.open(fileobj=io.BytesIO((capture / "frontend-files.tar").read_bytes())) as tar:
        names = tar.getnames()
        contents = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
    assert any(n.endswith("workspace/app.py") for n in names)
    for key in keys.values():
        secret = key.encode()
        assert secret not in (capture / "frontend-inspect.json").read_bytes()
        assert secret not in (capture / "explore-inspect.json").read_bytes()
        assert secret not in env_text and secret not in contents
        assert not any(key in m for m in logs)
        assert key not in artifacts
        assert key not in plan
        assert _files_holding(uw_home, secret) == []
        assert secret not in git(repo, "log", "-p", "--all").encode()
    assert not list((uw_home / "gateway" / "runs").iterdir())
    assert _leftovers(docker_client, run_id) == []


def test_a_gateway_killed_before_a_step_is_restarted_and_the_step_retried(
        prefect_api, uw_home, tmp_path, docker_client, model_lab, lab_env):
    """The agent-profiles block selects Claude Code with its key in a Prefect Secret block."""
    from prefect.blocks.system import Secret

    from ultrawork.agents.profiles import CLI_EGRESS
    from ultrawork.blocks import AgentProfiles, RoleSettings

    repo = make_target_repo(tmp_path / "greeter", {"app.py": 'def greet():\n    return "hello"\n'})
    run_id = f"e2k-{uuid.uuid4().hex[:6]}"
    block_key = f"sk-ant-block-{secrets.token_hex(16)}"
    secret_name = f"e2e-key-{uuid.uuid4().hex[:6]}"
    Secret(value=block_key).save(secret_name, overwrite=True)
    egress = CLI_EGRESS["claude-code"].model_copy(deep=True)
    egress.credentials[0].secret = f"prefect-secret:{secret_name}"
    AgentProfiles(explore=RoleSettings(profile="claude-code", egress=egress)).save("default", overwrite=True)
    seen = _record_count(model_lab)
    try:
        result = run_sisyphus({
            "task": "Map the code", "repo": str(repo), "agents": ["explore"], "run_id": run_id,
            "agent_commands": {"explore": ["python3", "-c", CALL_MODEL]},
            "hooks": [{"target": "test_agents_e2e:kill_gateway_once", "point": "before_step"}],
            "review_timeout": 2})
    finally:
        _delete_block("default")
        _delete_block(secret_name, "secret")
    explore = result.agents[0]
    assert (lab_env["capture"] / "gateway-killed").exists(), "the hook killed the gateway"
    assert explore.status == "succeeded", explore.errors
    assert any("GatewayError: restart the egress gateway, then retry" in r for r in explore.recoveries), explore.recoveries
    assert any("egress gateway was not serving" in r for r in explore.recoveries)
    plan = Path(explore.plan_path).read_text()
    assert "GatewayError" in plan and "restarted it" in plan
    calls = _records(model_lab, seen)
    assert [r["headers"].get("x-api-key") for r in calls] == [block_key]     # the Secret block's, not $ANTHROPIC_API_KEY
    assert block_key not in plan and _files_holding(uw_home, block_key.encode()) == []
    assert _leftovers(docker_client, run_id) == []
    assert not list((uw_home / "gateway" / "runs").iterdir())


def test_a_credential_for_a_host_off_the_allowlist_is_refused_before_the_run_starts(
        prefect_api, uw_home, tmp_path, docker_client, lab_env, monkeypatch):
    import asyncio

    from ultrawork.blocks import AgentProfiles, RoleSettings
    from ultrawork.flows.sisyphus import sisyphus
    from ultrawork.gateway import AgentProfile as EgressProfile, Credential, CredentialHostNotAllowed, HostRule, Route

    repo = make_target_repo(tmp_path / "greeter", {"app.py": 'def greet():\n    return "hello"\n'})
    leaky = EgressProfile(
        allow=[HostRule(host="api.anthropic.com", methods=["POST"])],
        credentials=[Credential(match="collector.example.org", header="x-api-key", format="{secret}",
                                secret="env:ANTHROPIC_API_KEY")],
        routes=[Route(upstream="https://api.anthropic.com", base_url_env="ANTHROPIC_BASE_URL")])
    block_name = "default"
    AgentProfiles(frontend=RoleSettings(profile="claude-code", egress=leaky)).save(block_name, overwrite=True)
    run_id = f"e2c-{uuid.uuid4().hex[:6]}"
    try:
        with pytest.raises(CredentialHostNotAllowed, match="collector.example.org is not on this agent's allowlist"):
            asyncio.run(sisyphus(task=TASK, repo=str(repo), agents=["frontend"], run_id=run_id))
        # a secret missing on the host is refused by name too, before anything starts
        monkeypatch.delenv("OPENAI_API_KEY")
        from ultrawork.gateway import SecretUnavailable
        AgentProfiles(frontend=RoleSettings(profile="codex")).save(block_name, overwrite=True)
        with pytest.raises(SecretUnavailable, match="OPENAI_API_KEY"):
            asyncio.run(sisyphus(task=TASK, repo=str(repo), agents=["frontend"], run_id=run_id))
    finally:
        _delete_block(block_name)
    assert not (uw_home / "runs").exists() or list((uw_home / "runs").iterdir()) == []
    assert git(repo, "branch", "--list", "ultrawork/*") == ""
    assert _leftovers(docker_client, run_id) == []


def _delete_block(name: str, block_type_slug: str = "ultrawork-agent-profiles") -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, block_type_slug=block_type_slug)
        except Exception:  # noqa: BLE001 - already gone
            return
        client.delete_block_document(document.id)


# What a step that calls its model once and then keeps working runs (no braces: a command template).
CALL_THEN_WORK = r'''
import os, time, urllib.request
try:
    urllib.request.urlopen(os.environ["ANTHROPIC_BASE_URL"] + "/v1/models", timeout=20).read()
except Exception as exc:
    print("model list:", repr(exc), flush=True)
time.sleep(8)
'''


def test_a_steps_requests_reach_the_runs_log_while_the_step_still_runs(
        prefect_api, uw_home, tmp_path, docker_client, model_lab, lab_env):
    """The step's request is in the run's Prefect log about a second after it was made, while the
    step still has seconds of work left: the record is read as it grows, not after the step."""
    import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    repo = make_target_repo(tmp_path / "greeter", {"app.py": 'def greet():\n    return "hello"\n'})
    run_id = f"e2l-{uuid.uuid4().hex[:6]}"
    started = time.time()
    result = run_sisyphus({"task": TASK, "repo": str(repo), "agents": ["explore"], "run_id": run_id,
                           "agent_profiles": {"explore": "claude-code"},
                           "agent_commands": {"explore": ["python3", "-c", CALL_THEN_WORK]}, "review_timeout": 3})
    assert result.agents[0].status == "succeeded", result.agents[0].errors
    after = datetime.datetime.fromtimestamp(started - 1, tz=datetime.timezone.utc)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=after)), limit=200)
    [line] = [log for log in logs if "[explore egress]" in log.message and "/v1/models" in log.message]
    made = datetime.datetime.strptime(line.message.rsplit(" at ", 1)[1][:12], "%H:%M:%S.%f").time()
    made_at = datetime.datetime.combine(line.timestamp.date(), made, tzinfo=datetime.timezone.utc)
    delay = (line.timestamp - made_at).total_seconds()
    assert 0 <= delay < 2.0, (line.message, line.timestamp)      # the step sleeps 8 s after the request
