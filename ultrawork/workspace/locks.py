"""A cross-process, cross-thread exclusive lock on a file.

Parallel agents share one superproject index; `fcntl.flock` on a fresh file
descriptor per acquisition serialises both threads and processes.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_holders(lock: Path) -> list[int]:
    """Pids of live processes that have ``lock`` open (git keeps its ``*.lock`` open while writing)."""
    target = str(lock)
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    holders.append(int(proc.name))
                    break
        except OSError:  # gone, or not ours to read
            continue
    return holders


def clear_stale_git_lock(lock: Path, wait: float = 30.0, poll: float = 0.2) -> str:
    """Deal with a git ``*.lock`` that blocks a command.

    A lock a live process holds is waited for (up to ``wait`` seconds); one that
    no process holds was left by a killed git and is removed. Returns what was
    done: ``"gone"``, ``"waited"`` or ``"removed"``; raises TimeoutError if a live
    holder keeps it past ``wait``.
    """
    import time

    deadline = time.monotonic() + wait
    waited = False
    while lock.exists():
        if not lock_holders(lock):
            # Git creates the lock and opens it in one step; a lock nobody holds for a moment is stale.
            time.sleep(poll)
            if lock.exists() and not lock_holders(lock):
                lock.unlink(missing_ok=True)
                return "removed"
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{lock} is still held by a live process after {wait:.0f}s")
        waited = True
        time.sleep(poll)
    return "waited" if waited else "gone"
