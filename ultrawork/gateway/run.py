"""A run's egress: the one gateway of a run, found by run id from anywhere in the process.

A run whose agent profiles ask for egress (``network="gateway"`` and an egress
profile) starts one :class:`EgressGateway` for all of them before its agents
start, and stops it when they are done (success, failure or cancel). A sandbox
spec that says ``network="gateway"`` is turned into the agent's own internal
network and its placeholder environment here, just before the sandbox is made;
the sandbox policy allows exactly the networks of running gateways. No Prefect.

    egress = start_run_egress("run-1", {"frontend": profile.egress})
    spec = through_gateway(spec)          # network + ANTHROPIC_BASE_URL, placeholder key
    ...
    summaries = stop_run_egress("run-1")   # per agent: allowed / refused counts and hosts
    removal_left("run-1")                  # its container and networks are gone (removed in the background)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import GatewayError, GatewayRulesError
from .gateway import EgressGateway, EgressSummary, GatewayRules, check_rules
from .rules import AgentProfile as EgressProfile, Resolver, env_resolver

GATEWAY_NETWORK = "gateway"     # what a profile's ``network`` says to get its egress through the run's gateway

_LOCK = threading.Lock()
_RUNS: dict[str, "RunEgress"] = {}
_REMOVING: dict[str, threading.Thread] = {}     # run id -> the removal of its stopped gateway
_REMOVAL_ERRORS: dict[str, str] = {}
_TIMINGS: dict[str, dict[str, float]] = {}      # run id -> its gateway's start, stop and removal seconds


@dataclass
class RunEgress:
    """One run's gateway and what each agent has been told of it so far."""

    run_id: str
    gateway: EgressGateway
    seen: dict[str, int] = field(default_factory=dict)      # agent -> requests already logged
    restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: threading.Event = field(default_factory=threading.Event)   # set when its start ended
    failed: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)   # "start", "stop", "removal": how long each took

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait for a gateway still starting (a run starts it alongside its agents' setup)."""
        if not self.ready.wait(timeout):
            raise GatewayError(f"the egress gateway of run {self.run_id} did not start within {timeout:g}s")
        if self.failed:
            raise GatewayError(f"the egress gateway of run {self.run_id} did not start: {self.failed}")

    def ensure(self, note: Callable[[str], None] | None = None) -> None:
        """Restart the gateway if it is not serving (the recovery of a :class:`GatewayError`)."""
        with self.lock:
            try:
                self.gateway.check()
            except GatewayError as exc:
                self._restart(exc, note)

    def restart(self, why: BaseException, note: Callable[[str], None] | None = None) -> None:
        with self.lock:
            self._restart(why, note)

    def _restart(self, why: BaseException, note: Callable[[str], None] | None) -> None:
        self.gateway.restart()
        self.restarts += 1
        if note:
            note(f"egress gateway was not serving ({why}): restarted it (recovery: restart the gateway, then retry)")

    def new_requests(self, agent: str) -> list[dict]:
        """Requests of ``agent`` not returned before (the gateway's log, without header values)."""
        with self.lock:
            try:
                records = self.gateway.requests(agent)
            except GatewayError:
                return []
            start = self.seen.get(agent, 0)
            self.seen[agent] = len(records)
            return records[start:]


def egress_rules(profiles: dict[str, EgressProfile | None], upstream_ca: str | None = None,
                 allowed_private: list[str] | None = None) -> GatewayRules | None:
    """The gateway rules for the agents that have an egress profile, or None when none has.

    Refuses bad rules by name before anything starts (a credential for a host not on
    the allowlist is :class:`~ultrawork.gateway.errors.CredentialHostNotAllowed`)."""
    agents = {name: egress for name, egress in profiles.items() if egress is not None}
    if not agents:
        return None
    rules = GatewayRules(agents=agents, upstream_ca=upstream_ca, allowed_private=list(allowed_private or []))
    check_rules(rules)
    return rules


def start_run_egress(run_id: str, rules: GatewayRules, resolver: Resolver = env_resolver,
                     **gateway_options) -> RunEgress:
    """Start ``run_id``'s gateway (its secrets resolved on the host now) and register it."""
    with _LOCK:
        if run_id in _RUNS:
            raise GatewayError(f"run {run_id} already has a gateway")
        egress = RunEgress(run_id, EgressGateway(run_id, rules, resolver=resolver, **gateway_options))
        _RUNS[run_id] = egress
    started = time.monotonic()
    try:
        egress.gateway.start()
        egress.seconds["start"] = round(time.monotonic() - started, 3)
    except BaseException as exc:
        egress.failed = f"{type(exc).__name__}: {exc}"
        with _LOCK:
            _RUNS.pop(run_id, None)
        raise
    finally:
        egress.ready.set()
    return egress


def run_egress(run_id: str) -> RunEgress | None:
    with _LOCK:
        return _RUNS.get(run_id)


def stop_run_egress(run_id: str) -> dict[str, EgressSummary]:
    """Stop ``run_id``'s gateway; its agents' summaries.

    The container is killed first (the run's agents are gone: it serves nothing more and its
    record is final) and the summaries read; removing the container, its networks and its
    rules file, most of a second of engine work, then goes on in a thread of its own while
    the run goes on to its review. :func:`removal_left` waits for it; the process does too
    before it exits (the thread is not a daemon), and a killed process's leftovers are the
    reaper's."""
    with _LOCK:
        egress = _RUNS.pop(run_id, None)
    if egress is None:
        return {}
    stopping = time.monotonic()
    try:
        egress.gateway.halt()
    except BaseException:
        egress.gateway.stop()
        raise
    summaries = {agent: egress.gateway.summary(agent) for agent in egress.gateway.rules.agents}
    egress.seconds["stop"] = round(time.monotonic() - stopping, 3)
    _remember(run_id, egress.seconds)

    def remove() -> None:
        removing = time.monotonic()
        try:
            egress.gateway.stop()
            egress.seconds["removal"] = round(time.monotonic() - removing, 3)
        except Exception as exc:  # noqa: BLE001 - said by removal_left and the log; labelled for the reaper
            _REMOVAL_ERRORS[run_id] = str(exc)
            logging.getLogger("ultrawork.gateway").warning("run %s: %s", run_id, exc)

    thread = threading.Thread(target=remove, name=f"gateway-removal {run_id}", daemon=False)
    with _LOCK:
        _REMOVING[run_id] = thread
    thread.start()
    return summaries


def _remember(run_id: str, seconds: dict[str, float]) -> None:
    with _LOCK:
        _TIMINGS[run_id] = seconds
        while len(_TIMINGS) > 64:                   # the newest runs' only
            _TIMINGS.pop(next(iter(_TIMINGS)))


def gateway_seconds(run_id: str) -> dict[str, float]:
    """How long ``run_id``'s gateway took to start, to stop (what the run waited for) and to be removed
    (in the background, while the run went on); empty for a run without a gateway in this process."""
    with _LOCK:
        return dict(_TIMINGS.get(run_id, {}))


def removal_left(run_id: str, timeout: float = 120.0) -> str | None:
    """Wait until ``run_id``'s stopped gateway is removed; what its removal left behind, if anything."""
    with _LOCK:
        thread = _REMOVING.get(run_id)
    if thread is not None:
        thread.join(timeout)
        if thread.is_alive():
            return f"the gateway of run {run_id} was still being removed after {timeout:g}s"
        with _LOCK:
            _REMOVING.pop(run_id, None)
    return _REMOVAL_ERRORS.pop(run_id, None)


def gateway_networks() -> list[str]:
    """The agent networks of every running gateway of this process (the only networks besides
    ``none`` a sandbox may be put on for egress)."""
    with _LOCK:
        return [net for egress in _RUNS.values() for net in egress.gateway.networks.values()]


def _egress_of(spec) -> RunEgress | None:
    """The run's gateway when ``spec``'s sandbox uses it (its network is one of the agent's)."""
    egress = run_egress(spec.run_id)
    if egress is None or spec.role not in egress.gateway.rules.agents:
        return None
    if spec.network not in (GATEWAY_NETWORK, egress.gateway.networks.get(spec.role)):
        return None
    return egress


def through_gateway(spec, note: Callable[[str], None] | None = None):
    """``spec`` with ``network="gateway"`` replaced by its agent's gateway network and environment;
    a gateway that stopped serving is restarted first (and ``note`` told)."""
    egress = _egress_of(spec)
    if egress is None and spec.network in gateway_networks():
        raise GatewayRulesError("network", f"{spec.network} is another agent's gateway network; "
                                           f"say {GATEWAY_NETWORK!r} to get this agent's own")
    if egress is not None:
        egress.wait_ready()
    if spec.network != GATEWAY_NETWORK:
        if egress is not None:
            egress.ensure(note)
        return spec
    if egress is None:
        if run_egress(spec.run_id) is None:   # never started, or its start failed
            raise GatewayError(f"the {spec.role} agent needs the egress gateway, but run {spec.run_id} has none running")
        raise GatewayRulesError(f"agents.{spec.role}", "asks for the gateway network but has no egress profile")
    egress.ensure(note)
    net = egress.gateway.network_for(spec.role)
    return spec.model_copy(update={"network": net.network, "env": {**spec.env, **net.env},
                                   "allow_env": sorted(set(spec.allow_env) | set(net.env))})


def check_serving(spec) -> None:
    """Raise :class:`GatewayError` when ``spec``'s sandbox uses the run's gateway and it is not serving
    (a step that failed then failed for that reason: restart the gateway, then retry)."""
    egress = _egress_of(spec)
    if egress is not None:
        egress.gateway.check()


def step_requests(spec) -> list[dict]:
    """The gateway requests of ``spec``'s agent since the last call (none without a gateway)."""
    egress = _egress_of(spec)
    return egress.new_requests(spec.role) if egress is not None else []


def summary_markdown(summary: EgressSummary) -> str:
    """One Plan.md line per host: what the agent asked for on the network (no header values)."""
    head = (f"egress: {summary.allowed} allowed, {summary.refused} refused, {summary.failed} failed "
            f"({summary.bytes_out} bytes out, {summary.bytes_in} bytes in)")
    if summary.dropped:
        head += f"; {summary.dropped} more requests past the record's bound (counted, not recorded)"
    hosts = [f"{host}: " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
             for host, counts in sorted(summary.hosts.items())]
    return head + ("; " + "; ".join(hosts) if hosts else "")


def request_line(record: dict) -> str:
    """A gateway request as one log line: time, agent, method, host, path, status, bytes, decision."""
    when = record.get("time")
    at = (time.strftime("%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
          if isinstance(when, (int, float)) else "?")
    line = (f"{record.get('decision', '?')} {record.get('method', '?')} {record.get('host', '?')}"
            f"{record.get('path', '')} -> {record.get('status', '?')} "
            f"({record.get('bytes_out', 0)} bytes out, {record.get('bytes_in', 0)} bytes in, at {at})")
    if record.get("reason"):
        line += f": {record['reason']}"
    return line
