"""A run's gateway seen from its sandbox specs: each agent gets its own network, never another's."""

from __future__ import annotations

import secrets

import pytest

pytestmark = pytest.mark.docker


def test_a_spec_naming_another_agents_gateway_network_is_refused(docker_client, tmp_path, monkeypatch):
    from ultrawork.agents.profiles import CLI_EGRESS
    from ultrawork.gateway import GatewayRulesError
    from ultrawork.gateway.run import (
        egress_rules, gateway_networks, removal_left, start_run_egress, stop_run_egress, through_gateway,
    )
    from ultrawork.sandbox import SandboxSpec

    monkeypatch.setenv("ULTRAWORK_HOME", str(tmp_path / "home"))
    run_a, run_b = f"tga{secrets.token_hex(4)}", f"tgb{secrets.token_hex(4)}"
    rules = egress_rules({"explore": CLI_EGRESS["claude-code"], "frontend": CLI_EGRESS["claude-code"]})
    key = {"env:ANTHROPIC_API_KEY": "sk-not-used"}.__getitem__
    try:
        a = start_run_egress(run_a, rules, key, client=docker_client)
        b = start_run_egress(run_b, rules, key, client=docker_client)
        own = through_gateway(SandboxSpec(role="explore", run_id=run_a, network="gateway"))
        assert own.network == a.gateway.networks["explore"] and own.env["ANTHROPIC_API_KEY"] == "ultrawork-placeholder"
        assert own.env["ANTHROPIC_BASE_URL"].startswith("http://gateway:")
        for stolen in (a.gateway.networks["frontend"], b.gateway.networks["explore"]):   # a sibling's, another run's
            with pytest.raises(GatewayRulesError, match="another agent's gateway network"):
                through_gateway(SandboxSpec(role="explore", run_id=run_a, network=stolen))
        with pytest.raises(GatewayRulesError, match="has no egress profile"):
            through_gateway(SandboxSpec(role="oracle", run_id=run_a, network="gateway"))
    finally:
        stop_run_egress(run_a)
        stop_run_egress(run_b)
    assert gateway_networks() == []
    assert removal_left(run_a) is None and removal_left(run_b) is None
    assert docker_client.networks.list(filters={"label": f"ultrawork.run={run_a}"}) == []


def test_a_steps_gateway_requests_reach_its_log_while_it_runs_and_are_capped(monkeypatch):
    """The step's requests are read from the record every half second while the step runs (not after
    it), and at most EGRESS_LINES of them reach the log, then one line with the count left out."""
    import asyncio
    import time

    from ultrawork.tasks import sandboxes

    records: list[dict] = []
    monkeypatch.setattr(sandboxes, "step_requests", lambda spec: [records.pop(0) for _ in list(records)])
    monkeypatch.setattr(sandboxes, "EGRESS_LINES", 5)
    lines: list[tuple[float, str]] = []

    async def step() -> None:
        log = sandboxes.EgressLog(lambda text: lines.append((time.monotonic(), text)))
        following = asyncio.ensure_future(log.follow(None))
        started = time.monotonic()
        records.append({"decision": "allowed", "method": "POST", "host": "api.model.test", "path": "/v1/messages",
                        "status": 200, "time": time.time()})
        await asyncio.sleep(1.5)                          # the step is still running
        assert len(lines) == 1 and lines[0][0] - started < 1.0, lines
        records.extend({"decision": "refused", "method": "GET", "host": "x", "path": f"/{i}", "status": 403}
                       for i in range(20))
        await log.stop(following)

    asyncio.run(step())
    assert len(lines) == 6 and lines[-1][1].startswith("[16 more gateway requests of this step not logged")


def test_the_hosts_reader_of_the_record_takes_only_regular_files_and_whole_lines(tmp_path):
    """The record folder is the gateway's to write: a link, a FIFO (which would block the reader) or a
    half-written line put there is not read."""
    import json
    import os

    from ultrawork.gateway.record import RecordReader, RecordWriter, read_dropped

    writer = RecordWriter(str(tmp_path / "requests.jsonl"), 2)
    for i in range(5):
        writer.write({"event": "request", "agent": "explore", "path": f"/{i}"})
    writer.close()
    with open(tmp_path / "requests.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "request", "agent": "explore", "path": "/half"})[:20])   # no newline yet
    reader = RecordReader(str(tmp_path / "requests.jsonl"))
    reader.refresh()
    assert [r["path"] for r in reader.by_agent["explore"]] == ["/0", "/1"] and reader.dropped == {"explore": 3}
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "requests.jsonl", tmp_path / "link")
    for name in ("fifo", "link"):
        other = RecordReader(str(tmp_path / name))
        other.refresh()
        assert other.records == [] and read_dropped(str(tmp_path / name)) == {}
