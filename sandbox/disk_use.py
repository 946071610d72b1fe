"""What capped folders hold (``ultrawork.sandbox.disk``): whether a step filled one, and room made after.

Called while a step runs (every 0.25 s with loop-mounted images, a ``statvfs``; once a second with
the monitor fallback, a walk bounded in entries) and once after it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Mapping

from . import agent_tree
from .disk import DiskCap, mounted, record_path, record_for, remove_all_but

WALK_ENTRIES = 200_000                     # the monitor's walk stops counting there (and calls it over)
FULL_FREE_BYTES = 2 << 20                  # a capped filesystem with less free is full: its cap was hit
                                           # (ext4 refuses a write with up to ~1 MiB still shown free)
FULL_FREE_INODES = 8


def _walk_bytes(path: Path, limit: int) -> int:
    """Bytes allocated under ``path`` (by descriptor, links not followed), stopping once past ``limit``."""
    return agent_tree.allocated_bytes(path, limit, WALK_ENTRIES)


def usage(cap: DiskCap) -> int:
    """Bytes the folder holds on the host's disk now."""
    if cap.backend == "loop" and cap.image is not None:
        try:
            return os.stat(cap.image).st_blocks * 512
        except FileNotFoundError:
            return 0
    return _walk_bytes(cap.path, cap.size_mb << 20)


def cap_holding(folder: Path) -> DiskCap | None:
    """The cap ``folder`` is (or lies in: a sandbox may mount a subfolder of a capped work tree)."""
    folder = Path(os.path.realpath(folder))
    for candidate in [folder, *folder.parents][:8]:
        cap = record_for(candidate)
        if cap is not None:
            return cap
    return None


def sandbox_folders(sandbox) -> dict[str, Path]:
    """What ``sandbox`` can write on the host's disk: sandbox path -> host folder."""
    spec = sandbox.spec
    folders: dict[str, Path] = {}
    if spec.workspace is not None and spec.workspace_mode == "rw":
        folders["/workspace"] = Path(spec.workspace)
    for mount in spec.mounts:
        if not mount.read_only:
            folders[mount.target] = Path(mount.source)
    key = getattr(sandbox, "scratch", None)
    if key and key.isalnum():
        try:
            folders["/agent"] = Path(json.loads(record_path(key).read_text())["path"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return folders


def over_cap(folders: Mapping[str, Path]) -> tuple[str, Path] | None:
    """Which of ``folders`` (sandbox path -> host folder) reached its cap: (sentence, host folder), or None.

    A loop-mounted folder reached it when its filesystem is full (space or inodes); a monitored
    one when a bounded walk counts more than its size."""
    for target, folder in folders.items():
        cap = cap_holding(folder)
        if cap is None:
            continue
        if cap.backend == "loop":
            if not mounted(cap.path):
                continue
            st = os.statvfs(cap.path)
            if (st.f_bavail * st.f_frsize < min(FULL_FREE_BYTES, (cap.size_mb << 20) // 20)
                    or st.f_favail < FULL_FREE_INODES):
                return (f"{target} is full: it reached its {cap.size_mb} MiB cap (writes past it failed "
                        "with 'No space left on device')"), cap.path
        elif _walk_bytes(cap.path, cap.size_mb << 20) > cap.size_mb << 20:
            return f"{target} holds more than its {cap.size_mb} MiB cap; the step was stopped", cap.path
    return None


def make_room(folder: Path) -> list[str]:
    """After a step filled ``folder``: in a folder that keeps only some files (the Plan.md folder)
    remove the rest, and cut a kept file that alone fills the folder to half its cap, so the host
    can append its notes; in a monitored folder over its cap (the fallback lets a step write past
    it for a moment) remove the largest files until it is under the cap again. No sandbox process
    runs (each step's processes are killed when it ends). What was done, as sentences."""
    cap = cap_holding(folder)
    if cap is None:
        return []
    if not cap.keep:
        return _shrink(cap) if cap.backend == "monitor" else []
    done = []
    others = remove_all_but(cap.path, cap.keep)
    if others:
        done.append(f"removed what the agent wrote in the folder besides {', '.join(cap.keep)}: "
                    f"{', '.join(sorted(others)[:5])}{' ...' if len(others) > 5 else ''}")
    half = (cap.size_mb << 20) // 2
    for name in cap.keep:
        try:
            fd = os.open(cap.path / name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size > half:
                os.ftruncate(fd, half)
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, f"\n\n[cut by the host: {name} filled its {cap.size_mb} MiB folder]\n".encode())
                done.append(f"cut {name} to {half >> 20} MiB")
        finally:
            os.close(fd)
    return done


def _shrink(cap: DiskCap) -> list[str]:
    """Remove the largest regular files of a monitored folder until it holds no more than its cap."""
    limit = cap.size_mb << 20
    files, total = [], 0
    try:
        for entry in agent_tree.walk(cap.path, max_entries=WALK_ENTRIES):      # by descriptor
            total += entry.stat.st_blocks * 512
            if entry.is_file:
                files.append((entry.stat.st_blocks * 512, entry.rel))
    except OSError:                       # past its entries: what was counted is shrunk
        pass
    removed = []
    for size, rel in sorted(files, reverse=True):
        if total <= limit:
            break
        if not agent_tree.unlink_file(cap.path, rel):   # swapped for a link meanwhile: not followed
            continue
        total -= size
        removed.append(rel)
    if not removed:
        return []
    return [f"removed {len(removed)} file(s) to bring the folder back under its {cap.size_mb} MiB cap: "
            f"{', '.join(removed[:5])}{' ...' if len(removed) > 5 else ''}"]
