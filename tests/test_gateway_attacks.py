"""The gateway attacked from its sandboxes: what an agent sends never moves a key, the record or the gateway.

Same world as ``test_gateway.py``: an internal upstream network holding an HTTPS
stand-in (``api.model.test``, ``pkgs.model.test``, certificate from a CA the test
makes), real gateways and hardened sandboxes on their agent networks. Attacks are
written on raw sockets in the sandbox, so that they are what an agent can send,
not what a well-behaved client library would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time

import pytest

from test_gateway import API, KEY_NAME, PKGS, _make_ca_and_server_cert
from ultrawork.gateway import AgentProfile, Credential, EgressGateway, GatewayRules, GatewayRulesError, HostRule, Route
from ultrawork.sandbox import SandboxEngine, SandboxPolicy, SandboxSpec
from ultrawork.sandbox.spec import DEFAULT_IMAGE

pytestmark = pytest.mark.docker

RAW = r'''
import json, socket, ssl, sys
spec = json.loads(sys.argv[1])
out = {"sent": 0}
s = socket.create_connection((spec["host"], spec["port"]), timeout=30)
try:
    if spec.get("connect"):
        s.sendall(spec["connect"].encode("latin-1"))
        reply = s.recv(4096)
        out["connect"] = reply.split(b"\r\n", 1)[0].decode("latin-1")
        if b" 200 " not in reply.split(b"\r\n", 1)[0]:
            raise SystemExit(print(json.dumps(out)))
    if spec.get("sni"):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname=spec["sni"])
    text, pad = spec["head"], spec.get("pad")
    head = (text.replace("{PAD}", pad[0] * pad[1]) if pad else text).encode("latin-1")
    s.sendall(head)
    out["sent"] += len(head)
    chunk = spec.get("chunk", "x").encode() * (1 << 20)
    for _ in range(spec.get("body_mb", 0)):
        s.sendall(chunk)
        out["sent"] += len(chunk)
except (OSError, ssl.SSLError) as exc:
    out["send_error"] = repr(exc)
data = b""
try:
    while len(data) < 65536:
        got = s.recv(65536)
        if not got:
            break
        data += got
        head, sep, body = data.partition(b"\r\n\r\n")
        lengths = [l.split(b":", 1)[1] for l in head.lower().split(b"\r\n") if l.startswith(b"content-length:")]
        if sep and len(body) >= int(lengths[0] if lengths else 0):
            break
except (OSError, ssl.SSLError) as exc:
    out["recv_error"] = repr(exc)
out["response"] = data[:4000].decode("latin-1")
out["status"] = int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def world(docker_client, tmp_path_factory):
    """The stand-in upstream on its own internal network, and a way to start gateways in front of it."""
    saved_home = os.environ.get("ULTRAWORK_HOME")
    home = tmp_path_factory.mktemp("gwa-home")
    os.environ["ULTRAWORK_HOME"] = str(home)
    tag = f"tgwa{secrets.token_hex(4)}"
    folder = tmp_path_factory.mktemp("standin")
    ca_pem = _make_ca_and_server_cert(folder)
    upstream = docker_client.networks.create(f"uw-gwtest-{tag}-up", driver="bridge", internal=True,
                                             labels={"ultrawork.test": tag})
    api = docker_client.api
    standin = None
    try:
        created = api.create_container(
            DEFAULT_IMAGE, ["python3", "/standin/standin.py"], user="1000:1000", labels={"ultrawork.test": tag},
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
        subnet = docker_client.networks.get(upstream.id).attrs["IPAM"]["Config"][0]["Subnet"]
        yield {"client": docker_client, "upstream": upstream.name, "ca_pem": ca_pem, "subnet": subnet,
               "standin": standin, "home": home, "tag": tag}
    finally:
        if standin is not None:
            standin.remove(force=True)
        upstream.remove()
        if saved_home is None:
            os.environ.pop("ULTRAWORK_HOME", None)
        else:
            os.environ["ULTRAWORK_HOME"] = saved_home


class Lab:
    """One running gateway with a sandbox per agent."""

    def __init__(self, world, gateway, engine, sandboxes, key):
        self.world, self.gateway, self.engine, self.sandboxes, self.key = world, gateway, engine, sandboxes, key

    def raw(self, agent: str, timeout: float = 120, **spec) -> dict:
        spec.setdefault("host", "gateway")
        result = self.engine.execute(self.sandboxes[agent], ["python3", "-c", RAW, json.dumps(spec)], timeout=timeout)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    def port(self, upstream: str) -> int:
        return int(self.gateway.route_url(upstream).rsplit(":", 1)[1])

    def standin_saw(self, marker: str) -> list[dict]:
        lines = self.world["standin"].logs(stdout=True, stderr=False).decode().splitlines()
        return [r for r in (json.loads(l) for l in lines if l.startswith("{")) if marker in r["path"]]

    def key_reached_standin(self) -> bool:
        return self.key in self.world["standin"].logs(stdout=True, stderr=False).decode()

    def recorded(self, marker: str) -> list[dict]:
        return [r for r in self.gateway.requests() if marker in r.get("path", "")]


@contextlib.contextmanager
def gateway_lab(world, profiles: dict[str, AgentProfile], **options):
    key = f"sk-real-{secrets.token_hex(16)}"
    run_id = f"{world['tag']}{secrets.token_hex(2)}"
    rules = GatewayRules(agents=profiles, upstream_ca=world["ca_pem"], allowed_private=[world["subnet"]])
    gateway = EgressGateway(run_id, rules, resolver={KEY_NAME: key}.__getitem__, upstream_network=world["upstream"],
                            client=world["client"], **options)
    engine = SandboxEngine(SandboxPolicy(workspace_roots=[world["home"]]), client=world["client"])
    sandboxes = {}
    try:
        gateway.start()
        engine.policy = SandboxPolicy(workspace_roots=[world["home"]], allowed_networks=list(gateway.networks.values()))
        for agent in profiles:
            net = gateway.network_for(agent)
            sandboxes[agent] = engine.create(SandboxSpec(role=agent, run_id=run_id, network=net.network, env=net.env,
                                                         allow_env=list(net.env)))
        yield Lab(world, gateway, engine, sandboxes, key)
    finally:
        for sandbox in sandboxes.values():
            engine.cleanup(sandbox)
        gateway.stop()


def api_profile(**cred) -> AgentProfile:
    return AgentProfile(
        allow=[HostRule(host="api.model.test", methods=["GET", "POST"]),
               HostRule(host="pkgs.model.test", methods=["GET", "HEAD"])],
        credentials=[Credential(match=cred.get("match", "api.model.test"), header="x-api-key", format="{secret}",
                                secret=KEY_NAME)],
        routes=[Route(upstream=API), Route(upstream=PKGS)])


def request_head(method: str, target: str, host: str = "api.model.test:8443", body: int = 0, extra: str = "") -> str:
    length = f"Content-Length: {body}\r\n" if body else ""
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{length}{extra}Connection: close\r\n\r\n"


# -- 1. a route's upstream is the route's, whatever the request line says ------------------------

def test_an_absolute_form_target_naming_another_authority_gets_no_key_and_is_recorded_refused(world):
    with gateway_lab(world, {"frontend": api_profile()}) as lab:
        port = lab.port(API)
        attacks = {}
        for target in ("http://evil.example:80/{m}", "https://pkgs.model.test:8443/{m}", "http://api.model.test:9/{m}"):
            marker = f"abs{secrets.token_hex(4)}"
            attacks[marker] = lab.raw("frontend", port=port, head=request_head("GET", target.format(m=marker)))
        for marker, reply in attacks.items():
            assert reply["status"] == 403, reply
            assert "this route reaches only api.model.test:8443" in reply["response"]
            assert lab.standin_saw(marker) == []
            [logged] = lab.recorded(marker)
            assert (logged["agent"], logged["decision"], logged["status"]) == ("frontend", "refused", 403)
        # the route's own authority in absolute form is served, in origin form, with the key
        marker = f"abs{secrets.token_hex(4)}"
        reply = lab.raw("frontend", port=port, head=request_head("GET", f"https://api.model.test:8443/{marker}"))
        assert reply["status"] == 200, reply
        [seen] = lab.standin_saw(marker)
        assert seen["path"] == f"/{marker}" and seen["headers"]["x-api-key"] == lab.key
        assert seen["headers"]["host"] == "api.model.test:8443"
        # a Host header naming another host does not move the request either
        marker = f"hdr{secrets.token_hex(4)}"
        reply = lab.raw("frontend", port=port, head=request_head("GET", f"/{marker}", host="evil.example"))
        [seen] = lab.standin_saw(marker)
        assert reply["status"] == 200 and seen["headers"]["host"] == "api.model.test:8443"


def test_a_path_scoped_key_is_given_only_to_a_normalised_path_below_its_prefix(world):
    profile = api_profile(match=f"{API}/v1/")
    with gateway_lab(world, {"frontend": profile}) as lab:
        port = lab.port(API)
        outcomes = {}
        for path in ("/v1/{m}", "/v1/../admin/{m}", "/v1/%2e%2e/admin/{m}", "/v1/%2E%2e/{m}", "/v1/.%2e/{m}",
                     "/v1/..;/{m}", "/v1//../{m}", "/v1/%2fadmin/{m}", "/v1evil/{m}", "/v1/./{m}"):
            marker = f"p{secrets.token_hex(4)}"
            reply = lab.raw("frontend", port=port, head=request_head("GET", path.format(m=marker)))
            assert reply["status"] == 200, (path, reply)
            [seen] = lab.standin_saw(marker)
            outcomes[path] = seen["headers"].get("x-api-key")
        assert outcomes.pop("/v1/{m}") == lab.key
        assert outcomes == {path: None for path in outcomes}, outcomes


# -- 2. bounded: bodies, heads and connections; the gateway stays up -------------------------------

def _gateway_state(lab) -> dict:
    return lab.world["client"].api.inspect_container(lab.gateway.container_id)["State"]


def test_a_400_mb_upload_is_refused_with_413_and_the_runs_gateway_stays_up(world):
    profiles = {"frontend": api_profile(), "explore": AgentProfile(
        allow=[HostRule(host="pkgs.model.test", methods=["GET"])], routes=[Route(upstream=PKGS)])}
    with gateway_lab(world, profiles, body_limit_mb=16) as lab:
        api_port, pkgs_port = lab.port(API), lab.port(PKGS)
        uploads = {}
        for name, agent, port, head, extra in (
                ("declared", "frontend", api_port, "POST", {"body": 400 << 20}),
                ("declared-refused-host", "explore", api_port, "POST", {"body": 400 << 20}),
                ("chunked", "frontend", api_port, "POST", {"extra": "Transfer-Encoding: chunked\r\n"}),
                ("small-refused", "explore", pkgs_port, "POST", {"body": 32 << 10}),
                ("large-refused", "explore", pkgs_port, "POST", {"body": 1 << 20})):
            marker = f"up{secrets.token_hex(4)}"
            target = f"/v1/messages/{marker}"
            spec = {"port": port, "head": request_head(head, target, **extra), "body_mb": 400}
            if name == "small-refused":        # read and dropped: the agent is told why
                spec["head"], spec["body_mb"] = spec["head"] + "x" * (32 << 10), 0
            if name == "large-refused":        # not read: the connection is closed
                spec["body_mb"] = 1
            started = time.monotonic()
            uploads[name] = (marker, lab.raw(agent, timeout=180, **spec), time.monotonic() - started)
        state = _gateway_state(lab)
        assert state["Running"] and not state["OOMKilled"], state
        for name, (marker, reply, seconds) in uploads.items():
            assert lab.standin_saw(marker) == [], name
            assert seconds < 60, (name, seconds)
            [logged] = lab.recorded(marker)
            assert logged["decision"] == "refused", (name, logged)
        by_name = {name: lab.recorded(marker)[0] for name, (marker, _, _) in uploads.items()}
        assert by_name["declared"]["status"] == 413 and by_name["declared"]["agent"] == "frontend"
        assert by_name["declared-refused-host"]["status"] == 413 and by_name["declared-refused-host"]["agent"] == "explore"
        assert by_name["chunked"]["status"] == 411
        assert by_name["small-refused"]["status"] == 403 and uploads["small-refused"][1]["status"] == 403
        assert by_name["large-refused"]["status"] == 403 and "connection closed" in by_name["large-refused"]["error"]
        assert uploads["declared"][1]["status"] in (413, None), uploads["declared"][1]   # None: reset before read
        # every agent is still served, by the same gateway container
        for agent, port in (("frontend", api_port), ("explore", pkgs_port)):
            marker = f"after{secrets.token_hex(4)}"
            assert lab.raw(agent, port=port, head=request_head("GET", f"/{marker}"))["status"] == 200
        # an allowed upload under the cap is streamed through, its bytes counted
        marker = f"ok{secrets.token_hex(4)}"
        reply = lab.raw("frontend", port=api_port, head=request_head("POST", f"/v1/{marker}", body=8 << 20), body_mb=8)
        assert reply["status"] == 200, reply
        [logged] = lab.recorded(marker)
        assert logged["decision"] == "allowed" and logged["bytes_out"] == 8 << 20
        assert lab.world["client"].api.inspect_container(lab.gateway.container_id)["RestartCount"] == 0


def test_request_heads_and_connections_are_bounded_and_each_refusal_is_recorded_as_the_agents(world):
    with gateway_lab(world, {"frontend": api_profile()}, connections_per_agent=8) as lab:
        port = lab.port(API)
        huge_method = lab.raw("frontend", port=port, head="{PAD} / HTTP/1.1\r\n\r\n", pad=["A", 1 << 20])
        huge_target = lab.raw("frontend", port=port, head="GET /{PAD} HTTP/1.1\r\n\r\n", pad=["a", 8 << 20])
        huge_headers = lab.raw("frontend", port=port, head="GET / HTTP/1.1\r\nHost: x\r\n{PAD}\r\n",
                               pad=["X-A: b\r\n", 100000])
        malformed = lab.raw("frontend", port=port, head="GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        broken = lab.raw("frontend", port=port, head="\x00\x01 nonsense\r\n\r\n")
        smuggled = lab.raw("frontend", port=port, head="POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                                       "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /inner HTTP/1.1\r\n\r\n")
        for reply in (huge_method, huge_target, huge_headers):
            assert reply["status"] in (431, None), reply
        assert malformed["status"] == 400 and broken["status"] == 400 and smuggled["status"] == 400, \
            (malformed, broken, smuggled)
        # connections: hold more than the cap open, count the ones the gateway closes at once
        hold = r'''
import json, socket, time
socks, refused = [], 0
for i in range(20):
    s = socket.create_connection(("gateway", %d), timeout=10)
    socks.append(s)
time.sleep(1.0)
for s in socks:
    s.settimeout(0.5)
    try:
        refused += s.recv(1) == b""
    except socket.timeout:
        pass
    except OSError:
        refused += 1
print(json.dumps({"refused": refused}))
''' % port
        held = lab.engine.execute(lab.sandboxes["frontend"], ["python3", "-c", hold], timeout=60)
        assert json.loads(held.stdout.strip().splitlines()[-1]) == {"refused": 12}, held.stdout
        time.sleep(1)   # the held connections closed with the process: the agent is served again
        marker = f"after{secrets.token_hex(4)}"
        assert lab.raw("frontend", port=port, head=request_head("GET", f"/{marker}"))["status"] == 200
        refusals = [r for r in lab.gateway.requests("frontend") if r["decision"] == "refused"]
        statuses = sorted(r["status"] for r in refusals)
        assert statuses.count(431) == 3 and statuses.count(400) == 3 and statuses.count(429) == 12, statuses
        assert lab.standin_saw("/smuggle") == [] and lab.standin_saw("/inner") == []
        assert all(len(json.dumps(r)) < 2000 for r in lab.gateway.requests()), "a record line carries the attack"
        assert _gateway_state(lab)["Running"]


# -- 3. the record: a host file, a line per request and refusal, bounded per agent, read live ----------

FLOOD = r'''
import socket, sys
port, count, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    s = socket.create_connection(("gateway", port), timeout=20)
    s.sendall(b"M" * size + b" /flood HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
'''

LATER = r'''
import sys, time, urllib.request
time.sleep(1)
urllib.request.urlopen(sys.argv[1], timeout=20).read()
time.sleep(8)
'''


def test_the_record_is_a_host_file_bounded_per_agent_that_no_flood_rotates_and_is_read_live(world):
    profiles = {"frontend": api_profile(), "explore": AgentProfile(
        allow=[HostRule(host="pkgs.model.test", methods=["GET"])], routes=[Route(upstream=PKGS)])}
    with gateway_lab(world, profiles, record_lines_per_agent=20) as lab:
        api_port, pkgs_port = lab.port(API), lab.port(PKGS)
        # read live: the request shows while the command that made it still runs
        marker = f"live{secrets.token_hex(4)}"
        done = threading.Event()
        url = f"{lab.gateway.route_url(PKGS)}/{marker}"
        worker = threading.Thread(target=lambda: (lab.engine.execute(lab.sandboxes["explore"], [
            "python3", "-c", LATER, url], timeout=60), done.set()))
        worker.start()
        seen_at = None
        deadline = time.monotonic() + 30
        while seen_at is None and time.monotonic() < deadline and not done.is_set():
            if lab.recorded(marker):
                seen_at = time.time()
            time.sleep(0.1)
        assert seen_at is not None and not done.is_set(), "the request was not in the record while its step ran"
        [live] = lab.recorded(marker)
        assert live["agent"] == "explore" and seen_at - live["time"] < 1.5, (seen_at, live)
        worker.join()

        first = f"first{secrets.token_hex(4)}"
        assert lab.raw("frontend", port=api_port, head=request_head("GET", f"/{first}"))["status"] == 200
        flood = lab.engine.execute(lab.sandboxes["frontend"], ["python3", "-c", FLOOD, str(api_port), "40",
                                                               str(60 << 10)], timeout=120)
        assert flood.exit_code == 0, flood.stderr
        time.sleep(1)   # the dropped count is written at most half a second after a drop
        mine = lab.gateway.requests("frontend")
        assert len(mine) == 20 and [r["path"] for r in mine[:1]] == [f"/{first}"], [r["path"] for r in mine]
        assert all(r["decision"] == "refused" and len(r["method"]) == 32 for r in mine[1:])
        assert lab.gateway.summary("frontend").dropped == 21
        # the other agent's record is its own; the flood cost it nothing
        other = f"other{secrets.token_hex(4)}"
        assert lab.raw("explore", port=pkgs_port, head=request_head("GET", f"/{other}"))["status"] == 200
        assert [r["agent"] for r in lab.recorded(other)] == ["explore"]
        # a gateway restarted (as after a crash) continues the same record and the same bounds
        lab.gateway.restart()
        lab.raw("frontend", port=api_port, head=request_head("GET", f"/{first}again"))
        time.sleep(1)
        assert len(lab.gateway.requests("frontend")) == 20 and lab.gateway.summary("frontend").dropped == 22
        # the record is a host file the gateway writes, not the container's log
        path = lab.gateway.record_dir / "requests.jsonl"
        assert lab.gateway.record_dir.parent == world["home"] / "gateway" / "records"
        assert path.stat().st_size < 64 << 10 and first in path.read_text()
        logs = world["client"].api.logs(lab.gateway.container_id, stdout=True, stderr=True).decode()
        assert first not in logs and "/flood" not in logs


# -- 4. profiles without a route: CONNECT only, pinned, and never a key ---------------------------------

def test_a_profile_without_a_route_tunnels_only_to_its_hosts_ports_with_the_tunnels_name_and_holds_no_key(world):
    with pytest.raises(GatewayRulesError, match="needs a route to api.model.test"):
        EgressGateway("tgwnoroute", GatewayRules(agents={"explore": AgentProfile(
            allow=[HostRule(host="api.model.test")],
            credentials=[Credential(match="api.model.test", secret=KEY_NAME)])}), client=world["client"])
    profile = AgentProfile(allow=[HostRule(host="pkgs.model.test", methods=["GET"], ports=[8443])])
    with gateway_lab(world, {"explore": profile}) as lab:
        def tunnel(target: str, sni: str | None, host: str, marker: str) -> dict:
            spec = {"port": 8080, "connect": f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n",
                    "head": request_head("GET", f"/{marker}", host=host)}
            if sni:
                spec["sni"] = sni
            return lab.raw("explore", **spec)

        outcomes = {}
        for name, target, sni, host in (
                ("port 22", "pkgs.model.test:22", "pkgs.model.test", "pkgs.model.test"),
                ("port 443 not named", "pkgs.model.test:443", "pkgs.model.test", "pkgs.model.test"),
                ("host off the allowlist", "api.model.test:8443", "api.model.test", "api.model.test"),
                ("another SNI", "pkgs.model.test:8443", "api.model.test", "pkgs.model.test:8443"),
                ("another Host", "pkgs.model.test:8443", "pkgs.model.test", "api.model.test:8443"),
                ("plain HTTP in the tunnel", "pkgs.model.test:8443", None, "pkgs.model.test:8443"),
                ("allowed", "pkgs.model.test:8443", "pkgs.model.test", "pkgs.model.test:8443")):
            marker = f"t{secrets.token_hex(4)}"
            outcomes[name] = (marker, tunnel(target, sni, host, marker))
        plain = f"t{secrets.token_hex(4)}"
        outcomes["plain HTTP"] = (plain, lab.raw("explore", port=8080, head=request_head(
            "GET", f"http://pkgs.model.test:8443/{plain}", host="pkgs.model.test:8443")))
        marker, allowed = outcomes.pop("allowed")
        assert allowed["status"] == 200, allowed
        [seen] = lab.standin_saw(marker)
        assert seen["headers"]["host"].startswith("pkgs.model.test")
        for name in ("port 22", "port 443 not named", "host off the allowlist"):
            assert outcomes[name][1].get("connect", "").startswith("HTTP/1.1 403"), (name, outcomes[name])
        for name, (marker, reply) in outcomes.items():
            assert lab.standin_saw(marker) == [], name
            assert reply.get("status") in (403, None), (name, reply)
        assert outcomes["another SNI"][1]["status"] == 403 and outcomes["another Host"][1]["status"] == 403
        assert outcomes["plain HTTP"][1]["status"] == 403 and "plain HTTP" in outcomes["plain HTTP"][1]["response"]
        assert "plain HTTP inside a tunnel" in outcomes["plain HTTP in the tunnel"][1]["response"]
        refused = [r for r in lab.gateway.requests("explore") if r["decision"] == "refused"]
        assert len(refused) >= 6, refused


# -- 5. method allowlists: exact, and no override header reaches the upstream --------------------------

def test_methods_compare_exactly_override_headers_are_stripped_and_upgrades_refused(world):
    with gateway_lab(world, {"frontend": api_profile()}) as lab:
        api_port, pkgs_port = lab.port(API), lab.port(PKGS)
        for method, port in (("post", api_port), ("Post", api_port), ("get", pkgs_port), ("POST ", pkgs_port)):
            marker = f"m{secrets.token_hex(4)}"
            reply = lab.raw("frontend", port=port, head=request_head(method, f"/{marker}"))
            assert reply["status"] in (403, 400), (method, reply)
            [logged] = lab.recorded(marker) or [{"decision": "refused"}]
            assert logged["decision"] == "refused", (method, logged)
        marker = f"m{secrets.token_hex(4)}"
        overrides = "X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: PUT\r\nX-Method-Override: PATCH\r\n"
        reply = lab.raw("frontend", port=pkgs_port, head=request_head("GET", f"/{marker}", extra=overrides))
        assert reply["status"] == 200, reply
        [seen] = lab.standin_saw(marker)
        assert seen["method"] == "GET"
        assert not {"x-http-method-override", "x-http-method", "x-method-override"} & set(seen["headers"]), seen
        # nor does a protocol upgrade, after which nothing would be bounded or recorded request by request
        marker = f"ws{secrets.token_hex(4)}"
        upgrade = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        reply = lab.raw("frontend", port=api_port, head=request_head("GET", f"/{marker}", extra=upgrade))
        assert reply["status"] == 403 and "protocol upgrades" in reply["response"], reply
        assert lab.standin_saw(marker) == []
