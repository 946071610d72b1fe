"""The one way the host touches a tree a sandbox can write: by descriptor, never by path.

A work tree, a Plan.md folder, a volume: while (or after) an agent lives, any entry in
them may be swapped for a symlink, a fifo or a folder between two host calls
(``renameat2(RENAME_EXCHANGE)`` makes the swap atomic). A host call that takes a path
below the root follows whatever is there at that instant. So here:

* the root is opened once (``O_DIRECTORY|O_NOFOLLOW``) and every folder below it is
  opened relative to its parent's descriptor with ``O_NOFOLLOW``: the walk never leaves
  the tree, whatever is renamed meanwhile, and never crosses into another file system;
* an entry is acted on through the descriptor that was checked (``fstat`` then
  ``fchown``/``fchmod``, ``unlinkat`` relative to its folder): regular files and folders
  only, a file with other hard links never;
* every walk is bounded in entries and depth (`TreeLimitExceeded`), every read in bytes.

Nothing else in ultrawork walks, reads, changes or removes an agent-writable tree by path:
``tests/test_agent_tree.py`` reads the source and fails on a new call that does.

Where no grant is needed at all, none runs: the host sets owners and modes on the folders
it creates for a sandbox (`prepare_folder`) before any sandbox mounts them.
"""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .spec import SANDBOX_UID

MAX_ENTRIES = 200_000
MAX_DEPTH = 128
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class TreeLimitExceeded(OSError):
    """A tree holds more entries, or deeper folders, than a walk of it may visit."""


@dataclass(frozen=True)
class Entry:
    """One entry below the root: its relative path, ``lstat`` result and (links) target."""

    rel: str
    stat: os.stat_result
    link: str | None = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.stat.st_mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.stat.st_mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.stat.st_mode)

    @property
    def is_special(self) -> bool:
        return not (self.is_dir or self.is_file or self.is_link)


@contextmanager
def opened_root(root: Path) -> Iterator[int]:
    """A descriptor on ``root`` itself, which must be a real folder (not a link to one)."""
    fd = os.open(root, _DIR)
    try:
        yield fd
    finally:
        os.close(fd)


def walk_fds(root_fd: int, *, skip: Callable[[str, str], bool], max_entries: int, max_depth: int,
              prune: Callable[[str, int], bool] | None = None) -> Iterator[tuple[int, str, str, os.stat_result, int | None]]:
    """Yield ``(parent_fd, name, rel, st, dir_fd)`` below ``root_fd``, depth first; ``dir_fd`` is the
    opened folder (valid until the walk moves on) for folders, None for everything else. Only the
    folders on the current path are open (at most ``max_depth`` descriptors)."""
    root_dev = os.fstat(root_fd).st_dev
    seen = 0
    stack: list[tuple[int, str, Iterator[str]]] = []

    def push(fd: int, rel: str) -> None:
        try:
            names = os.listdir(fd)
        except OSError:
            names = []
        stack.append((fd, rel, iter(names)))

    push(os.dup(root_fd), "")
    try:
        while stack:
            fd, rel_dir, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                os.close(fd)
                continue
            if skip(rel_dir, name):
                continue
            seen += 1
            if seen > max_entries:
                raise TreeLimitExceeded(f"more than {max_entries} files and folders")
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:                     # gone meanwhile
                continue
            if not stat.S_ISDIR(st.st_mode):
                yield fd, name, rel, st, None
                continue
            if len(stack) >= max_depth:
                raise TreeLimitExceeded(f"folders nested deeper than {max_depth}")
            try:
                child = os.open(name, _DIR, dir_fd=fd)
            except OSError:                     # swapped for a link or a file meanwhile: not followed
                continue
            cst = os.fstat(child)
            if cst.st_dev != root_dev:          # another file system mounted there: not ours to walk
                os.close(child)
                continue
            if prune is not None and prune(rel, child):     # reported, not entered
                try:
                    yield fd, name, rel, cst, None
                finally:
                    os.close(child)
                continue
            push(child, rel)
            yield fd, name, rel, cst, child
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _skip_top(names: tuple[str, ...]) -> Callable[[str, str], bool]:
    return lambda rel_dir, name: not rel_dir and name in names


def walk(root: Path, *, skip_top: tuple[str, ...] = (), max_entries: int = MAX_ENTRIES,
         max_depth: int = MAX_DEPTH, prune: Callable[[str, int], bool] | None = None) -> Iterator[Entry]:
    """Every entry below ``root`` (``lstat`` only; links are reported, never followed).
    ``prune(rel, dir_fd)`` true for a folder: it is reported but not entered."""
    with opened_root(root) as root_fd:
        for fd, name, rel, st, _ in walk_fds(root_fd, skip=_skip_top(skip_top), max_entries=max_entries,
                                              max_depth=max_depth, prune=prune):
            link = None
            if stat.S_ISLNK(st.st_mode):
                try:
                    link = os.readlink(name, dir_fd=fd)
                except OSError:
                    continue
            yield Entry(rel, st, link)


def has_entry(dir_fd: int, name: str) -> bool:
    """Whether the folder open at ``dir_fd`` holds ``name`` (of any kind; nothing followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


def _open_regular(name: str, dir_fd: int, root_dev: int) -> int | None:
    """A descriptor on the regular file ``name`` in ``dir_fd``, or None (a link, a fifo, a hard link)."""
    try:
        fd = os.open(name, _FILE, dir_fd=dir_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_dev != root_dev:
        os.close(fd)
        return None
    return fd


def _grant_fd(fd: int, is_dir: bool) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if os.geteuid() == 0:
        os.fchown(fd, -1, SANDBOX_UID)
        os.fchmod(fd, mode | 0o060 | (0o010 if is_dir else 0))
    else:
        os.fchmod(fd, mode | 0o006 | (0o001 if is_dir else 0))


def grant(root: Path, *, max_entries: int = MAX_ENTRIES, max_depth: int = MAX_DEPTH) -> int:
    """Let the sandbox user (uid/gid 1000) write under ``root`` -- never its ``.git``.

    Files keep their host owner (host git sees no "dubious ownership"); as root the group
    goes to gid 1000, group-writable, otherwise the mode gains write for others. Only
    regular files and folders reached through descriptors are changed. Returns how many."""
    changed = 0
    with opened_root(root) as root_fd:
        root_dev = os.fstat(root_fd).st_dev
        _grant_fd(root_fd, True)
        changed += 1
        for parent, name, _, st, dir_fd in walk_fds(root_fd, skip=lambda _d, n: n == ".git",
                                                     max_entries=max_entries, max_depth=max_depth):
            if dir_fd is not None:
                _grant_fd(dir_fd, True)
                changed += 1
            elif stat.S_ISREG(st.st_mode):
                fd = _open_regular(name, parent, root_dev)
                if fd is not None:
                    try:
                        _grant_fd(fd, False)
                        changed += 1
                    finally:
                        os.close(fd)
    return changed


def prepare_folder(path: Path, *, writable: bool) -> Path:
    """Create ``path`` (a folder the host makes for a sandbox) with its owner and mode set now,
    before any sandbox mounts it: writable (or not) by the sandbox user, never a grant later."""
    path.mkdir(parents=True, exist_ok=True)
    with opened_root(path) as fd:
        if writable:
            _grant_fd(fd, True)
        else:
            os.fchmod(fd, 0o755)
    return path


@contextmanager
def opened_parent(root: Path, rel: str) -> Iterator[tuple[int, str, int] | None]:
    """``(folder_fd, name, root_dev)`` of ``rel`` below ``root``, every folder on the way opened with
    ``O_NOFOLLOW`` relative to the one before; None when a folder on the way is not one."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"{rel!r} is not a relative path below the tree")
    with opened_root(root) as root_fd:
        root_dev = os.fstat(root_fd).st_dev
        fd = os.dup(root_fd)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except OSError:
                    yield None
                    return
                os.close(fd)
                fd = nxt
            yield fd, parts[-1], root_dev
        finally:
            os.close(fd)


def read_bytes(root: Path, rel: str, limit: int) -> tuple[bytes, bool] | None:
    """At most ``limit`` bytes of the regular file ``rel`` below ``root`` (every folder on the way
    opened with ``O_NOFOLLOW``), and whether it held more; None when it is not a regular file."""
    with opened_parent(root, rel) as found:
        file_fd = _open_regular(found[1], found[0], found[2]) if found is not None else None
    if file_fd is None:
        return None
    try:
        data = read_capped(file_fd, limit)
    finally:
        os.close(file_fd)
    return data[:limit], len(data) > limit


def read_capped(fd: int, limit: int) -> bytes:
    """What the open file ``fd`` holds, read no further than ``limit + 1`` bytes (one more than kept
    tells that it held more)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def remove_special_files(root: Path, *, skip_top: tuple[str, ...] = ()) -> list[str]:
    """Delete fifos, sockets and device nodes below ``root`` (``unlinkat`` in their folder's
    descriptor): git never stores them, and a fifo would block a host reader forever."""
    removed = []
    with opened_root(root) as root_fd:
        for parent, name, rel, st, _ in walk_fds(root_fd, skip=_skip_top(skip_top), max_entries=MAX_ENTRIES,
                                                  max_depth=MAX_DEPTH):
            mode = st.st_mode
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                try:
                    os.unlink(name, dir_fd=parent)
                    removed.append(rel)
                except FileNotFoundError:
                    pass
    return removed


def remove_except(root: Path, keep=()) -> list[str]:
    """Remove every top-level entry of ``root`` but the regular files named in ``keep`` (a link or a
    folder of that name goes too), each by its folder's descriptor; return what was removed."""
    removed = []
    with opened_root(root) as root_fd:
        for name in sorted(os.listdir(root_fd)):
            try:
                st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                if name in keep and stat.S_ISREG(st.st_mode):
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=root_fd)   # descriptor-based, never follows a link
                else:
                    os.unlink(name, dir_fd=root_fd)
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def unlink_file(root: Path, rel: str) -> bool:
    """Remove the regular file ``rel`` below ``root`` (every folder on the way opened with
    ``O_NOFOLLOW``, the file unlinked in its folder's descriptor); False when it is not one."""
    with opened_parent(root, rel) as found:
        if found is None:
            return False
        fd, name, _ = found
        try:
            if not stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                return False
            os.unlink(name, dir_fd=fd)
            return True
        except OSError:
            return False


def allocated_bytes(root: Path, limit: int, max_entries: int = MAX_ENTRIES) -> int:
    """Bytes allocated below ``root`` (``st_blocks``, by descriptor), stopping once past ``limit``;
    a tree past ``max_entries`` counts as ``limit + 1``."""
    total = 0
    try:
        for entry in walk(root, max_entries=max_entries):
            total += entry.stat.st_blocks * 512
            if total > limit:
                break
    except TreeLimitExceeded:
        return limit + 1
    except OSError:
        return total
    return total


def remove(path: Path) -> None:
    """Remove the tree at ``path`` (shutil's descriptor-based walk: no link below it is followed;
    a link at ``path`` itself is removed, not its target). Missing is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
