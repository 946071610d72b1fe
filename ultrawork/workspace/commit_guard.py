"""What of an agent's work tree the host may commit.

The work tree is agent data. Before the host stages it, one walk (by descriptor,
``ultrawork.sandbox.agent_tree``: nothing followed) decides what stays out of
the commit, so that git never even reads it:

* symlinks whose target leaves the workspace (lexically or on disk): a branch
  holding ``secrets -> /root/.ssh`` is a trap for whoever checks it out;
* nested repositories (a directory holding ``.git``): git would record a
  gitlink read from agent-written refs;
* files over the per-file cap (hosting services refuse them; a 1 GB blob
  would be fetched into the user's repository).

A work tree over the total size cap, or with too many entries, is refused as
a whole (`DiskLimitExceeded`): committing part of it would be a silent loss.

Build and cache outputs (`CACHE_DIRS`, `CACHE_FILES`: bytecode, test and linter
caches) are left out on top of the repository's own ``.gitignore``: two writers
that both ran the tests would otherwise conflict on their ``.pyc`` files. They
are named (`WorktreeScan.notes`), neither walked nor counted against the caps.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from ultrawork.sandbox import agent_tree
from ultrawork.workspace.errors import DiskLimitExceeded

MAX_ENTRIES = 200_000
# Folders left out wherever they are: (parent folder name or None for any, folder name).
CACHE_DIRS = ((None, "__pycache__"), (None, ".pytest_cache"), (None, ".mypy_cache"), (None, ".ruff_cache"),
              (None, ".hypothesis"), (None, ".tox"), (None, ".nox"), (None, ".ipynb_checkpoints"),
              (None, ".parcel-cache"), ("node_modules", ".cache"), (".next", "cache"))
CACHE_FILES = ("*.pyc", "*.pyo", ".eslintcache", ".coverage")     # files (by name) left out wherever they are
MAX_NAMED = 20        # left-out paths named in Plan.md (then a count)


def _cache_pathspecs() -> list[str]:
    specs = [f":(exclude,glob)**/{parent + '/' if parent else ''}{name}/**" for parent, name in CACHE_DIRS]
    return specs + [f":(exclude,glob)**/{pattern}" for pattern in CACHE_FILES]


CACHE_PATHSPECS = _cache_pathspecs()


def _cache_dir(parent: str, name: str) -> bool:
    return any(name == n and (p is None or os.path.basename(parent) == p) for p, n in CACHE_DIRS)


def _cache_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in CACHE_FILES)


@dataclass
class WorktreeScan:
    """The walk's result: bytes and entries counted, and the paths refused (path -> why)."""

    total_bytes: int = 0
    entries: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    largest: list[tuple[int, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)     # build and cache outputs (folders end with /)

    def pathspecs(self) -> list[str]:
        """``git add`` pathspecs that leave every refused path and every build or cache output out."""
        return [f":(exclude,literal){p}" for p in sorted(self.refused)] + CACHE_PATHSPECS

    def notes(self) -> list[str]:
        return [f"not committed: {p} ({why})" for p, why in sorted(self.refused.items())]

    def left_out_note(self) -> str | None:
        """The build and cache outputs left out, named (the first `MAX_NAMED`, then a count)."""
        if not self.left_out:
            return None
        named = sorted(self.left_out)
        more = f" and {len(named) - MAX_NAMED} more" if len(named) > MAX_NAMED else ""
        return "not committed (build and cache outputs, built-in list): " + ", ".join(named[:MAX_NAMED]) + more


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def scan_worktree(root: Path, *, file_limit: int, total_limit: int,
                  max_entries: int = MAX_ENTRIES) -> WorktreeScan:
    """Walk `root` (not its top-level ``.git``) by descriptor (`agent_tree`); raise `DiskLimitExceeded`
    past the caps."""
    scan = WorktreeScan()
    top = os.path.realpath(root)
    nested: set[str] = set()
    caches: set[str] = set()

    def not_entered(rel: str, dir_fd: int) -> bool:       # reported, never walked
        if _cache_dir(os.path.dirname(rel), os.path.basename(rel)):
            caches.add(rel)
            return True
        if os.path.basename(rel) == ".git" or agent_tree.has_entry(dir_fd, ".git"):
            nested.add(rel)
            return True
        return False

    try:
        for entry in agent_tree.walk(root, skip_top=(".git",), max_entries=max_entries, prune=not_entered):
            rel, st = entry.rel, entry.stat
            scan.entries += 1
            if rel in caches:
                scan.left_out.append(rel + "/")
            elif not entry.is_dir and _cache_file(os.path.basename(rel)):
                scan.left_out.append(rel)
            elif entry.is_link:
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
