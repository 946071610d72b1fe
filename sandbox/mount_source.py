"""Which host paths a sandbox may have mounted, checked once and pinned.

A mount source is resolved once; the resolved path is what is checked and what
Docker gets. It is pinned: no component from ``/`` to its parent may be a
symbolic link or writable by the sandbox user (or by others), so nothing a
sandbox can write can redirect it between the check and Docker's own lookup.
The source itself may be writable by the sandbox (an agent's workspace is).

A source is refused when it is, contains or lies inside a credential location
(``.ssh``, ``.config/gh``, a home directory, the Docker socket...) or a system
directory.
"""

from __future__ import annotations

import os
import time
import pwd
import stat
from pathlib import Path

from .errors import SandboxPolicyError
from .spec import SANDBOX_UID

# Never mounted, nor anything inside them, nor anything holding them.
SYSTEM_LOCATIONS = ("/etc", "/proc", "/sys", "/dev", "/boot", "/var/run", "/run")
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
# Credential locations, as path components: refused wherever they appear in a source.
CREDENTIAL_PARTS = (
    (".ssh",), (".gnupg",), (".aws",), (".azure",), (".config", "gcloud"), (".kube",), (".docker",),
    (".config", "gh"), (".claude",), (".claude.json",), (".codex",), (".config", "opencode"),
    (".local", "share", "opencode"), (".netrc",), (".git-credentials",), (".npmrc",), (".pypirc",),
    (".config", "git", "credentials"),
)
# Entries that mark a directory as a home (it holds credentials). Files repositories commonly
# carry for themselves (.npmrc, .claude/, .codex/, .docker/) are not taken as that sign.
HOME_MARKERS = (
    (".ssh",), (".gnupg",), (".aws",), (".azure",), (".kube",), (".netrc",), (".git-credentials",),
    (".claude.json",), (".config", "gh"), (".config", "gcloud"), (".config", "git", "credentials"),
    (".local", "share", "opencode"), (".docker", "config.json"), ("docker.sock",),
)


_HOMES_SECONDS = 10.0       # home folders change rarely; every mount checks them
_HOMES_SEEN: dict[str, tuple[float, frozenset[Path]]] = {}


def _homes() -> frozenset[Path]:
    """Every user's home folder, resolved (read again after ``_HOMES_SECONDS``: it is asked for each
    mount of each sandbox, and resolving every home of the password file costs more than a mount)."""
    key = os.environ.get("HOME", "")
    seen = _HOMES_SEEN.get(key)
    if seen is not None and time.monotonic() - seen[0] < _HOMES_SECONDS:
        return seen[1]
    homes = _read_homes()
    _HOMES_SEEN[key] = (time.monotonic(), homes)
    return homes


def _read_homes() -> frozenset[Path]:
    homes = {Path("/root"), Path.home()}
    if os.environ.get("HOME"):
        homes.add(Path(os.environ["HOME"]))
    try:
        homes |= {Path(entry.pw_dir) for entry in pwd.getpwall() if entry.pw_dir not in ("", "/")}
    except OSError:
        pass
    return frozenset(Path(os.path.realpath(h)) for h in homes)


def _holds(outer: Path, inner: Path) -> bool:
    return inner == outer or inner.is_relative_to(outer)


def check_not_credentials(field: str, source: Path, resolved: Path) -> None:
    """Refuse ``resolved`` if it is, contains or lies inside a credential or system location."""
    if resolved.name == "docker.sock" or any(_holds(resolved, Path(s)) for s in DOCKER_SOCKETS):
        raise SandboxPolicyError(field, f"{source} is or holds the Docker socket")
    for location in map(Path, SYSTEM_LOCATIONS):
        if _holds(location, resolved):
            raise SandboxPolicyError(field, f"{source} is a system directory ({location})")
        if _holds(resolved, location):
            raise SandboxPolicyError(field, f"{source} contains a system directory ({location})")
    parts = resolved.parts
    for cred in CREDENTIAL_PARTS:
        n = len(cred)
        if any(parts[i:i + n] == cred for i in range(len(parts) - n + 1)):
            raise SandboxPolicyError(field, f"{source} is a credential folder ({'/'.join(cred)})")
        for k in range(1, n):  # ends in '.config' or '.local/share': holds the credentials below it
            if parts[-k:] == cred[:k]:
                raise SandboxPolicyError(field, f"{source} contains a credential folder ({'/'.join(cred)})")
    for home in _homes():
        if _holds(resolved, home):
            what = "the home directory" if resolved == home else "a home directory"
            raise SandboxPolicyError(field, f"{source} is or contains {what} ({home}), which holds credentials")
    for marker in HOME_MARKERS:
        if os.path.lexists(resolved.joinpath(*marker)):
            raise SandboxPolicyError(field, f"{source} contains a credential location ({'/'.join(marker)})")


def _sandbox_can_write(st: os.stat_result) -> bool:
    mode = st.st_mode
    return bool((st.st_uid == SANDBOX_UID and mode & stat.S_IWUSR)
                or (st.st_gid == SANDBOX_UID and mode & stat.S_IWGRP) or mode & stat.S_IWOTH)


def check_pinned(field: str, source: Path, resolved: Path) -> None:
    """Refuse ``resolved`` unless no component from ``/`` to its parent is a link or sandbox-writable.

    A sticky directory (``/tmp``) may be writable by all: only its entry's owner can rename
    that entry, so it counts as pinned when neither it nor the entry belongs to the sandbox user.
    """
    here = Path(resolved.anchor)
    for name in resolved.parts[1:]:
        child = here / name
        try:
            dir_st, child_st = os.lstat(here), os.lstat(child)
        except OSError as exc:
            raise SandboxPolicyError(field, f"{source} cannot be checked ({child}: {exc.strerror})") from None
        if stat.S_ISLNK(child_st.st_mode):
            raise SandboxPolicyError(field, f"{source}: {child} is a symbolic link (it changed while checked)")
        sticky_safe = (dir_st.st_mode & stat.S_ISVTX and dir_st.st_uid != SANDBOX_UID
                       and child_st.st_uid != SANDBOX_UID)
        if _sandbox_can_write(dir_st) and not sticky_safe:
            note = " (this process runs as that user)" if os.geteuid() == SANDBOX_UID else ""
            raise SandboxPolicyError(field, f"{source}: its parent {here} is writable by the sandbox user "
                                            f"(uid {SANDBOX_UID}) or by others{note}, so a sandbox could "
                                            "swap what gets mounted")
        here = child


def pin_mount_source(field: str, source: Path, roots: list[Path]) -> Path:
    """The resolved, checked path to hand Docker for ``source``, or :class:`SandboxPolicyError`."""
    text = str(source)
    if "\x00" in text:
        raise SandboxPolicyError(field, "the path contains a NUL byte")
    if not source.is_absolute():
        raise SandboxPolicyError(field, f"{source} is not an absolute path")
    if "docker.sock" in text:
        raise SandboxPolicyError(field, f"{source} is the Docker socket")
    try:
        resolved = Path(os.path.realpath(source))
    except OSError as exc:   # a link changed under the resolution itself (lstat said link, readlink found none)
        raise SandboxPolicyError(field, f"{source} changed while it was resolved ({exc.strerror}); "
                                        "something is rewriting it") from None
    if resolved == Path(resolved.anchor):
        raise SandboxPolicyError(field, f"{source} is a system directory ({resolved})")
    check_not_credentials(field, source, resolved)
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    if not any(resolved != r and resolved.is_relative_to(r) for r in real_roots):
        shown = ", ".join(str(r) for r in real_roots)
        raise SandboxPolicyError(field, f"{source} is outside the workspace roots ({shown})")
    if not os.path.lexists(resolved):
        raise SandboxPolicyError(field, f"{source} does not exist")
    check_pinned(field, source, resolved)
    return resolved
