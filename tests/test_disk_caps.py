"""Disk bounded while the agent writes: floods into /workspace, /plan and /agent in real sandboxes.

Each flood is stopped near its folder's cap while it writes (ENOSPC on a loop-mounted image, or
the step monitor where loop devices are missing); the step that fills a cap ends with
``DiskLimitExceeded``, the siblings reach the review, and when the run ends every mount and image
is gone and a Plan.md folder holds only Plan.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, run_sisyphus

MiB = 1 << 20
pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo, run


class PeakDisk(threading.Thread):
    """Samples, every 0.1 s, what each capped folder of the run holds on the host's disk
    (blocks of its image, or a walk of a monitored folder), and what the run's folders hold."""

    def __init__(self, run_id: str):
        super().__init__(daemon=True)
        self.run_id, self.peaks, self.done = run_id, {}, threading.Event()

    def run(self) -> None:
        from ultrawork.sandbox import disk, disk_use

        while not self.done.wait(0.1):
            for cap in disk.records():
                if cap.run_id != self.run_id:
                    continue
                name = f"{cap.kind}:{cap.path.name}"
                try:
                    used = disk_use.usage(cap)
                except OSError:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0), used)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join(5)
        return self.peaks


def flood(path: str, mib: int) -> str:
    """Write ``mib`` MiB of real blocks (not a sparse file) and go on whatever happens."""
    return f"dd if=/dev/zero of={path} bs=1M count={mib} 2>&1 | tail -1; echo flooded {path}"


@pytest.mark.docker
@pytest.mark.prefect
@pytest.mark.parametrize("backend", ["loop", "monitor"])
def test_floods_stop_at_their_caps_and_the_siblings_reach_the_review(backend, prefect_api, uw_home, tmp_path,
                                                                     docker_client, monkeypatch):
    """loop: the host never holds more than a cap; monitor (no loop devices): the step is stopped
    within seconds of crossing it, so the host holds the cap plus what was written meanwhile."""
    from ultrawork.sandbox import disk, disk_use
    from ultrawork.tasks.sandboxes import engine

    if backend == "monitor":
        monkeypatch.setenv(disk.BACKEND_ENV, "monitor")
    elif disk.disk_backend().kind != "loop":
        pytest.skip(disk.disk_backend().sentence())

    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"dk-{uuid.uuid4().hex[:6]}"
    peak = PeakDisk(run_id)
    peak.start()
    result = run_sisyphus({
        "task": "Fix the TODO", "repo": str(repo), "run_id": run_id, "review_timeout": 3,
        "agents": ["explore", "librarian", "oracle", "frontend"],
        "agent_commands": {
            "frontend": ["sh", "-c", flood("/workspace/big.bin", 3072)],    # a writer: 3 GiB into its work tree
            "explore": ["sh", "-c", flood("/plan/junk.bin", 1024)],         # read-only: 1 GiB next to Plan.md
            "oracle": ["sh", "-c", flood("/agent/junk.bin", 1024)],         # 1 GiB into its scratch folder
        }})
    peaks = peak.stop()
    print(f"\n{disk.disk_backend().sentence()}")                     # shown with -s
    for name, used in sorted(peaks.items()):
        print(f"peak host-disk use of {name}: {used / MiB:.1f} MiB")

    assert result.outcome == "review-timed-out"                      # the run reached its review
    by_role = {o.role: o for o in result.agents}
    assert by_role["librarian"].status == "succeeded"                # siblings go on
    for role, where in (("frontend", "/workspace"), ("explore", "/plan"), ("oracle", "/agent")):
        errors = by_role[role].errors
        assert by_role[role].status == "failed", (role, errors)
        assert any(e.startswith("DiskLimitExceeded") and where in e for e in errors), (role, errors)

    # the host never held more than the caps (defaults: 1024 MiB work tree, 32 MiB Plan.md, 256 MiB /agent)
    caps = {"workspace": 1024, "plan": 32, "scratch": 256}
    seen = {kind: max((v for k, v in peaks.items() if k.startswith(kind + ":")), default=0) for kind in caps}
    assert seen["workspace"] > 900 * MiB and seen["plan"] > 24 * MiB and seen["scratch"] > 200 * MiB, seen
    for kind, mb in caps.items():
        if backend == "loop":
            assert seen[kind] <= mb * MiB, (kind, seen[kind])
    if backend == "monitor":   # stopped within a second or two of crossing (the peak then depends on the
        # write rate and the machine's load: printed, not asserted), and brought back under the cap
        assert any("removed 1 file(s) to bring the folder back under its 1024 MiB cap: big.bin" in e
                   for e in by_role["frontend"].errors), by_role["frontend"].errors

    # the 3 GiB file is not on the branch; the Plan.md folder holds Plan.md and nothing else
    assert "big.bin" not in git(repo, "ls-tree", "-r", "--name-only", f"ultrawork/{run_id}/frontend")
    plans = uw_home / "runs" / run_id / "plans"
    for role in by_role:
        assert sorted(os.listdir(plans / role)) == ["Plan.md"], role
    assert "DiskLimitExceeded" in (plans / "explore" / "Plan.md").read_text()
    # every mount and image is gone; no sandbox is left
    assert [c for c in disk.records() if c.run_id == run_id] == []
    assert not any(str(uw_home) in line for line in Path("/proc/mounts").read_text().splitlines())
    assert list((uw_home / "disk" / "images").iterdir()) == []
    assert engine().list(run_id=run_id) == []


def test_a_plan_folder_keeps_only_plan_md_and_a_full_folder_is_named(uw_home):
    """The mechanism alone: a capped folder fills with ENOSPC at its size (or is seen over it by the
    walk), over_cap names it, make_room clears all but Plan.md, release keeps only Plan.md."""
    from ultrawork.sandbox import disk, disk_use

    folder = uw_home / "runs" / "r1" / "plans" / "explore"
    cap = disk.cap_folder(folder, 8, run_id="r1", kind="plan", keep=("Plan.md",))
    st = os.stat(folder)
    assert (st.st_uid, st.st_gid) == ((0, 1000) if os.geteuid() == 0 else (st.st_uid, st.st_gid))
    assert os.listdir(folder) == []                                  # no lost+found for the agent to see
    (folder / "Plan.md").write_text("# plan\n")
    os.symlink("/etc/shadow", folder / "link")
    (folder / "sub").mkdir()
    done = subprocess.run(["dd", "if=/dev/zero", f"of={folder}/sub/junk", "bs=1M", "count=64"],
                          capture_output=True, text=True)
    if cap.backend == "loop":
        assert "No space left on device" in done.stderr
        assert disk_use.usage(cap) <= 8 * MiB
    hit = disk_use.over_cap({"/plan": folder})
    assert hit is not None and "/plan" in hit[0] and hit[1] == folder
    assert disk_use.make_room(folder) and sorted(os.listdir(folder)) == ["Plan.md"]
    assert disk_use.over_cap({"/plan": folder}) is None
    (folder / "more").write_text("x")
    disk.release(cap)
    assert os.listdir(folder) == ["Plan.md"] and (folder / "Plan.md").read_text() == "# plan\n"
    assert not os.path.ismount(folder) and disk.record_for(folder) is None
    assert list((uw_home / "disk" / "images").iterdir()) == []


def test_without_loop_devices_the_monitor_sees_a_folder_over_its_cap(uw_home, monkeypatch):
    from ultrawork.sandbox import disk, disk_use

    monkeypatch.setenv(disk.BACKEND_ENV, "monitor")
    assert disk.disk_backend().kind == "monitor" and "monitor" in disk.disk_backend().sentence()
    folder = uw_home / "runs" / "r1" / "agents" / "frontend"
    cap = disk.cap_folder(folder, 4, run_id="r1", kind="workspace")
    assert cap.backend == "monitor" and cap.image is None and not os.path.ismount(folder)
    with open(folder / "a", "wb") as fh:
        fh.write(b"\0" * (3 * MiB))
    assert disk_use.over_cap({"/workspace": folder / "."}) is None
    with open(folder / "b", "wb") as fh:
        fh.write(b"\0" * (2 * MiB))
    assert "4 MiB cap" in disk_use.over_cap({"/workspace": folder})[0]
    assert disk_use.make_room(folder) == ["removed 1 file(s) to bring the folder back under its 4 MiB cap: a"]
    assert os.listdir(folder) == ["b"] and disk_use.over_cap({"/workspace": folder}) is None
    disk.release(cap)
    assert disk.record_for(folder) is None


def test_the_reaper_releases_the_caps_of_a_process_that_died(uw_home):
    """A driver killed mid-run leaves its loop mounts; the reaper unmounts them and removes the images
    (Plan.md kept), and leaves the caps of live processes alone."""
    from ultrawork.sandbox import disk, disk_use
    from ultrawork.sandbox.reaper import reap_disk_caps

    mine = disk.cap_folder(uw_home / "runs" / "live" / "plans" / "oracle", 8, run_id="live", kind="plan",
                           keep=("Plan.md",))
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from ultrawork.sandbox import disk, disk_use
        folder = Path({str(uw_home)!r}) / "runs" / "dead" / "plans" / "explore"
        disk.cap_folder(folder, 8, run_id="dead", kind="plan", keep=("Plan.md",))
        (folder / "Plan.md").write_text("kept")
        (folder / "junk").write_text("gone")
        disk.cap_folder(Path({str(uw_home)!r}) / "runs" / "dead" / "agents" / "frontend", 8, run_id="dead",
                        kind="workspace")
        os._exit(0)          # dies without releasing anything
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "ULTRAWORK_HOME": str(uw_home)})
    dead = [c for c in disk.records() if c.run_id == "dead"]
    assert len(dead) == 2
    released = reap_disk_caps(None)
    assert sorted(released) == sorted(c.path for c in dead)
    plan = uw_home / "runs" / "dead" / "plans" / "explore"
    assert os.listdir(plan) == ["Plan.md"] and (plan / "Plan.md").read_text() == "kept"
    assert not any(os.path.ismount(c.path) for c in dead)
    assert disk.record_for(mine.path) is not None and (mine.backend != "loop" or os.path.ismount(mine.path))
    disk.release(mine)


def test_a_kept_name_that_is_a_link_is_never_read_or_followed(uw_home, tmp_path):
    from ultrawork.sandbox import disk, disk_use

    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    secret.chmod(0o600)
    folder = uw_home / "runs" / "r1" / "plans" / "oracle"
    cap = disk.cap_folder(folder, 8, run_id="r1", kind="plan", keep=("Plan.md",))
    os.symlink(secret, folder / "Plan.md")
    disk.release(cap)
    assert os.listdir(folder) == []                                  # the link is not kept, nor its target copied
    assert secret.read_text() == "host only" and (secret.stat().st_mode & 0o777) == 0o600


def test_a_released_work_tree_is_checked_out_again_into_a_new_cap(ultrawork_home, run):
    """The setup clones into the capped folders; a failed run (or the reaper) releases them; a resumed
    run checks the branch out again and moves the files into new caps (Plan.md kept throughout)."""
    from conftest_git import git as run_git

    from ultrawork.sandbox import disk, disk_use
    from ultrawork.sandbox.access import agent_sandbox_spec
    from ultrawork.sandbox.spec import Limits

    limits = Limits(workspace_mb=64, plan_mb=8)
    ws = run.add_agent("frontend", sandbox_spec={"limits": limits.model_dump(), "workspace_mode": "rw"})
    if disk.disk_backend().kind == "loop":
        assert os.path.ismount(ws.path) and os.path.ismount(ws.plan_path.parent)   # cloned into the caps
    assert disk.record_for(ws.path).size_mb == 64 and disk.record_for(ws.plan_path.parent).size_mb == 8
    (ws.path / "src" / "app.py").write_text("print('changed')\n")
    ws.commit_changes()
    plan_before = ws.plan_path.read_text()

    assert len(disk.release_run(run.run_id)) == 2                   # the run failed: its caps go
    assert os.listdir(ws.path) == [] and os.listdir(ws.plan_path.parent) == ["Plan.md"]
    assert ws.plan_path.read_text() == plan_before

    ws.reset_worktree()                                             # what a resumed run does first
    agent_sandbox_spec(ws, image="img", workspace_mode="rw", network="none", limits=limits, exec_timeout=60)
    if disk.disk_backend().kind == "loop":
        assert os.path.ismount(ws.path) and os.path.ismount(ws.plan_path.parent)
    assert (ws.path / "src" / "app.py").read_text() == "print('changed')\n"
    assert ws.plan_path.read_text().startswith(plan_before)
    assert ws.isolation_findings() == []
    assert run_git(ws.path, "status", "--porcelain") == ""


def test_a_cap_whose_mount_went_away_is_mounted_again_with_its_files(uw_home):
    """After a reboot the records and images are there but not the mounts: the folder is mounted
    again as it was (the work tree it holds is not lost), not made anew."""
    from ultrawork.sandbox import disk, disk_use

    if disk.disk_backend().kind != "loop":
        pytest.skip(disk.disk_backend().sentence())
    folder = uw_home / "runs" / "r1" / "agents" / "frontend"
    cap = disk.cap_folder(folder, 16, run_id="r1", kind="workspace")
    (folder / "work.txt").write_text("kept")
    subprocess.run(["umount", str(folder)], check=True)
    assert not os.path.ismount(folder) and os.listdir(folder) == []
    again = disk.cap_folder(folder, 16, run_id="r1", kind="workspace")
    assert again.key == cap.key and os.path.ismount(folder) and (folder / "work.txt").read_text() == "kept"
    disk.release(again)
    assert not os.path.ismount(folder) and not cap.image.exists()


@pytest.mark.parametrize("stop", ["failure", "cancel", "pause"])
def test_a_failed_or_cancelled_run_releases_its_caps_and_a_paused_one_keeps_them(stop, uw_home):
    import asyncio

    from prefect.exceptions import Pause

    from ultrawork.sandbox import disk
    from ultrawork.tasks.reaper import disk_released_on_failure

    folder = uw_home / "runs" / "r1" / "plans" / "frontend"
    disk.cap_folder(folder, 8, run_id="r1", kind="plan", keep=("Plan.md",))
    (folder / "Plan.md").write_text("# plan\n")
    raised = {"failure": RuntimeError("boom"), "cancel": asyncio.CancelledError(), "pause": Pause()}[stop]

    async def run() -> None:
        async with disk_released_on_failure("r1"):
            raise raised

    with pytest.raises(type(raised)):
        asyncio.run(run())
    kept = disk.record_for(folder)
    if stop == "pause":                     # suspended for its review: the work trees are needed again
        assert kept is not None
        disk.release(kept)
    else:
        assert kept is None and not os.path.ismount(folder)
    assert os.listdir(folder) == ["Plan.md"]


def test_the_policy_bounds_the_disk_caps_a_spec_may_ask_for(tmp_path):
    from ultrawork.sandbox import SandboxPolicy, SandboxSpec, validate_spec
    from ultrawork.sandbox.errors import SandboxPolicyError
    from ultrawork.sandbox.spec import Limits

    policy = SandboxPolicy(workspace_roots=[tmp_path])
    validate_spec(SandboxSpec(role="frontend", run_id="r1"), policy)
    for field, value in (("workspace_mb", 10 ** 7), ("plan_mb", 4096), ("agent_mb", 0), ("plan_mb", 1)):
        with pytest.raises(SandboxPolicyError, match=f"limits.{field}"):
            validate_spec(SandboxSpec(role="frontend", run_id="r1", limits=Limits(**{field: value})), policy)


def test_an_inode_flood_fills_its_own_image_not_the_hosts(uw_home):
    """Millions of empty files would exhaust the host's inodes; in a capped folder they exhaust the
    image's own inode table, and that counts as the cap reached."""
    from ultrawork.sandbox import disk, disk_use

    if disk.disk_backend().kind != "loop":
        pytest.skip(disk.disk_backend().sentence())
    folder = uw_home / "runs" / "r1" / "plans" / "librarian"
    cap = disk.cap_folder(folder, 4, run_id="r1", kind="plan", keep=("Plan.md",))
    host_free = os.statvfs(uw_home).f_favail
    made = 0
    with pytest.raises(OSError) as full:
        while made < 100_000:
            (folder / f"f{made}").touch()
            made += 1
    assert full.value.errno == 28 and made < 5000, made          # ENOSPC after the image's few inodes
    assert os.statvfs(uw_home).f_favail >= host_free - 10
    hit = disk_use.over_cap({"/plan": folder})
    assert hit is not None and "/plan is full" in hit[0]
    disk.release(cap)
