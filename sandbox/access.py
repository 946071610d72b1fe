"""Giving the sandbox user write access to a host directory, without handing it ``.git``."""

from __future__ import annotations

import os
from pathlib import Path

from .spec import SANDBOX_UID


def grant_sandbox_access(path: Path) -> None:
    """Let the sandbox user (uid/gid 1000) write under ``path`` -- but never its ``.git``.

    Files keep their host owner (so host git sees no "dubious ownership"); as
    root we hand the group to gid 1000 and make it group-writable, otherwise we
    make it writable for others. ``.git`` stays the host's: the agent edits the
    work tree, and the host alone commits.
    """
    todo = [path]
    while todo:
        p = todo.pop()
        if p.is_symlink():
            continue
        if os.geteuid() == 0:
            os.chown(p, -1, SANDBOX_UID)
            os.chmod(p, p.stat().st_mode | 0o060 | (0o010 if p.is_dir() else 0))
        else:
            os.chmod(p, p.stat().st_mode | 0o006 | (0o001 if p.is_dir() else 0))
        if p.is_dir():
            todo += [c for c in p.iterdir() if c.name != ".git"]
