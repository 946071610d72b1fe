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

Build and cache outputs (`CACHE_DIRS`, `CACHE_FILES`: bytecode, test and linter
caches) are left out on top of the repository's own ``.gitignore``: two writers
that both ran the tests would otherwise conflict on their ``.pyc`` files. They
are named (`WorktreeScan.notes`), neither walked nor counted against the caps.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

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
    """Walk `root` (not its top-level ``.git``); raise `DiskLimitExceeded` past the caps."""
    scan = WorktreeScan()
    top = os.path.realpath(root)
    todo = [""]
    while todo:
        rel_dir = todo.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel_dir)))
        except (FileNotFoundError, NotADirectoryError):
            continue                      # removed while walking: nothing to commit there
        for entry in entries:
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            if not rel_dir and entry.name == ".git":
                continue
            scan.entries += 1
            if scan.entries > max_entries:
                raise DiskLimitExceeded(f"the workspace holds more than {max_entries} files and folders; "
                                        "nothing was committed")
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and _cache_dir(rel_dir, entry.name):
                scan.left_out.append(rel + "/")
                continue
            if not stat.S_ISDIR(st.st_mode) and _cache_file(entry.name):
                scan.left_out.append(rel)
                continue
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(entry.path)
                lexical = os.path.normpath(os.path.join(top, rel_dir, target))
                if not (_inside(lexical, top) and _inside(os.path.realpath(entry.path), top)):
                    scan.refused[rel] = f"symlink to {target!r} outside the workspace"
            elif stat.S_ISDIR(st.st_mode):
                if entry.name == ".git" or os.path.lexists(os.path.join(entry.path, ".git")):
                    scan.refused[rel] = "a nested git repository"
                else:
                    todo.append(rel)
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > file_limit:
                    scan.refused[rel] = f"{_mib(st.st_size)}, over the {_mib(file_limit)} per-file cap"
                    continue
                scan.total_bytes += st.st_size
                scan.largest = sorted(scan.largest + [(st.st_size, rel)], reverse=True)[:3]
    if scan.total_bytes > total_limit:
        biggest = ", ".join(f"{p} ({_mib(s)})" for s, p in scan.largest)
        raise DiskLimitExceeded(f"the workspace holds {_mib(scan.total_bytes)}, over its "
                                f"{_mib(total_limit)} cap (largest: {biggest}); nothing was committed")
    return scan
