"""OpenCode and Codex, the real binaries of their agent images, finishing a scripted edit through the gateway.

Like Claude Code's run in ``test_agents_e2e.py``, the model provider is the only fake:
a TLS stand-in of the provider's API (``api.anthropic.com`` for OpenCode's Anthropic
provider, ``api.openai.com`` for Codex's Responses API) on an internal network this
test creates, behind a real gateway that trusts the test's CA. The sandbox has the
gateway's base URL and a placeholder key; the stand-in must see the real key, the
sandbox never.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import time
import uuid
from pathlib import Path

import pytest

from conftest import IN_CI

pytestmark = pytest.mark.docker

HERE = Path(__file__).parent
TASK = 'Change greet() in app.py so that it returns "hello, world".'
FINAL_TEXT = "Done: greet() now returns hello, world."
TLS_STANDIN = r'''
import json, ssl, sys
sys.path.insert(0, "/standin")
import importlib
m = importlib.import_module(sys.argv[1])
server = m._Server(("0.0.0.0", 443), m.Script(json.load(open("/standin/script.json"))), m.Path("/records/requests.jsonl"))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/standin/server.pem", "/standin/server.key")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
'''


def _make_certs(folder: Path, name: str) -> str:
    """A CA and a server certificate for ``name``; the CA's PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ultrawork CLI test upstream CA")])
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
                                    issuer_name=ca_name, public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode()


def run_cli_through_gateway(docker_client, tmp_path: Path, cli: str, host: str, standin_module: str,
                            script: list[dict], key_env: str, timeout: float = 300) -> dict:
    """``cli`` as the frontend agent (its named profile) against a stand-in of ``host``; what happened."""
    from ultrawork.agents.profiles import named_profile
    from ultrawork.gateway import EgressGateway
    from ultrawork.gateway.run import egress_rules
    from ultrawork.sandbox import SandboxEngine, SandboxPolicy, SandboxSpec
    from ultrawork.sandbox.agent_image import build_agent_image
    from ultrawork.sandbox.errors import SandboxTimeout

    if not shutil.which("npm"):
        if IN_CI:
            pytest.fail("CI=true and no npm: agent images install their CLI with the machine's npm")
        pytest.skip("no npm on this machine")
    build_agent_image(cli, say=lambda line: None)
    tag = f"tcli{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "model"
    (folder / "standin").mkdir(parents=True)
    (folder / "records").mkdir()
    os.chmod(folder / "records", 0o777)
    ca_pem = _make_certs(folder / "standin", host)
    shutil.copy(HERE / f"{standin_module}.py", folder / "standin" / f"{standin_module}.py")
    (folder / "standin" / "tls_standin.py").write_text(TLS_STANDIN)
    (folder / "standin" / "script.json").write_text(json.dumps(script))
    for path in (folder / "standin").iterdir():
        path.chmod(0o644)
    workspace = tmp_path / "roots" / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "app.py").write_text('def greet():\n    return "hello"\n')
    for path in (workspace, workspace / "app.py"):
        os.chown(path, 1000, 1000) if os.geteuid() == 0 else os.chmod(path, 0o777)
    key = f"sk-real-{secrets.token_hex(16)}"
    api = docker_client.api
    network = docker_client.networks.create(f"uw-cli-{tag}-up", driver="bridge", internal=True,
                                            labels={"ultrawork.test": tag})
    standin = gateway = sandbox = None
    engine = SandboxEngine(SandboxPolicy(workspace_roots=[tmp_path / "roots"]), client=docker_client)
    try:
        created = api.create_container(
            "ultrawork-sandbox:0.1.0", ["python3", "/standin/tls_standin.py", standin_module], user="1000:1000",
            labels={"ultrawork.test": tag},
            host_config=api.create_host_config(
                binds={str(folder / "standin"): {"bind": "/standin", "mode": "ro"},
                       str(folder / "records"): {"bind": "/records", "mode": "rw"}},
                read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], pids_limit=64,
                mem_limit="128m", network_mode=network.name, init=True),
            networking_config=api.create_networking_config(
                {network.name: api.create_endpoint_config(aliases=[host])}))
        standin = docker_client.containers.get(created["Id"])
        standin.start()
        deadline = time.monotonic() + 30
        while b"listening" not in standin.logs():
            assert time.monotonic() < deadline, standin.logs()
            time.sleep(0.2)
        network.reload()
        profile = named_profile("frontend", cli)
        rules = egress_rules({"frontend": profile.egress}, upstream_ca=ca_pem,
                             allowed_private=[network.attrs["IPAM"]["Config"][0]["Subnet"]])
        gateway = EgressGateway(tag, rules, resolver={f"env:{key_env}": key}.__getitem__,
                                upstream_network=network.name, client=docker_client)
        gateway.start()
        net = gateway.network_for("frontend")
        engine.policy = SandboxPolicy(workspace_roots=[tmp_path / "roots"], allowed_networks=[net.network])
        sandbox = engine.create(SandboxSpec(
            image=profile.image, role="frontend", run_id=tag, workspace=workspace, workspace_mode="rw",
            network=net.network, limits=profile.limits, env=net.env, allow_env=list(net.env)))
        engine.deploy(sandbox, files={"prompt.md": TASK + "\n"})
        env_seen = engine.execute(sandbox, ["env"], timeout=30).stdout
        try:
            result = engine.execute(sandbox, profile.argv(tag), timeout=timeout)
        except SandboxTimeout as exc:   # what happened until then is the diagnosis
            result = exc
        engine.cleanup(sandbox)
        sandbox = None
        requests = gateway.requests("frontend")
    finally:
        if sandbox is not None:
            engine.cleanup(sandbox)
        if gateway is not None:
            gateway.stop()
        if standin is not None:
            standin.remove(force=True)
        network.remove()
    records_file = folder / "records" / "requests.jsonl"
    records = [json.loads(line) for line in records_file.read_text().splitlines()] if records_file.exists() else []
    return {"result": result, "records": records, "key": key, "env": env_seen, "requests": requests,
            "app": (workspace / "app.py").read_text(), "net_env": net.env}


def _check_key_kept_on_the_host(run: dict, header: str, value: str) -> None:
    from ultrawork.gateway import PLACEHOLDER

    assert run["records"], "the stand-in saw no request"
    assert all(r["headers"].get(header) == value for r in run["records"]), [r["headers"].get(header) for r in run["records"]]
    assert PLACEHOLDER not in json.dumps(run["records"])
    assert run["key"] not in run["env"] and PLACEHOLDER in run["env"]
    assert all(r["decision"] == "allowed" for r in run["requests"]), [r for r in run["requests"] if r["decision"] != "allowed"]


OPENCODE_SCRIPT = [
    {"content": [{"type": "tool_use", "name": "read", "input": {"filePath": "/workspace/app.py"}}]},
    {"content": [{"type": "tool_use", "name": "edit", "input": {
        "filePath": "/workspace/app.py", "oldString": 'return "hello"', "newString": 'return "hello, world"'}}]},
    {"content": [{"type": "text", "text": FINAL_TEXT}]},
]


def test_opencode_finishes_a_scripted_edit_through_the_gateway(docker_client, tmp_path):
    run = run_cli_through_gateway(docker_client, tmp_path, "opencode", "api.anthropic.com", "model_standin",
                                  OPENCODE_SCRIPT, "ANTHROPIC_API_KEY")
    result = run["result"]
    assert result.exit_code == 0, (result.stdout[-3000:], result.stderr[-3000:], run["requests"])
    assert run["app"] == 'def greet():\n    return "hello, world"\n', (result.stdout[-2000:], run["records"][-1:])
    _check_key_kept_on_the_host(run, "x-api-key", run["key"])
    turns = [r for r in run["records"] if isinstance(r["body"], dict) and r["body"].get("tools")]
    assert len(turns) == len(OPENCODE_SCRIPT)
    assert "Change greet() in app.py so that it returns" in json.dumps(turns[0]["body"]["messages"])   # the prompt file


CODEX_SCRIPT = [
    {"shell": "cat /agent/prompt.md"},
    {"shell": "python3 -c \"import pathlib; p = pathlib.Path('/workspace/app.py'); "
              "p.write_text(p.read_text().replace('return \\\"hello\\\"', 'return \\\"hello, world\\\"'))\""},
    {"text": FINAL_TEXT},
]


def test_codex_finishes_a_scripted_edit_through_the_gateway_with_telemetry_and_update_checks_off(
        docker_client, tmp_path):
    run = run_cli_through_gateway(docker_client, tmp_path, "codex", "api.openai.com", "responses_standin",
                                  CODEX_SCRIPT, "OPENAI_API_KEY")
    result = run["result"]
    assert result.exit_code == 0, (result.stdout[-3000:], result.stderr[-3000:], run["requests"])
    assert run["app"] == 'def greet():\n    return "hello, world"\n', (result.stdout[-2000:], run["records"][-1:])
    assert FINAL_TEXT in result.stdout
    _check_key_kept_on_the_host(run, "authorization", f"Bearer {run['key']}")
    # every call went to the model through the route (no WebSocket to api.openai.com, no update check)
    assert {(r["method"], r["path"]) for r in run["records"]} == {("POST", "/v1/responses")}
    assert {(r["host"], r["path"]) for r in run["requests"]} == {("api.openai.com", "/v1/responses")}
    assert all('"analytics_enabled":false' in r["headers"].get("x-codex-turn-metadata", "") for r in run["records"])
    assert "provider: ultrawork" in result.stderr and "WebSocket" not in result.stderr
    second = json.dumps(run["records"][1]["body"]["input"][-2:])
    assert "Change greet() in app.py so that it returns" in second       # the prompt file, read by the agent
