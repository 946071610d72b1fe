"""Copying a host directory into a sandbox without following anything a sandbox could have planted.

The directory may be one a sandbox writes (an agent's workspace), so a name seen
while listing may be a symbolic link by the time it is opened. The walk holds a
file descriptor of every directory it is in and opens each entry relative to it
with ``O_NOFOLLOW``; what it reads is what it fstat-ed: regular files and
directories only (links, devices, FIFOs and sockets are skipped). It is bounded
in files, bytes and depth.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from pathlib import Path

from . import agent_tree
from .errors import SandboxPolicyError
from .spec import SANDBOX_UID

MAX_FILES = 10_000            # files and folders copied from one directory
MAX_BYTES = 64 * 2**20        # total content copied from one directory
MAX_DEPTH = 64                # nested folders
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # NONBLOCK: a FIFO never blocks the open


class _Budget:
    """What a deploy may still copy; passing a bound is a named policy error."""

    def __init__(self, directory: Path, max_files: int, max_bytes: int):
        self.directory, self.max_files, self.max_bytes = directory, max_files, max_bytes
        self.files = self.bytes = 0

    def take(self, size: int = 0) -> None:
        self.files, self.bytes = self.files + 1, self.bytes + size
        if self.files > self.max_files:
            raise SandboxPolicyError("directory", f"{self.directory} holds more than the {self.max_files} "
                                                  "files and folders a deploy copies")
        if self.bytes > self.max_bytes:
            raise SandboxPolicyError("directory", f"{self.directory} holds more than the "
                                                  f"{self.max_bytes / 2**20:g} MiB a deploy copies")


def _tarinfo(name: str, mode: int, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, time.time()
    info.uid = info.gid = SANDBOX_UID
    info.uname = info.gname = ""
    return info


def _read_regular(dir_fd: int, name: str, budget: _Budget) -> tuple[bytes, int] | None:
    """The content and mode of ``name`` if it is a regular file (never following a link), else None."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:  # a link (ELOOP), gone, or unreadable: not copied
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        budget.take(st.st_size)
        chunks, left = [], st.st_size          # never more than fstat said, even if it grows meanwhile
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), stat.S_IMODE(st.st_mode) & 0o777
    finally:
        os.close(fd)


def _encodable(name: str) -> bool:
    try:
        name.encode()
        return True
    except UnicodeEncodeError:  # not a name a tar member can carry
        return False


def add_directory(tar: tarfile.TarFile, directory: Path, max_files: int = MAX_FILES,
                  max_bytes: int = MAX_BYTES) -> list[str]:
    """Add the regular files and folders under ``directory`` to ``tar``; return the files' relative paths.

    Raises :class:`SandboxPolicyError` (field ``directory``) when it is not a directory or
    passes a bound.
    """
    try:
        opened = agent_tree.opened_root(directory)
        root = opened.__enter__()
    except OSError as exc:
        raise SandboxPolicyError("directory", f"{directory} is not a directory ({exc.strerror})") from None
    names: list[str] = []
    budget = _Budget(directory, max_files, max_bytes)
    try:     # by descriptor (agent_tree): a folder swapped for a link since it was listed is not entered
        for parent, name, rel, _, dir_fd in agent_tree.walk_fds(root, skip=lambda _d, n: not _encodable(n),
                                                                 max_entries=max_files * 4, max_depth=MAX_DEPTH):
            if dir_fd is not None:
                budget.take()
                tar.addfile(_tarinfo(rel, 0o755, kind=tarfile.DIRTYPE))
                continue
            found = _read_regular(parent, name, budget)
            if found is not None:
                data, mode = found
                tar.addfile(_tarinfo(rel, mode | 0o400, len(data)), io.BytesIO(data))
                names.append(rel)
    except agent_tree.TreeLimitExceeded as exc:
        raise SandboxPolicyError("directory", f"{directory} holds {exc}") from None
    finally:
        opened.__exit__(None, None, None)
    return names
