"""The egress gateway: one hardened mitmproxy container per run, between agent networks and the world.

Each agent that needs egress gets its own Docker network, ``internal`` (no route
off it) and with no host address on its bridge (``inhibit_ipv4``: the host and
its services are not reachable from it), holding only that agent's sandbox and
the gateway. The gateway also sits on one upstream network for its own egress,
knows the agent by the subnet a request arrives from, and forwards only what
the agent's profile allows, injecting the credential the sandbox never sees.

    gateway = EgressGateway("run-1", GatewayRules(agents={"frontend": profile}))
    gateway.start()
    net = gateway.network_for("frontend")    # network_mode and env for the sandbox
    ...
    gateway.summary("frontend")             # allowed / refused counts and hosts
    gateway.stop()                          # idempotent; always removes container and networks
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests
from docker.types import LogConfig

from ultrawork.sandbox.procs import owner_token
from ultrawork.sandbox.spec import (
    LABEL_AGENT, LABEL_CREATED, LABEL_HOME, LABEL_MANAGED, LABEL_OWNER, LABEL_RUN, home_tag, ultrawork_home,
)

from .errors import GatewayError, GatewayRulesError
from .host import host_addresses
from .ca import CA_FILE, home_ca
from .image import GATEWAY_UID, build_gateway_image
from .record import RECORD_FILE, UNKNOWN, RecordReader
from .rules import (  # noqa: F401 - GatewayRules and check_rules are part of this module's interface
    FIRST_ROUTE_PORT, PLACEHOLDER, GatewayRules, Resolver, check_rules, env_resolver, resolve_credentials,
)

GATEWAY_ALIAS = "gateway"        # the gateway's name on every agent network
CONFIG_DIR = "/etc/ultrawork-gateway"   # rules and upstream CA, read-only
RECORD_DIR = "/var/lib/ultrawork-gateway/record"   # the run's record, written by the gateway
CODE_DIR = "/opt/ultrawork-gateway/addon"
OWNER_FILE = "owner"                    # the process that made the rules folder (see sandbox/reaper.py)
SUBNETS_FILE = "agents.json"            # the agents' subnets, written once their networks exist (see addon.py)
ADDON_FILES = ("launch.py", "addon.py", "policy.py", "record.py", "http1_bounds.py")
_CODE = Path(__file__).parent


@dataclass
class AgentNetwork:
    """What a sandbox needs to use the gateway: its ``network_mode`` and its environment."""

    agent: str
    network: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class EgressSummary:
    """What one agent asked for on the network."""

    agent: str
    allowed: int = 0
    refused: int = 0
    failed: int = 0
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)   # host -> {"allowed": n, "refused": n, ...}
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0      # requests past the agent's bound in the record: counted, not recorded one by one


def _private_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    return root


class EgressGateway:
    """One run's gateway: its container, its agent networks and its private rules file."""

    def __init__(self, run_id: str, rules: GatewayRules, resolver: Resolver = env_resolver,
                 upstream_network: str | None = None, client: docker.DockerClient | None = None,
                 image: str | None = None, memory_mb: int = 256, pids: int = 128, ready_timeout: float = 60.0,
                 body_limit_mb: int = 16, head_limit_kb: int = 64, connections_per_agent: int = 32,
                 record_lines_per_agent: int = 10000):
        self.run_id = run_id
        self.rules = rules
        self.resolver = resolver
        self.ports = check_rules(rules)          # bad rules are refused here, before anything starts
        self._upstream_given = upstream_network
        self.upstream_network = upstream_network
        self._client = client
        self.image = image
        self.memory_mb, self.pids, self.ready_timeout = memory_mb, pids, ready_timeout
        self.limits = {"body_bytes": body_limit_mb << 20, "head_bytes": head_limit_kb << 10,
                       "connections_per_agent": connections_per_agent, "record_lines_per_agent": record_lines_per_agent}
        self.record_dir: Path | None = None      # kept after stop: the run's record of requests
        self.record: RecordReader | None = None
        self.token = secrets.token_hex(3)
        self.networks: dict[str, str] = {}       # agent -> network name
        self.container_id: str | None = None
        self.config_dir: Path | None = None

    # -- engine ---------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=120)
                self._client.ping()
            except Exception as exc:  # docker raises several unrelated types here
                self._client = None
                raise GatewayError(f"no Docker engine answers: {exc.__class__.__name__}") from None
        return self._client

    def _labels(self, agent: str = "gateway") -> dict[str, str]:
        return {LABEL_MANAGED: "true", LABEL_RUN: self.run_id, LABEL_AGENT: agent, LABEL_OWNER: owner_token(),
                LABEL_CREATED: str(int(time.time())), LABEL_HOME: home_tag()}

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "EgressGateway":
        """Start the gateway (a no-op while it runs). Anything half made is removed on failure.

        mitmproxy takes most of a second to start, so it starts first, on the upstream network
        alone; the agents' networks are made meanwhile, their subnets handed to it in a file of
        their own (``agents.json``) and the container connected to them. It says it is ready
        only once it knows every agent's subnet."""
        if self.container_id is not None:
            self.check()
            return self
        resolved = {agent: resolve_credentials(agent, profile, self.resolver)
                    for agent, profile in self.rules.agents.items()}   # a missing secret: nothing started yet
        try:
            self.image = self.image or build_gateway_image()
            if self.upstream_network is None:
                self._make_networks([None])
            self._write_config(resolved)
            del resolved
            with ThreadPoolExecutor(max_workers=2) as pool:   # the container starts while the networks are made
                started = pool.submit(self._create_container, True)
                made = pool.submit(self._make_networks, list(self.rules.agents))
                started.result()
                made.result()
            self._write_subnets()
            self._connect_networks()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_networks(self, agents: list[str | None]) -> None:
        """The upstream network (None) and the agents' internal networks, one engine call each, side by side."""
        client = self.client
        base = f"ultrawork-gw-{self.run_id}-{self.token}"[:60]

        def make(agent: str | None) -> None:
            if agent is None:
                self.upstream_network = client.networks.create(
                    f"{base}-upstream", driver="bridge", labels=self._labels()).name
                return
            client.networks.create(f"{base}-{agent}", driver="bridge", internal=True, labels=self._labels(agent),
                                   options={"com.docker.network.bridge.inhibit_ipv4": "true"})
            self.networks[agent] = f"{base}-{agent}"      # what was made is removed by stop(), whatever failed

        try:
            with ThreadPoolExecutor(max_workers=min(8, len(agents))) as pool:
                list(pool.map(make, agents))
        except docker.errors.APIError as exc:
            raise GatewayError(f"creating the gateway's networks failed: {exc.explanation or exc}") from None
        self.networks = {agent: self.networks[agent] for agent in self.rules.agents if agent in self.networks}

    def _subnet(self, network: str) -> str:
        configs = (self.client.networks.get(network).attrs.get("IPAM") or {}).get("Config") or []
        subnets = [c["Subnet"] for c in configs if c.get("Subnet") and ":" not in c["Subnet"]]
        if not subnets:
            raise GatewayError(f"network {network} has no IPv4 subnet")
        return subnets[0]

    def _write_config(self, resolved: dict[str, list[dict]]) -> None:
        """The rules file (allowlists, credentials, routes, bounds); the agents' subnets follow in
        :meth:`_write_subnets` once their networks exist."""
        agents = {}
        hard_blocked = list(host_addresses())
        for agent, profile in self.rules.agents.items():
            agents[agent] = {"allow": [r.model_dump() for r in profile.allow], "credentials": resolved[agent]}
        upstream = self.client.networks.get(self.upstream_network).attrs.get("IPAM") or {}
        hard_blocked += [c["Gateway"] for c in upstream.get("Config") or [] if c.get("Gateway")]
        config = {"agents": agents, "routes": {str(port): up for up, port in self.ports.items()},
                  "hard_blocked": hard_blocked, "allowed_private": self.rules.allowed_private,
                  "limits": self.limits, "record": f"{RECORD_DIR}/{RECORD_FILE}"}
        owner = GATEWAY_UID if os.geteuid() == 0 else os.getuid()
        records = _private_dir(_private_dir(ultrawork_home() / "gateway") / "records") / f"{self.run_id}-{self.token}"
        records.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(records, owner, owner)     # the gateway writes its record here; nothing else is mounted rw
        self.record_dir = records
        self.record = RecordReader(str(records / RECORD_FILE))
        folder = _private_dir(ultrawork_home() / "gateway") / "runs"
        folder = _private_dir(folder) / f"{self.run_id}-{self.token}"
        folder.mkdir(mode=0o700)
        self.config_dir = folder
        self._private_file(OWNER_FILE, owner_token())   # the reaper keeps a folder whose maker lives
        for name, text in (("rules.json", json.dumps(config)), ("upstream-ca.pem", self.rules.upstream_ca or "")):
            self._private_file(name, text)
        # the home's gateway CA (made once, see ca.py), beside the rules: one mount less than a folder of its own
        self._private_file(CA_FILE, (home_ca() / CA_FILE).read_text())
        if os.geteuid() == 0:
            os.chown(folder, owner, owner)   # mounted as a folder: its own owner must be able to enter it

    def _private_file(self, name: str, text: str) -> None:
        """``name`` in the config folder, readable by the gateway's user alone, whole when it appears."""
        owner = GATEWAY_UID if os.geteuid() == 0 else os.getuid()
        partial = self.config_dir / f".{name}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), owner, owner)
        os.rename(partial, self.config_dir / name)

    def _write_subnets(self) -> None:
        """Each agent's subnet (by which the gateway knows it; also blocked as a destination)."""
        subnets = {agent: self._subnet(network) for agent, network in self.networks.items()}
        self._private_file(SUBNETS_FILE, json.dumps({"agents": subnets, "hard_blocked": sorted(subnets.values())}))

    def _command(self) -> list[str]:
        settings = {"scripts": [f"{CODE_DIR}/addon.py"], "connection_strategy": "lazy", "termlog_verbosity": "warn",
                    "confdir": "/tmp/mitmproxy", "body_size_limit": str(self.limits["body_bytes"]),
                    "http2": False,   # HTTP/1 only, where request heads are bounded (http1_bounds)
                    "mode": [f"reverse:{upstream}@{port}"
                             for upstream, port in sorted(self.ports.items(), key=lambda kv: kv[1])] or ["regular"]}
        if self.rules.upstream_ca:
            settings["ssl_verify_upstream_trusted_ca"] = f"{CONFIG_DIR}/upstream-ca.pem"
        return ["python3", f"{CODE_DIR}/launch.py", json.dumps(settings), CONFIG_DIR]

    def _create_container(self, start: bool) -> None:
        """The gateway's container on the upstream network (started when ``start``)."""
        client = self.client
        owner = GATEWAY_UID if os.geteuid() == 0 else os.getuid()
        memory = f"{self.memory_mb}m"
        try:
            container = client.containers.create(
                self.image, self._command(), name=f"ultrawork-{self.run_id}-gateway-{self.token}"[:120],
                hostname="gateway", user=f"{owner}:{owner}", labels=self._labels(),
                environment={"ULTRAWORK_GATEWAY_RULES": f"{CONFIG_DIR}/rules.json", "HOME": "/tmp"},
                network_mode=self.upstream_network, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                read_only=True, tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size=64m,uid={owner},gid={owner},mode=0700"},
                volumes={str(self.config_dir): {"bind": CONFIG_DIR, "mode": "ro"},
                         str(self.record_dir): {"bind": RECORD_DIR, "mode": "rw"},
                         **{str(_CODE / name): {"bind": f"{CODE_DIR}/{name}", "mode": "ro"} for name in ADDON_FILES}},
                pids_limit=self.pids, mem_limit=memory, memswap_limit=memory, nano_cpus=int(1e9), init=True,
                log_config=LogConfig(type="json-file", config={"max-size": "20m", "max-file": "2"}), detach=True)
            self.container_id = container.id
            if start:
                container.start()
        except docker.errors.APIError as exc:
            raise GatewayError(f"starting the gateway failed: {exc.explanation or exc}") from None

    def _connect_networks(self) -> None:
        """The container joins each agent's network, as ``gateway`` there."""
        api = self.client.api

        def connect(network: str) -> None:
            api.connect_container_to_network(self.container_id, network, aliases=[GATEWAY_ALIAS])

        try:
            with ThreadPoolExecutor(max_workers=min(8, len(self.networks) or 1)) as pool:
                list(pool.map(connect, self.networks.values()))
        except docker.errors.APIError as exc:
            raise GatewayError(f"connecting the gateway to its agents' networks failed: {exc.explanation or exc}") \
                from None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not any(e.get("event") == "ready" for e in self._live_events()):
            self.check()
            if time.monotonic() > deadline:
                raise GatewayError(f"the gateway was not ready within {self.ready_timeout:g}s")
            time.sleep(0.02)

    def _start_container(self) -> None:
        """A new container on networks and rules that exist (a restart): connected, then started."""
        self._create_container(start=False)
        self._connect_networks()
        try:
            self.client.api.start(self.container_id)
        except docker.errors.APIError as exc:
            raise GatewayError(f"starting the gateway failed: {exc.explanation or exc}") from None
        self._wait_ready()

    def check(self) -> None:
        """Raise :class:`GatewayError` unless the gateway's container is running."""
        if self.container_id is None:
            raise GatewayError("the gateway is not started")
        try:
            state = self.client.api.inspect_container(self.container_id)["State"]
        except docker.errors.NotFound:
            raise GatewayError("the gateway's container is gone") from None
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise GatewayError(f"the Docker engine does not answer about the gateway: {exc}") from None
        if not state.get("Running"):
            why = "it ran out of memory" if state.get("OOMKilled") else f"exit code {state.get('ExitCode')}"
            raise GatewayError(f"the gateway stopped ({why}); restart it")

    def restart(self) -> "EgressGateway":
        """A new gateway container on the same networks and rules (after a :class:`GatewayError`)."""
        if self.config_dir is None or not self.networks:
            return self.start()
        self._remove_container()
        try:
            self._start_container()
        except BaseException:
            self.stop()
            raise
        return self

    def network_for(self, agent: str) -> AgentNetwork:
        """The ``network_mode`` and environment a sandbox of ``agent`` must get."""
        if agent not in self.rules.agents:
            raise GatewayRulesError(f"agents.{agent}", "has no egress profile")
        self.check()
        profile = self.rules.agents[agent]
        env: dict[str, str] = {}
        for route in profile.routes:
            if route.base_url_env:
                env[route.base_url_env] = f"http://{GATEWAY_ALIAS}:{self.ports[route.upstream]}{route.base_url_path}"
        for cred in profile.credentials:
            if cred.placeholder_env:
                env[cred.placeholder_env] = PLACEHOLDER
        return AgentNetwork(agent, self.networks[agent], env)

    def route_url(self, upstream: str) -> str:
        """``http://gateway:<port>`` for a route's upstream (as written in the rules)."""
        from .rules import Route

        return f"http://{GATEWAY_ALIAS}:{self.ports[Route(upstream=upstream).upstream]}"

    # -- records --------------------------------------------------------------
    def _live_events(self) -> list[dict]:
        """The container's own events on stdout (its ``ready`` line); requests are in the record."""
        if self.container_id is None:
            return []
        try:
            raw = self.client.api.logs(self.container_id, stdout=True, stderr=False)
        except docker.errors.NotFound:
            raise GatewayError("the gateway's container is gone and its log with it") from None
        events = []
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def requests(self, agent: str | None = None) -> list[dict]:
        """Every request and refusal in the run's record, of ``agent`` or of all (read as it grows)."""
        if self.record is None:
            return []
        self.record.refresh()
        records = self.record.records if agent is None else self.record.by_agent.get(agent, [])
        return [e for e in records if e.get("event") == "request"]

    def dropped(self, agent: str | None) -> int:
        """Requests of ``agent`` (None: of no known agent) past its bound in the record."""
        if self.record is None:
            return 0
        self.record.refresh()
        return self.record.dropped.get(agent or UNKNOWN, 0)

    def summary(self, agent: str) -> EgressSummary:
        """Allowed, refused and failed counts and the hosts ``agent`` asked for."""
        out = EgressSummary(agent, dropped=self.dropped(agent))
        for e in self.requests(agent):
            decision = e.get("decision", "refused")
            setattr(out, decision, getattr(out, decision, 0) + 1)
            per_host = out.hosts.setdefault(e.get("host", "?"), {})
            per_host[decision] = per_host.get(decision, 0) + 1
            out.bytes_in += int(e.get("bytes_in") or 0)
            out.bytes_out += int(e.get("bytes_out") or 0)
        return out

    # -- teardown -------------------------------------------------------------
    def _remove_container(self) -> None:
        if self.container_id is None:
            return
        try:
            self.client.api.remove_container(self.container_id, force=True)
        except docker.errors.NotFound:
            pass
        self.container_id = None

    def halt(self) -> None:
        """Freeze the gateway's processes (``docker pause``, a few milliseconds): it serves nothing more
        and its record is final. :meth:`stop` removes it."""
        if self.container_id is None:
            return
        try:
            self.client.api.pause(self.container_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "is not running" not in str(exc) and "already paused" not in str(exc):
                raise GatewayError(f"stopping the gateway failed: {exc.explanation or exc}") from None

    def stop(self) -> None:
        """Remove the container, the networks it made and its rules file. Safe to call again."""
        errors = []
        try:
            self._remove_container()
        except Exception as exc:  # keep going: the networks and the secret file must go too
            errors.append(f"container: {exc}")
        owned = list(self.networks.values())
        if self._upstream_given is None and self.upstream_network:
            owned.append(self.upstream_network)
        def remove(name: str) -> None:
            try:
                network = self.client.networks.get(name)
                for cid in (network.attrs.get("Containers") or {}):
                    network.disconnect(cid, force=True)   # a sandbox left on it loses its only network
                network.remove()
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                errors.append(f"network {name}: {exc}")

        # one engine call each, side by side; plain threads, as this may run while the interpreter exits
        removals = [threading.Thread(target=remove, args=(name,), name=f"remove {name}") for name in owned]
        for thread in removals:
            thread.start()
        for thread in removals:
            thread.join()
        self.networks = {}
        if self._upstream_given is None:
            self.upstream_network = None
        if self.config_dir is not None:
            shutil.rmtree(self.config_dir, ignore_errors=True)
            self.config_dir = None
        if errors:
            raise GatewayError("stopping the gateway left something behind: " + "; ".join(errors))
