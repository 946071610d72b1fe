"""The mitmproxy addon inside the gateway container: deny by default, inject credentials, record.

Loaded by the script loader of ``launch.py``; reads the rules file named by ``$ULTRAWORK_GATEWAY_RULES``.
The agents' subnets come in a second file beside it (``agents.json``), which the host
writes once it has made the agents' networks, while mitmproxy starts: until it is read,
no request is from a known agent, and only then does the gateway say it is ready.
The agent is known by the address a connection comes from (each agent network has
its own subnet), never by anything the agent sends. Everything a request says is
hostile: on a route the upstream's scheme, host, port and authority are the route's
whatever the request line says; a tunnel's server name and ``Host`` must be the
CONNECT host; bodies, heads and connections are bounded. Every request and every
refusal is one JSON line in the run's record file (see ``record.py``): time, agent,
method, host, path (no query), status, bytes, decision -- never a header value.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mitmproxy import http  # noqa: E402
from mitmproxy.net.http.url import hostport, parse_authority  # noqa: E402

import http1_bounds  # noqa: E402
from policy import (  # noqa: E402
    STRIPPED_HEADERS, address_blocked, agent_for_address, credential_for, host_rule, method_allowed, normalise_host,
)
from record import UNKNOWN, RecordWriter  # noqa: E402

PREFIX = "ultrawork gateway"
SUBNETS_FILE = "agents.json"
SUBNETS_POLL = 0.01       # seconds between looks for the agents' subnets while starting
SMALL_BODY = 64 * 1024    # a refused request's body is read and dropped up to this; a larger one closes the connection


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def _clip(value, limit: int) -> str:
    text = str(value if value is not None else "")[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


def _route(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, normalise_host(parts.hostname or ""), parts.port or (443 if parts.scheme == "https" else 80)


def _method(req: http.Request) -> str:
    """The method as sent (mitmproxy's ``Request.method`` upper-cases it: ``post`` would pass as ``POST``)."""
    return req.data.method.decode("latin-1")


def _declared_length(req: http.Request) -> int:
    """The body a request declares: its Content-Length, -1 when chunked, 0 when none."""
    if "transfer-encoding" in req.headers:
        return -1
    try:
        return int(req.headers.get("content-length") or 0)
    except ValueError:
        return -1


class EgressRules:
    def __init__(self) -> None:
        with open(os.environ["ULTRAWORK_GATEWAY_RULES"]) as fh:
            rules = json.load(fh)
        self.agents: dict = rules["agents"]
        self.routes = {int(port): _route(url) for port, url in rules.get("routes", {}).items()}
        self.hard_blocked: list = rules.get("hard_blocked", [])
        self.allowed_private: list = rules.get("allowed_private", [])
        limits = rules.get("limits") or {}
        self.body_limit = int(limits.get("body_bytes", 16 << 20))
        self.max_connections = int(limits.get("connections_per_agent", 32))
        self.record = RecordWriter(rules["record"], int(limits.get("record_lines_per_agent", 10000)))
        self.connections: dict[str, set] = {}
        self.tunnels: dict[str, tuple[str, int]] = {}    # client connection id -> its CONNECT host and port
        http1_bounds.install(int(limits.get("head_bytes", 64 << 10)), self._connection_refused)
        self.subnets_file = os.path.join(os.path.dirname(os.environ["ULTRAWORK_GATEWAY_RULES"]), SUBNETS_FILE)
        self.subnets_known = self._load_subnets()

    def _load_subnets(self) -> bool:
        """The agents' subnets (and the addresses they add to the blocked ones), once the host wrote them."""
        try:
            with open(self.subnets_file) as fh:
                subnets = json.load(fh)
        except FileNotFoundError:
            return False
        for agent, subnet in subnets["agents"].items():
            if agent in self.agents:
                self.agents[agent]["subnet"] = subnet
        self.hard_blocked = self.hard_blocked + list(subnets.get("hard_blocked", []))
        return True

    # -- connections ----------------------------------------------------------
    async def running(self) -> None:
        while not self.subnets_known:            # the host makes the agents' networks while this starts
            await asyncio.sleep(SUBNETS_POLL)
            self.subnets_known = self._load_subnets()
        _emit({"event": "ready", "time": time.time(), "agents": sorted(self.agents)})

    def done(self) -> None:
        self.record.close()

    def client_connected(self, client) -> None:
        agent, _ = self._agent(client)
        live = self.connections.setdefault(agent or UNKNOWN, set())
        if len(live) >= self.max_connections:
            client.error = f"{PREFIX}: over {self.max_connections} connections"
            self._connection_refused(client, 429, f"over {self.max_connections} open connections from this agent")
            return
        live.add(client.id)

    def client_disconnected(self, client) -> None:
        for live in self.connections.values():
            live.discard(client.id)
        self.tunnels.pop(client.id, None)

    def _connection_refused(self, conn, status: int, why: str) -> None:
        """A refusal no flow carries (a connection over the cap, a head over the bound, a malformed head)."""
        agent, _ = self._agent(conn)
        self.record.write({"event": "request", "time": round(time.time(), 3), "agent": agent, "method": "-",
                           "host": "-", "port": (conn.sockname or ("", 0))[1], "path": "", "status": status,
                           "decision": "refused", "reason": f"{PREFIX}: {why}", "bytes_out": 0, "bytes_in": 0})

    # -- requests -------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT through the forward proxy: only an allowed host, on 443 or a port its rule names."""
        agent, profile = self._agent(flow.client_conn)
        host, port = normalise_host(flow.request.host), flow.request.port
        flow.metadata["ultrawork"] = {"agent": agent, "decision": "allowed", "bytes": 0, "sent": 0}
        rule = host_rule(profile, host) if profile is not None else None
        if profile is None:
            why = f"requests from {self._peer(flow.client_conn)} are not from a known agent"
        elif rule is None:
            why = f"{_clip(host, 255)} is not on this agent's allowlist"
        elif port not in rule.get("ports", [443]):
            why = f"port {port} is not allowed for {host}"
        else:
            self.tunnels[flow.client_conn.id] = (host, port)
            return
        self._refuse(flow, 403, f"{PREFIX}: {why}")
        self._log(flow, 403)   # a refused tunnel gets no further events

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Decide before the body is read: refuse, or pin the upstream, inject the key and stream the body."""
        req = flow.request
        agent, profile = self._agent(flow.client_conn)
        meta = flow.metadata["ultrawork"] = {"agent": agent, "decision": "allowed", "bytes": 0, "sent": 0}
        declared = _declared_length(req)
        if flow.error is not None or declared > self.body_limit:
            return                      # mitmproxy refuses it (400 invalid, 413 body_size_limit); the error hook records it
        refusal = self._decide(flow, profile)
        if refusal is None and "upgrade" in req.headers:
            refusal = (403, f"{PREFIX}: protocol upgrades (WebSocket, h2c) are not forwarded")
        if refusal is None and declared < 0:
            refusal = (411, f"{PREFIX}: a request body needs a Content-Length (chunked bodies are not forwarded)")
        if refusal is not None:
            self._refuse(flow, *refusal)
            if declared < 0 or declared > SMALL_BODY:
                meta["closed"] = True
                flow.kill()             # not read into memory: the connection is closed instead
            return
        for name in list(req.headers.keys()):
            if name.lower() in STRIPPED_HEADERS:
                del req.headers[name]
        if meta.get("route"):
            cred = credential_for(profile, req.scheme, req.host, req.port, req.path.split("?", 1)[0])
            if cred is not None:
                req.headers[cred["header"]] = cred["value"]
        if declared > 0:
            def count(chunk: bytes) -> bytes:
                meta["sent"] += len(chunk)
                return chunk

            req.stream = count          # forwarded as it arrives, never held whole

    def _decide(self, flow: http.HTTPFlow, profile) -> tuple[int, str] | None:
        req, meta = flow.request, flow.metadata["ultrawork"]
        if profile is None:
            return 403, f"{PREFIX}: requests from {self._peer(flow.client_conn)} are not from a known agent"
        route = self.routes.get((flow.client_conn.sockname or ("", 0))[1])
        if route is not None:
            scheme, host, port = route
            if req.authority and _authority(req.authority, scheme) != (host, port):
                return 403, (f"{PREFIX}: the request target names {_clip(req.authority, 100)}; "
                             f"this route reaches only {host}:{port}")
            req.authority = ""          # origin-form upstream, whatever the request line said
            req.scheme, req.host, req.port = scheme, host, port
            req.host_header = hostport(scheme, host, port)
            meta["route"] = True
        else:
            tunnel = self.tunnels.get(flow.client_conn.id)
            if tunnel is None:
                return 403, f"{PREFIX}: plain HTTP through the proxy is refused; use HTTPS"
            host, port = tunnel
            sni = normalise_host(flow.client_conn.sni or "")
            if not flow.client_conn.tls_established:
                return 403, f"{PREFIX}: plain HTTP inside a tunnel is refused; use HTTPS"
            if sni != host:
                return 403, f"{PREFIX}: the TLS server name {_clip(sni, 100)!r} is not the tunnel's host {host}"
            named = _authority(req.host_header or "", "https")
            if named[0] != host or (req.authority and _authority(req.authority, "https") != (host, port)):
                return 403, f"{PREFIX}: the request names {_clip(req.host_header, 100)!r}, not the tunnel's host {host}"
            req.scheme, req.host, req.port = "https", host, port
        rule = host_rule(profile, req.host)
        if rule is None:
            return 403, f"{PREFIX}: {_clip(req.host, 255)} is not on this agent's allowlist"
        if not method_allowed(rule, _method(req)):
            return 403, f"{PREFIX}: {_clip(_method(req), 32)} is not allowed for {req.host}"
        return None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream every allowed response (model replies are server-sent events) and count its bytes."""
        meta = flow.metadata.get("ultrawork")
        if meta is None or meta["decision"] != "allowed":
            return

        def count(chunk: bytes) -> bytes:
            meta["bytes"] += len(chunk)
            return chunk

        flow.response.stream = count

    def response(self, flow: http.HTTPFlow) -> None:
        self._log(flow, flow.response.status_code)

    def error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("ultrawork") or {}
        message = str(flow.error.msg if flow.error else "error")
        if id(flow.request) in http1_bounds.MALFORMED or "smuggling" in message or "Invalid request" in message:
            http1_bounds.MALFORMED.discard(id(flow.request))
            self._refuse(flow, 400, f"{PREFIX}: malformed request: {_clip(message, 200)}")
            self._log(flow, 400)
        elif meta.get("closed"):
            self._log(flow, meta["status"], error="connection closed: the refused request had a body")
        elif "body_size_limit" in message:
            self._refuse(flow, 413, f"{PREFIX}: request body over {self.body_limit} bytes")
            self._log(flow, 413)
        elif flow.response is None or meta.get("decision") == "allowed":
            self._log(flow, 502, error=_clip(message, 200))

    async def server_connect(self, data) -> None:
        """Resolve the upstream here, refuse blocked addresses, and pin the address that was checked."""
        host, port = data.server.address
        data.server.sni = host          # the upstream's TLS name is the host checked, never the client's
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=1)
        except OSError as exc:
            data.server.error = f"{PREFIX}: cannot resolve {host}: {exc.strerror or exc}"
            return
        addresses = [info[4][0] for info in infos]
        for address in addresses:
            why = address_blocked(address, self.hard_blocked, self.allowed_private)
            if why:
                data.server.error = f"{PREFIX}: {host} resolves to a blocked address ({why})"
                return
        data.server.address = (addresses[0], port)

    # -- helpers ------------------------------------------------------------
    @staticmethod
    def _peer(conn) -> str:
        return (conn.peername or ("?",))[0]

    def _agent(self, conn):
        agent = agent_for_address(self.agents, self._peer(conn))
        local = (conn.sockname or ("",))[0]
        if agent is None or agent_for_address(self.agents, local) != agent:
            return None, None   # the request did not arrive on that agent's own network
        return agent, self.agents[agent]

    def _refuse(self, flow: http.HTTPFlow, status: int, message: str) -> None:
        meta = flow.metadata.setdefault("ultrawork", {"agent": self._agent(flow.client_conn)[0], "bytes": 0, "sent": 0})
        meta.update(decision="refused", reason=message, status=status)
        flow.response = http.Response.make(status, (message + "\n").encode(),
                                           {"Content-Type": "text/plain; charset=utf-8", "Connection": "close"})

    def _log(self, flow: http.HTTPFlow, status: int, error: str | None = None) -> None:
        meta = flow.metadata.get("ultrawork") or {"agent": self._agent(flow.client_conn)[0], "decision": "refused",
                                                  "bytes": 0, "sent": 0}
        if meta.get("logged"):
            return
        meta["logged"] = True
        req = flow.request
        body = flow.response.raw_content if flow.response is not None and not flow.response.stream else None
        sent = meta.get("sent") or (len(req.raw_content or b"") if not req.stream else 0)
        record = {
            "event": "request", "time": round(req.timestamp_start, 3), "agent": meta["agent"],
            "method": _clip(_method(req), 32), "host": _clip(req.host, 255), "port": req.port,
            "path": _clip(req.path.split("?", 1)[0], 512), "status": status,
            "decision": meta["decision"] if status != 502 else "failed", "bytes_out": sent,
            "bytes_in": meta["bytes"] + (len(body or b"") if meta["decision"] == "allowed" else 0),
        }
        if meta.get("reason"):
            record["reason"] = _clip(meta["reason"], 300)
        if error:
            record["error"] = error
            if PREFIX in error or meta.get("decision") == "refused":
                record["decision"] = "refused"
        self.record.write(record)


def _authority(authority: str, scheme: str) -> tuple[str, int | None]:
    try:
        host, port = parse_authority(authority, check=False)
    except ValueError:
        return "", None
    return normalise_host(host), port or (443 if scheme == "https" else 80)


addons = [EgressRules()]
