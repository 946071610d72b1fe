"""The egress gateway against a stand-in upstream, with client sandboxes on their agent networks.

Everything here talks only to what the test creates: an internal upstream
network holding an HTTPS stand-in (``api.model.test``, ``pkgs.model.test``,
certificate from a CA the test makes), the gateway, and hardened sandboxes on
the gateway's agent networks. The host's own listeners (127.0.0.1 and 0.0.0.0)
are the test's too.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from ultrawork.gateway import (
    PLACEHOLDER, AgentProfile, Credential, CredentialHostNotAllowed, EgressGateway, GatewayError, GatewayRules,
    HostRule, Route, SecretUnavailable,
)
from ultrawork.gateway.host import host_addresses
from ultrawork.gateway.policy import address_blocked, credential_for, host_matches
from ultrawork.sandbox import SandboxEngine, SandboxPolicy, SandboxSpec
from ultrawork.sandbox.spec import DEFAULT_IMAGE

API = "https://api.model.test:8443"
PKGS = "https://pkgs.model.test:8443"
KEY_NAME = "UW_TEST_MODEL_KEY"

STANDIN = r'''
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _do(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n) if n else b""
        print(json.dumps({"method": self.command, "path": self.path,
                          "headers": {k.lower(): v for k, v in self.headers.items()}}), flush=True)
        out = json.dumps({"standin": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)
    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _do
    def log_message(self, *args):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/standin/server.pem", "/standin/server.key")
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", flush=True)
srv.serve_forever()
'''

CLIENT = r'''
import json, sys, urllib.request, urllib.error
method, url, headers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
req = urllib.request.Request(url, method=method, headers=headers, data=b"{}" if method == "POST" else None)
try:
    with urllib.request.urlopen(req, timeout=20) as resp:
        print(json.dumps({"status": resp.status, "body": resp.read().decode()}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": exc.read().decode()}))
except Exception as exc:
    print(json.dumps({"error": repr(exc)}))
'''

PROBE = r'''
import json, socket, sys, threading
results = {}
def probe(target):
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(4)
    try:
        s.connect((host, int(port)))
        results[target] = "connected"
    except Exception as exc:
        results[target] = repr(exc)
    finally:
        s.close()
threads = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[1:]]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
'''


def _make_ca_and_server_cert(folder: Path) -> str:
    """A CA and a server certificate for the stand-in's names; returns the CA's PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ultrawork test upstream CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.model.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("api.model.test"),
                                                        x509.DNSName("pkgs.model.test")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "standin.py").write_text(STANDIN)
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755)
    return ca.public_bytes(serialization.Encoding.PEM).decode()


class HostListeners:
    """Listeners on the host's loopback and on all its addresses, counting who connects."""

    def __init__(self):
        self.hits: list[str] = []
        self.sockets = []
        for where in ("127.0.0.1", "0.0.0.0"):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((where, 0))
            s.listen()
            s.settimeout(0.2)
            self.sockets.append(s)
            threading.Thread(target=self._accept, args=(s, where), daemon=True).start()
        self.loopback_port = self.sockets[0].getsockname()[1]
        self.any_port = self.sockets[1].getsockname()[1]

    def _accept(self, s, where):
        while s.fileno() != -1:
            try:
                conn, peer = s.accept()
            except OSError:
                continue
            self.hits.append(f"{where} <- {peer[0]}")
            conn.close()

    def close(self):
        for s in self.sockets:
            s.close()


def _profiles() -> dict[str, AgentProfile]:
    return {
        "frontend": AgentProfile(
            allow=[HostRule(host="api.model.test", methods=["GET", "POST"]),
                   HostRule(host="pkgs.model.test", methods=["GET", "HEAD"])],
            credentials=[Credential(match="api.model.test", header="x-api-key", format="{secret}",
                                    secret=KEY_NAME, placeholder_env="ANTHROPIC_API_KEY")],
            routes=[Route(upstream=API, base_url_env="ANTHROPIC_BASE_URL"), Route(upstream=PKGS)]),
        "explore": AgentProfile(allow=[HostRule(host="pkgs.model.test", methods=["GET"])],
                                routes=[Route(upstream=PKGS, base_url_env="PIP_INDEX_URL")]),
    }


@pytest.fixture(scope="module")
def lab(docker_client, tmp_path_factory):
    """The stand-in upstream, a running gateway for two agents, and one sandbox per agent."""
    saved_home = os.environ.get("ULTRAWORK_HOME")
    home = tmp_path_factory.mktemp("gw-home")
    os.environ["ULTRAWORK_HOME"] = str(home)
    run_id = f"tgw{secrets.token_hex(4)}"
    real_key = f"sk-real-{secrets.token_hex(16)}"
    folder = tmp_path_factory.mktemp("standin")
    ca_pem = _make_ca_and_server_cert(folder)
    upstream = docker_client.networks.create(f"uw-gwtest-{run_id}-up", driver="bridge", internal=True,
                                             labels={"ultrawork.test": run_id})
    api = docker_client.api
    standin = gateway = None
    engine = SandboxEngine(SandboxPolicy(workspace_roots=[home]), client=docker_client)
    sandboxes = {}
    listeners = HostListeners()
    try:
        created = api.create_container(
            DEFAULT_IMAGE, ["python3", "/standin/standin.py"], user="1000:1000", labels={"ultrawork.test": run_id},
            host_config=api.create_host_config(
                binds={str(folder): {"bind": "/standin", "mode": "ro"}}, read_only=True, cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"], pids_limit=64, mem_limit="128m",
                network_mode=upstream.name, init=True),
            networking_config=api.create_networking_config(
                {upstream.name: api.create_endpoint_config(aliases=["api.model.test", "pkgs.model.test"])}))
        standin = docker_client.containers.get(created["Id"])
        standin.start()
        deadline = time.monotonic() + 30
        while b"listening" not in standin.logs():
            assert time.monotonic() < deadline, standin.logs()
            time.sleep(0.2)
        standin.reload()
        standin_ip = standin.attrs["NetworkSettings"]["Networks"][upstream.name]["IPAddress"]
        subnet = upstream.attrs["IPAM"]["Config"][0]["Subnet"] if upstream.attrs.get("IPAM") else None
        subnet = subnet or docker_client.networks.get(upstream.id).attrs["IPAM"]["Config"][0]["Subnet"]

        rules = GatewayRules(agents=_profiles(), upstream_ca=ca_pem, allowed_private=[subnet])
        gateway = EgressGateway(run_id, rules, resolver={KEY_NAME: real_key}.__getitem__,
                                upstream_network=upstream.name, client=docker_client)
        started = time.monotonic()
        gateway.start()
        start_seconds = time.monotonic() - started
        for agent in ("frontend", "explore"):
            net = gateway.network_for(agent)
            engine.policy = SandboxPolicy(workspace_roots=[home], allowed_networks=["none", *gateway.networks.values()])
            sandboxes[agent] = engine.create(SandboxSpec(
                role=agent, run_id=run_id, network=net.network, env=net.env, allow_env=list(net.env)))
        yield {"gateway": gateway, "upstream": upstream.name, "ca_pem": ca_pem, "engine": engine, "sandboxes": sandboxes, "standin": standin,
               "standin_ip": standin_ip, "real_key": real_key, "listeners": listeners, "run_id": run_id,
               "start_seconds": start_seconds, "home": home}
    finally:
        listeners.close()
        for sb in sandboxes.values():
            engine.cleanup(sb)
        if gateway is not None:
            gateway.stop()
        if standin is not None:
            standin.remove(force=True)
        upstream.remove()
        if saved_home is None:
            os.environ.pop("ULTRAWORK_HOME", None)
        else:
            os.environ["ULTRAWORK_HOME"] = saved_home


def _call(lab, agent, method, url, headers=None) -> dict:
    result = lab["engine"].execute(lab["sandboxes"][agent], ["python3", "-c", CLIENT, method, url,
                                                             json.dumps(headers or {})], timeout=60)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _probe(lab, agent, *targets) -> dict:
    result = lab["engine"].execute(lab["sandboxes"][agent], ["python3", "-c", PROBE, *targets], timeout=60)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _standin_saw(lab, marker: str) -> list[dict]:
    lines = lab["standin"].logs(stdout=True, stderr=False).decode().splitlines()
    return [r for r in (json.loads(l) for l in lines if l.startswith("{")) if marker in r["path"]]


# -- without Docker: the decisions ------------------------------------------------

def test_host_patterns_and_blocked_addresses():
    assert host_matches("*.model.test", "api.model.test") and not host_matches("*.model.test", "model.test")
    assert not host_matches("api.model.test", "api.model.test.evil") and not host_matches("*.test", "xtest")
    for address in ("127.0.0.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1", "10.1.2.3"):
        assert address_blocked(address), address
    assert address_blocked("172.20.0.5", allowed_private=["172.20.0.0/16"]) is None
    assert address_blocked("172.20.0.1", hard_blocked=["172.20.0.1"], allowed_private=["172.20.0.0/16"])
    assert address_blocked("93.184.215.14") is None
    for address in host_addresses():   # every address of this host, whatever the rules allow
        assert address_blocked(address, hard_blocked=host_addresses(), allowed_private=["0.0.0.0/0"]), address
    profile = {"credentials": [{"match": "api.x.test", "v": 1}, {"match": "https://api.x.test/v2/", "v": 2}]}
    assert credential_for(profile, "https", "api.x.test", 443, "/v2/chat")["v"] == 2
    assert credential_for(profile, "https", "api.x.test", 443, "/v1/chat")["v"] == 1
    assert credential_for(profile, "https", "other.x.test", 443, "/v2/chat") is None


def test_a_credential_for_a_host_off_the_allowlist_is_refused_before_anything_starts(docker_client):
    run_id = f"tgw{secrets.token_hex(4)}"
    profile = AgentProfile(allow=[HostRule(host="pkgs.model.test")],
                           credentials=[Credential(match="https://api.model.test/v1/", secret=KEY_NAME)])
    with pytest.raises(CredentialHostNotAllowed) as refused:
        EgressGateway(run_id, GatewayRules(agents={"frontend": profile}), client=docker_client)
    assert "api.model.test is not on this agent's allowlist" in str(refused.value)
    assert refused.value.field == "agents.frontend.credentials[0]"
    wildcard = AgentProfile(allow=[HostRule(host="api.model.test")],
                            credentials=[Credential(match="*.model.test", secret=KEY_NAME)])
    with pytest.raises(CredentialHostNotAllowed):
        EgressGateway(run_id, GatewayRules(agents={"frontend": wildcard}), client=docker_client)
    # A secret that cannot be resolved is refused at start(), before any network or container exists.
    ok = AgentProfile(allow=[HostRule(host="api.model.test")], routes=[Route(upstream=API)],
                      credentials=[Credential(match="api.model.test", secret="UW_TEST_NO_SUCH_SECRET")])
    gateway = EgressGateway(run_id, GatewayRules(agents={"frontend": ok}), resolver={}.__getitem__,
                            client=docker_client)
    with pytest.raises(SecretUnavailable, match="UW_TEST_NO_SUCH_SECRET"):
        gateway.start()
    label = {"label": f"ultrawork.run={run_id}"}
    assert docker_client.containers.list(all=True, filters=label) == []
    assert docker_client.networks.list(filters=label) == []


# -- with Docker: traffic ------------------------------------------------------------

@pytest.mark.docker
def test_an_allowed_request_reaches_the_upstream_with_the_injected_key(lab):
    env = lab["gateway"].network_for("frontend").env
    assert env["ANTHROPIC_API_KEY"] == PLACEHOLDER and env["ANTHROPIC_BASE_URL"].startswith("http://gateway:")
    marker = f"/v1/messages/{secrets.token_hex(4)}"
    reply = _call(lab, "frontend", "POST", env["ANTHROPIC_BASE_URL"] + marker,
                  {"x-api-key": PLACEHOLDER, "Authorization": f"Bearer {PLACEHOLDER}"})
    assert reply.get("status") == 200, reply
    assert json.loads(reply["body"])["standin"] is True
    [seen] = _standin_saw(lab, marker)
    assert seen["headers"]["x-api-key"] == lab["real_key"]
    assert "authorization" not in seen["headers"]            # the agent's own auth header was stripped
    assert PLACEHOLDER not in json.dumps(seen["headers"])
    assert seen["headers"]["host"].startswith("api.model.test")
    [logged] = [r for r in lab["gateway"].requests("frontend") if r["path"] == marker]
    assert (logged["method"], logged["host"], logged["status"], logged["decision"]) == \
           ("POST", "api.model.test", 200, "allowed")
    assert logged["bytes_in"] > 0


@pytest.mark.docker
def test_a_host_off_the_agents_allowlist_is_refused_with_403_and_logged(lab):
    marker = f"/v1/messages/{secrets.token_hex(4)}"
    url = lab["gateway"].route_url(API) + marker        # the frontend's route; explore may not use api.model.test
    reply = _call(lab, "explore", "POST", url, {"x-api-key": PLACEHOLDER})
    assert reply.get("status") == 403, reply
    assert reply["body"].strip() == "ultrawork gateway: api.model.test is not on this agent's allowlist"
    assert _standin_saw(lab, marker) == []                  # nothing reached the upstream
    summary = lab["gateway"].summary("explore")
    assert summary.refused >= 1 and summary.hosts["api.model.test"]["refused"] >= 1
    assert summary.hosts["api.model.test"].get("allowed", 0) == 0


@pytest.mark.docker
def test_a_method_not_allowed_for_a_host_is_refused(lab):
    url = lab["gateway"].route_url(PKGS)
    get_marker, post_marker = f"/simple/{secrets.token_hex(4)}/", f"/upload/{secrets.token_hex(4)}"
    assert _call(lab, "frontend", "GET", url + get_marker).get("status") == 200
    reply = _call(lab, "frontend", "POST", url + post_marker)
    assert reply.get("status") == 403, reply
    assert reply["body"].strip() == "ultrawork gateway: POST is not allowed for pkgs.model.test"
    assert len(_standin_saw(lab, get_marker)) == 1 and _standin_saw(lab, post_marker) == []
    summary = lab["gateway"].summary("frontend")
    assert summary.hosts["pkgs.model.test"]["allowed"] >= 1 and summary.hosts["pkgs.model.test"]["refused"] >= 1


@pytest.mark.docker
def test_nothing_but_the_gateway_is_reachable_from_a_sandbox(lab, docker_client):
    gateway, listeners = lab["gateway"], lab["listeners"]
    explore_ip = docker_client.containers.get(lab["sandboxes"]["explore"].id).attrs[
        "NetworkSettings"]["Networks"][gateway.networks["explore"]]["IPAddress"]
    # The host's bridge addresses: the agent network's gateway address and every bridge the host has.
    agent_net = docker_client.networks.get(gateway.networks["frontend"]).attrs["IPAM"]["Config"][0]["Gateway"]
    bridges = {c["Gateway"] for n in docker_client.networks.list()
               for c in (n.attrs.get("IPAM") or {}).get("Config") or [] if c.get("Gateway")}
    host_bridges = sorted((bridges & set(host_addresses())) | {agent_net})
    targets = [f"{lab['standin_ip']}:8443", "api.model.test:8443", f"{explore_ip}:22", "169.254.169.254:80",
               f"127.0.0.1:{listeners.loopback_port}"]
    for address in host_bridges:
        targets += [f"{address}:{listeners.loopback_port}", f"{address}:{listeners.any_port}"]
    results = _probe(lab, "frontend", *targets)
    assert all(outcome != "connected" for outcome in results.values()), results
    assert listeners.hits == [], listeners.hits
    # the one thing that is reachable: the gateway's route port
    port = gateway.route_url(API).rsplit(":", 1)[1]
    assert _probe(lab, "frontend", f"gateway:{port}")[f"gateway:{port}"] == "connected"


@pytest.mark.docker
def test_the_real_key_is_nowhere_the_sandbox_or_the_logs_can_show(lab, docker_client):
    key = lab["real_key"]
    _call(lab, "frontend", "POST", lab["gateway"].network_for("frontend").env["ANTHROPIC_BASE_URL"] + "/v1/x")
    for sandbox in lab["sandboxes"].values():
        assert key not in json.dumps(docker_client.api.inspect_container(sandbox.id))
        env = lab["engine"].execute(sandbox, ["env"]).stdout
        assert key not in env and "UW_TEST_MODEL_KEY" not in env
        planted = secrets.token_hex(8)      # proves the search reads the sandbox's files
        lab["engine"].execute(sandbox, ["python3", "-c", f"open('/tmp/planted', 'w').write('{planted}')"])
        search = ["grep", "-rlsF", "--exclude-dir=proc", "--exclude-dir=sys", "-e"]
        assert lab["engine"].execute(sandbox, [*search, planted, "/"], timeout=120).stdout.split() == ["/tmp/planted"]
        found = lab["engine"].execute(sandbox, [*search, key, "/"], timeout=120)
        assert found.exit_code != 0 and found.stdout == "", found.stdout
    gateway_attrs = docker_client.api.inspect_container(lab["gateway"].container_id)
    assert key not in json.dumps(gateway_attrs)
    logs = docker_client.api.logs(lab["gateway"].container_id, stdout=True, stderr=True).decode()
    assert key not in logs and PLACEHOLDER not in logs
    record = (lab["gateway"].record_dir / "requests.jsonl").read_text()   # the record, outside the container
    assert '"event": "request"' in record and key not in record and PLACEHOLDER not in record
    # The rules file that holds it is private to the host.
    rules = lab["gateway"].config_dir / "rules.json"
    assert rules.stat().st_mode & 0o777 == 0o600
    assert (lab["home"] / "gateway").stat().st_mode & 0o777 == 0o700


@pytest.mark.docker
def test_the_gateway_container_is_hardened_and_labelled(lab, docker_client):
    from tests.conftest import assert_hardened

    attrs = docker_client.api.inspect_container(lab["gateway"].container_id)
    attrs["_network_allowed"] = True
    assert_hardened(attrs)
    assert attrs["Config"]["Labels"]["ultrawork.agent"] == "gateway"
    assert attrs["Config"]["Labels"]["ultrawork.run"] == lab["run_id"]
    for name in lab["gateway"].networks.values():
        net = docker_client.networks.get(name).attrs
        assert net["Internal"] is True and net["Options"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
        members = {c["Name"] for c in net["Containers"].values()}
        assert len(members) == 2, members    # that agent's sandbox and the gateway, nothing else


@pytest.mark.docker
def test_an_allowed_host_at_a_private_address_the_rules_do_not_name_is_refused(lab):
    """An allowlisted name that resolves into a private range (a rebinding attack, a host service) is not
    connected to unless the rules name that network."""
    rules = GatewayRules(agents={"frontend": _profiles()["frontend"]}, upstream_ca=lab["ca_pem"])
    gateway = EgressGateway(f"{lab['run_id']}p", rules, resolver={KEY_NAME: lab["real_key"]}.__getitem__,
                            upstream_network=lab["upstream"], client=lab["engine"].client)
    engine, sandbox = lab["engine"], None
    try:
        gateway.start()
        net = gateway.network_for("frontend")
        engine.policy = SandboxPolicy(workspace_roots=[lab["home"]], allowed_networks=[net.network])
        sandbox = engine.create(SandboxSpec(role="frontend", run_id=gateway.run_id, network=net.network,
                                            env=net.env, allow_env=list(net.env)))
        marker = f"/v1/messages/{secrets.token_hex(4)}"
        result = engine.execute(sandbox, ["python3", "-c", CLIENT, "POST", net.env["ANTHROPIC_BASE_URL"] + marker,
                                          "{}"], timeout=60)
        reply = json.loads(result.stdout.strip().splitlines()[-1])
        assert reply.get("status") == 502, reply
        assert "ultrawork gateway: api.model.test resolves to a blocked address" in reply["body"]
        assert "is a private address" in reply["body"]
        assert _standin_saw(lab, marker) == []
        [logged] = [r for r in gateway.requests("frontend") if r["path"] == marker]
        assert logged["decision"] == "refused" and lab["real_key"] not in json.dumps(logged)
    finally:
        if sandbox is not None:
            engine.cleanup(sandbox)
        gateway.stop()


@pytest.mark.docker
def test_a_killed_gateway_is_a_gateway_error_and_stop_leaves_nothing(docker_client, tmp_path, monkeypatch):
    monkeypatch.setenv("ULTRAWORK_HOME", str(tmp_path / "home"))
    run_id = f"tgw{secrets.token_hex(4)}"
    rules = GatewayRules(agents={"explore": AgentProfile(allow=[HostRule(host="pkgs.model.test", methods=["GET"])],
                                                         routes=[Route(upstream=PKGS)])})
    gateway = EgressGateway(run_id, rules, client=docker_client)
    label = {"label": f"ultrawork.run={run_id}"}
    try:
        gateway.start()
        assert gateway.network_for("explore").network in gateway.networks.values()
        docker_client.api.kill(gateway.container_id)
        with pytest.raises(GatewayError, match="stopped"):
            gateway.network_for("explore")
        gateway.restart()                       # recoverable: a new container on the same networks
        assert gateway.network_for("explore").network == gateway.networks["explore"]
        docker_client.api.remove_container(gateway.container_id, force=True)
        with pytest.raises(GatewayError, match="gone"):
            gateway.check()
    finally:
        gateway.stop()
        gateway.stop()                          # idempotent
    assert docker_client.containers.list(all=True, filters=label) == []
    assert docker_client.networks.list(filters=label) == []
    assert list((tmp_path / "home" / "gateway" / "runs").iterdir()) == []


@pytest.mark.docker
def test_a_request_before_the_gateway_knows_the_agents_subnets_gets_no_key(lab, docker_client):
    """The gateway starts before the agents' networks exist and learns their subnets from a second
    file. A request that arrives in between (a sandbox started early, or another container put on
    the network) is from no known agent: refused, recorded, and the upstream never sees the key.
    The gateway says it is ready only once it knows every subnet."""
    run_id = f"tgw{secrets.token_hex(4)}"
    rules = GatewayRules(agents={"frontend": _profiles()["frontend"]}, upstream_ca=lab["ca_pem"],
                         allowed_private=lab["gateway"].rules.allowed_private)
    gateway = EgressGateway(run_id, rules, resolver={KEY_NAME: lab["real_key"]}.__getitem__,
                            upstream_network=lab["upstream"], client=docker_client, ready_timeout=120)
    held, release = threading.Event(), threading.Event()
    write_subnets, connect = gateway._write_subnets, gateway._connect_networks

    def late_subnets() -> None:              # the window, held open: networks made and joined, subnets not given
        connect()
        held.set()
        assert release.wait(120)
        write_subnets()

    gateway._write_subnets, gateway._connect_networks = late_subnets, (lambda: None)
    starting = threading.Thread(target=gateway.start, daemon=True)
    engine = lab["engine"]
    sandbox = None
    try:
        starting.start()
        assert held.wait(120)
        ready_early = any(e.get("event") == "ready" for e in gateway._live_events())
        engine.policy = SandboxPolicy(workspace_roots=[lab["home"]], allowed_networks=["none", gateway.networks["frontend"]])
        sandbox = engine.create(SandboxSpec(role="frontend", run_id=run_id, network=gateway.networks["frontend"],
                                            ))
        marker = f"/v1/messages/{secrets.token_hex(4)}"
        url = gateway.route_url(API) + marker
        deadline = time.monotonic() + 60
        while True:                          # mitmproxy may still be starting: wait until it answers
            result = engine.execute(sandbox, ["python3", "-c", CLIENT, "POST", url, "{}"], timeout=60)
            reply = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
            if reply.get("status") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not ready_early, "the gateway said it was ready before it knew the agents' subnets"
        assert reply.get("status") == 403 and "not from a known agent" in reply.get("body", ""), reply
        assert _standin_saw(lab, marker) == []
        release.set()
        starting.join(120)
        assert not starting.is_alive()
        reply = json.loads(engine.execute(sandbox, ["python3", "-c", CLIENT, "POST", url, "{}"],
                                          timeout=60).stdout.strip().splitlines()[-1])
        assert reply.get("status") == 200, reply          # the same agent, once known, is served
        [early] = [r for r in gateway.requests(None) if r.get("path") == marker and r["status"] == 403]
        assert early["decision"] == "refused" and early["agent"] != "frontend"
    finally:
        release.set()
        starting.join(120)
        if sandbox is not None:
            engine.cleanup(sandbox)
        gateway.stop()


@pytest.mark.docker
def test_the_gateways_ca_is_made_once_per_home_kept_private_and_no_sandbox_may_mount_it(docker_client, tmp_path,
                                                                                       monkeypatch):
    """mitmproxy's CA is made once per home (not at each gateway's start): the gateways of two runs
    use the same one, its key is readable by the gateway's user alone, a gateway cannot write it, and
    a sandbox spec that mounts it (or the folder holding it) is refused before anything starts."""
    import hashlib
    import stat
    import subprocess

    from ultrawork.gateway.ca import CA_FILE
    from ultrawork.sandbox import SandboxPolicy, SandboxSpec, validate_spec
    from ultrawork.sandbox.errors import SandboxPolicyError
    from ultrawork.sandbox.spec import Mount

    home = tmp_path / "home"
    monkeypatch.setenv("ULTRAWORK_HOME", str(home))
    rules = GatewayRules(agents={"explore": AgentProfile(allow=[HostRule(host="pkgs.model.test", methods=["GET"])],
                                                         routes=[Route(upstream=PKGS)])})
    seen = []
    for _ in range(2):
        gateway = EgressGateway(f"tgw{secrets.token_hex(4)}", rules, client=docker_client)
        try:
            gateway.start()
            inside = subprocess.run(
                ["docker", "exec", gateway.container_id, "sh", "-c",
                 f"cat /tmp/mitmproxy/{CA_FILE}; touch /etc/ultrawork-gateway/{CA_FILE} 2>/dev/null && echo WROTE"],
                capture_output=True).stdout
        finally:
            gateway.stop()
        ca = home / "gateway" / "ca" / CA_FILE
        assert b"WROTE" not in inside                            # the gateway cannot change its CA
        assert inside == ca.read_bytes()                          # mitmproxy serves the home's CA, made by no one else
        seen.append((ca.stat().st_ino, hashlib.sha256(ca.read_bytes()).hexdigest()))
    assert seen[0] == seen[1]                                     # made once, for both runs
    assert b"PRIVATE KEY" in ca.read_bytes() and b"BEGIN CERTIFICATE" in ca.read_bytes()
    assert stat.S_IMODE(ca.stat().st_mode) == 0o600 and stat.S_IMODE(ca.parent.stat().st_mode) == 0o700
    policy = SandboxPolicy()
    for source in (ca.parent, home / "gateway"):
        spec = SandboxSpec(role="explore", run_id="r1", mounts=[Mount(source=source, target="/x")])
        with pytest.raises(SandboxPolicyError):
            validate_spec(spec, policy)
