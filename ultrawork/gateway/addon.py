"""The mitmproxy addon inside the gateway container: deny by default, inject credentials, log.

Loaded by ``mitmdump -s``; reads the rules file named by ``$ULTRAWORK_GATEWAY_RULES``.
The agent is known by the address a request comes from (each agent network has
its own subnet), never by anything the agent sends. Every request is one JSON
line on stdout: time, agent, method, host, path (no query), status, bytes,
decision -- never a header value.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mitmproxy import http  # noqa: E402

from policy import (  # noqa: E402
    STRIPPED_HEADERS, address_blocked, agent_for_address, credential_for, host_rule, method_allowed,
)

PREFIX = "ultrawork gateway"


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


class EgressRules:
    def __init__(self) -> None:
        with open(os.environ["ULTRAWORK_GATEWAY_RULES"]) as fh:
            rules = json.load(fh)
        self.agents: dict = rules["agents"]
        self.routes: dict = {int(port): host for port, host in rules.get("routes", {}).items()}
        self.hard_blocked: list = rules.get("hard_blocked", [])
        self.allowed_private: list = rules.get("allowed_private", [])

    # -- events -------------------------------------------------------------
    def running(self) -> None:
        _emit({"event": "ready", "time": time.time(), "agents": sorted(self.agents)})

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT through the regular proxy: refuse hosts off the allowlist before any TLS."""
        agent, profile = self._agent(flow)
        host = flow.request.host
        if profile is None:
            self._refuse(flow, agent, f"{PREFIX}: requests from {self._peer(flow)} are not from a known agent")
        elif host_rule(profile, host) is None:
            self._refuse(flow, agent, f"{PREFIX}: {host} is not on this agent's allowlist")
        if flow.response is not None:
            self._log(flow, 403)   # a refused tunnel gets no further events

    def request(self, flow: http.HTTPFlow) -> None:
        agent, profile = self._agent(flow)
        req = flow.request
        host = req.host
        if profile is None:
            return self._refuse(flow, agent, f"{PREFIX}: requests from {self._peer(flow)} are not from a known agent")
        rule = host_rule(profile, host)
        if rule is None:
            return self._refuse(flow, agent, f"{PREFIX}: {host} is not on this agent's allowlist")
        if not method_allowed(rule, req.method):
            return self._refuse(flow, agent, f"{PREFIX}: {req.method} is not allowed for {host}")
        for name in list(req.headers.keys()):
            if name.lower() in STRIPPED_HEADERS:
                del req.headers[name]
        cred = credential_for(profile, req.scheme, host, req.port, req.path.split("?", 1)[0])
        if cred is not None:
            req.headers[cred["header"]] = cred["value"]
        flow.metadata["ultrawork"] = {"agent": agent, "decision": "allowed", "bytes": 0}

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
        if flow.response is None:
            self._log(flow, 502, error=str(flow.error.msg if flow.error else "error")[:200])

    async def server_connect(self, data) -> None:
        """Resolve the upstream here, refuse blocked addresses, and pin the address that was checked."""
        host, port = data.server.address
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
                _emit({"event": "blocked-address", "time": time.time(), "host": host, "reason": why})
                return
        data.server.address = (addresses[0], port)

    # -- helpers ------------------------------------------------------------
    @staticmethod
    def _peer(flow: http.HTTPFlow) -> str:
        return (flow.client_conn.peername or ("?",))[0]

    def _agent(self, flow: http.HTTPFlow):
        agent = agent_for_address(self.agents, self._peer(flow))
        local = (flow.client_conn.sockname or ("",))[0]
        if agent is None or agent_for_address(self.agents, local) != agent:
            return None, None   # the request did not arrive on that agent's own network
        return agent, self.agents[agent]

    def _refuse(self, flow: http.HTTPFlow, agent: str | None, message: str) -> None:
        flow.metadata["ultrawork"] = {"agent": agent, "decision": "refused", "reason": message, "bytes": 0}
        flow.response = http.Response.make(403, (message + "\n").encode(),
                                           {"Content-Type": "text/plain; charset=utf-8"})

    def _log(self, flow: http.HTTPFlow, status: int, error: str | None = None) -> None:
        meta = flow.metadata.get("ultrawork") or {"agent": None, "decision": "refused", "bytes": 0}
        if meta.get("logged"):
            return
        meta["logged"] = True
        req = flow.request
        body = flow.response.raw_content if flow.response is not None and not flow.response.stream else None
        record = {
            "event": "request", "time": round(req.timestamp_start, 3), "agent": meta["agent"],
            "method": req.method, "host": req.host, "port": req.port, "path": req.path.split("?", 1)[0][:512],
            "status": status, "decision": meta["decision"] if status != 502 else "failed",
            "bytes_out": len(req.raw_content or b""), "bytes_in": meta["bytes"] + len(body or b""),
        }
        if meta.get("reason"):
            record["reason"] = meta["reason"]
        if error:
            record["error"] = error
            if PREFIX in error:
                record["decision"] = "refused"
        _emit(record)


addons = [EgressRules()]
