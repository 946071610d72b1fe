"""Shared fixtures: a real Docker engine (never skipped when CI=true) and sandbox helpers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def assert_hardened(attrs: dict) -> None:
    """What every ultrawork container must look like when inspected."""
    host = attrs["HostConfig"]
    config = attrs["Config"]
    assert host["CapDrop"] == ["ALL"], host["CapDrop"]
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"] or []), host["SecurityOpt"]
    assert not any("unconfined" in opt for opt in host["SecurityOpt"] or [])
    assert host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] and host["PidsLimit"] > 0
    assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] > 0
    assert host["Privileged"] is False
    assert host["Init"] is True
    uid = config["User"].split(":")[0]
    assert uid and uid not in ("0", "root"), config["User"]
    assert host["NetworkMode"] in ("none",) or attrs.get("_network_allowed"), host["NetworkMode"]
    labels = config["Labels"]
    assert labels["ultrawork.managed"] == "true"
    assert labels["ultrawork.run"] and labels["ultrawork.agent"]


@pytest.fixture(scope="session")
def docker_client():
    """The real Docker engine; a missing engine fails the run in CI and skips elsewhere."""
    from ultrawork.sandbox import EngineUnavailable, SandboxEngine

    try:
        client = SandboxEngine().client
    except EngineUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true and no Docker engine: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    from ultrawork.sandbox.spec import DEFAULT_IMAGE

    try:
        client.images.get(DEFAULT_IMAGE)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"sandbox image {DEFAULT_IMAGE} missing (the test command builds it): {exc}")
    return client


@pytest.fixture
def sandbox_root(tmp_path: Path) -> Path:
    root = tmp_path / "roots"
    root.mkdir()
    return root


@pytest.fixture
def run_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def engine(docker_client, sandbox_root, run_id):
    """A SandboxEngine whose every created container is inspected for the hardened defaults.

    At teardown, no container of this test's run may remain.
    """
    from ultrawork.sandbox import SandboxEngine, SandboxPolicy

    class CheckedEngine(SandboxEngine):
        def create(self, spec):
            sandbox = super().create(spec)
            attrs = self.client.api.inspect_container(sandbox.id)
            attrs["_network_allowed"] = spec.network != "none"
            assert_hardened(attrs)
            return sandbox

    eng = CheckedEngine(SandboxPolicy(workspace_roots=[sandbox_root]), client=docker_client)
    yield eng
    leftovers = eng.list(run_id=run_id)
    for info in leftovers:
        eng.cleanup(info.id)
    assert not leftovers, f"test left containers behind: {[i.name for i in leftovers]}"


def managed_container_ids(client) -> set[str]:
    return {c.id for c in client.containers.list(all=True, filters={"label": "ultrawork.managed=true"})}


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server (SQLite) for the whole session, started the way ``ultrawork`` starts it."""
    from ultrawork.local_server.manager import ensure_server, stop_server

    home = tmp_path_factory.mktemp("prefect-server")
    saved = {k: os.environ.get(k) for k in ("ULTRAWORK_HOME", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    os.environ["ULTRAWORK_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    url = ensure_server(start_timeout=180)  # exports PREFECT_API_URL and its auth string for subprocesses
    if saved["ULTRAWORK_HOME"] is None:
        os.environ.pop("ULTRAWORK_HOME")
    else:
        os.environ["ULTRAWORK_HOME"] = saved["ULTRAWORK_HOME"]
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: url,
                                         PREFECT_API_AUTH_STRING: os.environ["PREFECT_API_AUTH_STRING"]}):
            yield url
    finally:
        os.environ["ULTRAWORK_HOME"] = str(home)
        flush_prefect_workers()
        stop_server()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def flush_prefect_workers(timeout: float = 20.0) -> None:
    """Send the logs and events Prefect's workers still hold while the server answers: drained
    at interpreter exit instead, they would retry against a stopped server and hold pytest open."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)


@pytest.fixture(autouse=True)
def _no_mount_outlives_its_test(tmp_path):
    """A disk cap a test left mounted (a run it killed on purpose keeps its caps to be resumed) is
    unmounted when the test ends, so loop devices never pile up over the session."""
    yield
    import subprocess

    base = str(tmp_path) + "/"
    try:
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return
    for point in reversed(points):
        if point.startswith(base):
            subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture
def uw_home(tmp_path, monkeypatch) -> Path:
    """A private $ULTRAWORK_HOME for one test."""
    home = tmp_path / "uwhome"
    home.mkdir()
    monkeypatch.setenv("ULTRAWORK_HOME", str(home))
    return home


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright (never a downloaded browser).

    Missing Chromium or Playwright fails the run when CI=true and skips elsewhere;
    the test command installs both. Closed, with its processes, at teardown.
    """
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing (scripts/provision.sh installs Debian's chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        problem = f"playwright is not installed ({exc}); install the dev extra"
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true and no browser: {problem}")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(autouse=True)
def _disk_caps_released(monkeypatch):
    """What a test's agents capped on disk (loop mounts, images) is released when the test ends, as
    the end of their run would (a unit test's run never ends)."""
    import time as _time

    started = _time.time()
    yield
    from ultrawork.sandbox import disk
    from ultrawork.sandbox.procs import owner_token

    me = owner_token()
    for cap in disk.records():
        if cap.owner == me and cap.created >= started:
            disk.release(cap)
