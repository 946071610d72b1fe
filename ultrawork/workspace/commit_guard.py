"""What of an agent's work tree the host may commit.

The work tree is agent data. Before the host stages it, one walk (``lstat``
and ``readlink`` only, nothing followed or opened) decides what stays out of
the commit, so that git never even reads it:

* symlinks whose target leaves the workspace (lexically or on disk): a branch
  holding ``secrets -> /root/.ssh`` is a trap for whoever checks it out;
* nested repositories (a directory holding ``.git``): git would record a
  gitlink read from agent-written refs;
* files over the per-file cap (hosting services refuse them; a 1 GB blob
  would be fetched into the user's repository).

A work tree over the total size cap, or with too many entries, is refused as
a whole (`DiskLimitExceeded`): committing part of it would be a silent loss.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ultrawork.sandbox import agent_tree
from ultrawork.workspace.errors import DiskLimitExceeded

MAX_ENTRIES = 200_000


@dataclass
class WorktreeScan:
    """The walk's result: bytes and entries counted, and the paths refused (path -> why)."""

    total_bytes: int = 0
    entries: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    largest: list[tuple[int, str]] = field(default_factory=list)

    def pathspecs(self) -> list[str]:
        """``git add`` pathspecs that leave every refused path out."""
        return [f":(exclude,literal){p}" for p in sorted(self.refused)]

    def notes(self) -> list[str]:
        return [f"not committed: {p} ({why})" for p, why in sorted(self.refused.items())]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def scan_worktree(root: Path, *, file_limit: int, total_limit: int,
                  max_entries: int = MAX_ENTRIES) -> WorktreeScan:
    """Walk `root` (not its top-level ``.git``); raise `DiskLimitExceeded` past the caps."""
    scan = WorktreeScan()
    top = os.path.realpath(root)
    nested: set[str] = set()

    def nested_repository(rel: str, dir_fd: int) -> bool:
        if os.path.basename(rel) == ".git" or agent_tree.has_entry(dir_fd, ".git"):
            nested.add(rel)
            return True
        return False

    try:
        for entry in agent_tree.walk(root, skip_top=(".git",), max_entries=max_entries, prune=nested_repository):
            rel, st = entry.rel, entry.stat
            scan.entries += 1
            if entry.is_link:
                lexical = os.path.normpath(os.path.join(top, os.path.dirname(rel), entry.link))
                if not (_inside(lexical, top) and _inside(os.path.realpath(os.path.join(top, rel)), top)):
                    scan.refused[rel] = f"symlink to {entry.link!r} outside the workspace"
            elif entry.is_dir:
                if rel in nested:
                    scan.refused[rel] = "a nested git repository"
            elif entry.is_file:
                if st.st_size > file_limit:
                    scan.refused[rel] = f"{_mib(st.st_size)}, over the {_mib(file_limit)} per-file cap"
                    continue
                scan.total_bytes += st.st_size
                scan.largest = sorted(scan.largest + [(st.st_size, rel)], reverse=True)[:3]
    except agent_tree.TreeLimitExceeded as exc:
        raise DiskLimitExceeded(f"the workspace holds {exc}; nothing was committed") from None
    if scan.total_bytes > total_limit:
        biggest = ", ".join(f"{p} ({_mib(s)})" for s, p in scan.largest)
        raise DiskLimitExceeded(f"the workspace holds {_mib(scan.total_bytes)}, over its "
                                f"{_mib(total_limit)} cap (largest: {biggest}); nothing was committed")
    return scan
