"""The reaper removes what the egress gateway of a dead process left: container, networks, rules folder."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.docker

START_AND_HANG = """
import sys, time
from ultrawork.gateway import AgentProfile, EgressGateway, GatewayRules, HostRule, Route
rules = GatewayRules(agents={"explore": AgentProfile(allow=[HostRule(host="pkgs.model.test", methods=["GET"])],
                                                     routes=[Route(upstream="https://pkgs.model.test")])})
EgressGateway(sys.argv[1], rules).start()
print("started", flush=True)
time.sleep(600)
"""


def _labelled(docker_client, run_id: str) -> tuple[list, list]:
    label = {"label": f"ultrawork.run={run_id}"}
    return docker_client.containers.list(all=True, filters=label), docker_client.networks.list(filters=label)


def test_the_gateway_of_a_killed_process_is_reaped_and_a_live_one_kept(docker_client, tmp_path, monkeypatch):
    from ultrawork.gateway import AgentProfile, EgressGateway, GatewayRules, HostRule, Route
    from ultrawork.sandbox import SandboxEngine, SandboxPolicy
    from ultrawork.sandbox.reaper import reap

    home = tmp_path / "home"
    monkeypatch.setenv("ULTRAWORK_HOME", str(home))
    dead_run, live_run = f"tgr{secrets.token_hex(4)}", f"tgl{secrets.token_hex(4)}"
    proc = subprocess.Popen([sys.executable, "-c", START_AND_HANG, dead_run], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    live = EgressGateway(live_run, GatewayRules(agents={"explore": AgentProfile(
        allow=[HostRule(host="pkgs.model.test", methods=["GET"])], routes=[Route(upstream="https://pkgs.model.test")])}),
        client=docker_client)
    try:
        assert proc.stdout.readline().strip() == "started", proc.stderr.read()
        live.start()
        proc.kill()
        proc.wait(30)
        containers, networks = _labelled(docker_client, dead_run)
        assert len(containers) == 1 and len(networks) == 2       # gateway; its agent and upstream networks
        rules_root = home / "gateway" / "runs"
        assert any(p.name.startswith(dead_run) for p in rules_root.iterdir())

        report = reap(SandboxEngine(SandboxPolicy(workspace_roots=[home]), client=docker_client))

        assert _labelled(docker_client, dead_run) == ([], [])
        assert sorted(report.networks) == sorted(n.name for n in networks)
        assert [p.name.rsplit("-", 1)[0] for p in report.gateway_dirs] == [dead_run]
        assert not any(p.name.startswith(dead_run) for p in rules_root.iterdir())
        # the gateway of a process that lives is left alone
        containers, networks = _labelled(docker_client, live_run)
        assert len(containers) == 1 and len(networks) == 2
        live.check()
        assert any(p.name.startswith(live_run) for p in rules_root.iterdir())
    finally:
        if proc.poll() is None:
            proc.kill()
        live.stop()
        for container in _labelled(docker_client, dead_run)[0]:
            container.remove(force=True)
        for network in _labelled(docker_client, dead_run)[1]:
            network.remove()
