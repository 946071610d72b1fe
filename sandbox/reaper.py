"""The reaper: remove what runs that are no longer active left behind.

Runs at the start of every run and on ``ultrawork sandboxes reap``:

- containers whose creating process is gone and whose run is not active;
- agent clones (``runs/<id>/agents/<role>``) of runs that have finished;
- temporary integration checkouts of runs that are not active;
- scratch volumes of sandboxes that are gone (removed from outside without ``-v``);
- egress gateways' networks and private rules folders of runs that are not active
  (the gateway's container is a managed container like a sandbox, reaped above);
- disk caps (``ultrawork.sandbox.disk``): the /agent folder of a sandbox that is gone, and the
  work trees and Plan.md folders of runs whose process died (unmounted, images removed,
  Plan.md kept).

Only what belongs to this ``$ULTRAWORK_HOME`` is touched: containers and volumes
carry its tag (``ultrawork.home``), checkouts carry it in their name; another
home's are left alone, and so are the sandboxes of an MCP server bound to a run
while that server lives.

Branches (in the target repository), Plan.md files and the superproject
history are kept: they are the run's record.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ultrawork.workspace.ledger import RunInconsistent, run_finished
from ultrawork.workspace.superproject import ultrawork_home

import docker.errors

from . import agent_tree, disk
from .engine import SandboxEngine, SandboxInfo
from .procs import owner_alive
from .spec import LABEL_HOME, LABEL_MANAGED, LABEL_OWNER, LABEL_RUN, home_tag

CHECKOUT_PREFIX = "ultrawork-integrate-"
_TAGGED = re.compile(r"^[0-9a-f]{16}-")


@dataclass
class ReapReport:
    containers: list[SandboxInfo] = field(default_factory=list)
    clones: list[Path] = field(default_factory=list)
    checkouts: list[Path] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    gateway_dirs: list[Path] = field(default_factory=list)
    disk_caps: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (len(self.containers) + len(self.clones) + len(self.checkouts) + len(self.volumes)
                + len(self.networks) + len(self.gateway_dirs) + len(self.disk_caps))


def run_owner(run_id: str) -> str | None:
    try:
        data = json.loads((ultrawork_home() / "runs" / run_id / "orchestration.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("owner")


def run_is_active(run_id: str) -> bool:
    """A run is active while the process that drives it lives."""
    owner = run_owner(run_id)
    return bool(owner) and owner_alive(owner)


def release_clones(run_dir: Path) -> list[Path]:
    """Empty ``agents/<role>`` and remove its git directory ``.git/modules/<role>`` (full clones of
    the target, whose branches are in the target already); the submodule entries stay."""
    removed = []
    disk.release_run(run_dir.name)          # unmounted first; of a Plan.md folder only Plan.md stays
    agents = run_dir / "agents"
    for clone in sorted(agents.iterdir()) if agents.is_dir() else []:
        if clone.is_dir() and not clone.is_symlink() and _holds_anything(clone):
            agent_tree.remove(clone)                    # an agent's work tree
            clone.mkdir()
            removed.append(clone)
        git_dir = run_dir / ".git" / "modules" / clone.name
        if git_dir.is_dir() and not git_dir.is_symlink():
            shutil.rmtree(git_dir)
    return removed


def _holds_anything(clone: Path) -> bool:
    """``agents/<role>`` is a folder with at least one entry (read by descriptor: an agent wrote it)."""
    try:
        return clone.is_dir() and not clone.is_symlink() and next(agent_tree.walk(clone, max_entries=1), None) is not None
    except OSError:     # TreeLimitExceeded included: more than one entry
        return True


def reap(engine: SandboxEngine | None, all: bool = False, older_than: float | None = None) -> ReapReport:
    report = ReapReport()
    if engine is not None:
        report.containers = engine.reap(all=all, older_than=older_than, is_active=run_is_active)
        report.volumes = engine.prune_volumes()
        report.networks = reap_gateway_networks(engine, all=all)
    report.gateway_dirs = reap_gateway_dirs(engine, all=all)
    report.disk_caps = reap_disk_caps(engine)
    runs = ultrawork_home() / "runs"
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        agents, modules = run_dir / "agents", run_dir / ".git" / "modules"
        if not ((agents.is_dir() and any(_holds_anything(c) for c in agents.iterdir()))
                or (modules.is_dir() and any(modules.iterdir()))):
            continue  # nothing to release (the common case once a run is done)
        if run_is_active(run_dir.name):
            continue
        try:
            finished = run_finished(run_dir)
        except RunInconsistent:  # an unreadable run is left for a human
            continue
        if finished:
            report.clones += release_clones(run_dir)
    for checkout in Path(tempfile.gettempdir()).glob(f"{CHECKOUT_PREFIX}*"):
        run_id = checkout_run(checkout.name, runs)
        if run_id and checkout.is_dir() and not checkout.is_symlink() and not run_is_active(run_id):
            shutil.rmtree(checkout, ignore_errors=True)
            report.checkouts.append(checkout)
    return report


SCRATCH_GRACE = 60.0    # seconds a sandbox's /agent folder may wait for its container to exist


def reap_disk_caps(engine: SandboxEngine | None) -> list[Path]:
    """Release the disk caps nothing needs any more: a sandbox's /agent folder once its container is
    gone, and a run's work trees and Plan.md folders once the process that made them died and the run
    is neither active nor resumable (a finished run's are released with its clones)."""
    try:
        live = {info.disk for info in engine.list(home=home_tag())} if engine is not None else None
    except Exception:  # noqa: BLE001 - no engine answer: only what dead processes left goes
        live = None

    def stale(cap: disk.DiskCap) -> bool:
        if cap.kind == "scratch":
            if live is None:
                return disk.owner_gone(cap)
            return cap.key not in live and (disk.owner_gone(cap) or time.time() - cap.created > SCRATCH_GRACE)
        return disk.owner_gone(cap) and not run_is_active(cap.run_id) and not _resumable(cap.run_id)

    return [cap.path for cap in disk.reap(stale)]


def _resumable(run_id: str) -> bool:
    """A run that is not finished can be resumed: its work trees keep their caps (and what its agents
    wrote that is not committed yet, which a resumed model agent's conversation goes on from)."""
    run_dir = ultrawork_home() / "runs" / run_id
    if not (run_dir / "run.json").is_file():       # no run (any more): nothing to resume
        return False
    try:
        return not run_finished(run_dir)
    except RunInconsistent:      # left for a human, with its files
        return True


def checkout_run(name: str, runs: Path) -> str | None:
    """The run a temporary checkout named ``name`` belongs to, if it is this home's.

    ``ultrawork-integrate-<home tag>-<run>-<random>``; a name without a tag (made before
    checkouts carried one) is this home's only when the home has that run.
    """
    rest = name[len(CHECKOUT_PREFIX):]
    mine = f"{home_tag()}-"
    if rest.startswith(mine):
        return rest[len(mine):].rsplit("-", 1)[0] or None
    if _TAGGED.match(rest):
        return None  # another home's
    run_id = rest.rsplit("-", 1)[0]
    return run_id if run_id and (runs / run_id).is_dir() else None


def _gateway_alive(engine: SandboxEngine | None, run_id: str) -> bool:
    """A gateway (or sandbox) of ``run_id`` whose creating process still lives; a gateway's networks
    are made before its rules folder, so one that is still starting counts too."""
    if engine is None:
        return True    # cannot tell: keep
    if any(owner_alive(info.owner) for info in engine.list(run_id=run_id, home=home_tag())):
        return True
    try:
        networks = engine.client.networks.list(filters={"label": [f"{LABEL_RUN}={run_id}", f"{LABEL_HOME}={home_tag()}"]})
    except docker.errors.APIError:
        return True
    return any(owner_alive((n.attrs.get("Labels") or {}).get(LABEL_OWNER, "")) for n in networks)


def reap_gateway_networks(engine: SandboxEngine, all: bool = False) -> list[str]:
    """Remove this home's gateway networks whose creator is gone and whose run is not active."""
    removed = []
    try:
        networks = engine.client.networks.list(filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_HOME}={home_tag()}"]})
    except docker.errors.APIError:
        return removed
    for network in networks:
        labels = network.attrs.get("Labels") or {}
        run_id = labels.get(LABEL_RUN, "")
        if not all and (owner_alive(labels.get(LABEL_OWNER, "")) or run_is_active(run_id)):
            continue
        try:
            network.reload()
            for cid in network.attrs.get("Containers") or {}:
                network.disconnect(cid, force=True)
            network.remove()
            removed.append(network.name)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError:
            continue   # in use by something this home does not own: left alone
    return removed


def _maker_alive(folder: Path) -> bool:
    """Whether the process that made a gateway rules folder lives (it writes its owner token there
    first: a gateway still starting, before any container or network of its run exists)."""
    try:
        found = agent_tree.read_bytes(folder, "owner", 256)
    except (OSError, ValueError):
        return False
    return found is not None and bool(found[0]) and owner_alive(found[0].decode(errors="replace").strip())


def reap_gateway_dirs(engine: SandboxEngine | None, all: bool = False) -> list[Path]:
    """Remove gateway rules folders (``gateway/runs/<run>-<token>``, holding resolved secrets) of runs
    that are not active and have no live gateway."""
    removed = []
    root = ultrawork_home() / "gateway" / "runs"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        run_id = folder.name.rsplit("-", 1)[0]
        if folder.is_symlink() or not folder.is_dir():
            continue
        if not all and (run_is_active(run_id) or _maker_alive(folder) or _gateway_alive(engine, run_id)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
