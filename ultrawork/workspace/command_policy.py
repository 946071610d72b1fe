"""The command deny list the container-safety-enforcer checks before each step.

A second line of defence only: the hardened container (no network, no
capabilities, read-only root) is the real boundary. The list is data; a rule
is a tuple of shell-style globs: the first matches the program's basename,
each following glob must match some later argument, in order. Wrapper
programs (``env``, ``sudo``, ``timeout``...) are looked through and
``sh -c``/``bash -c`` scripts are split and checked command by command.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class DeniedCommand:
    pattern: tuple[str, ...]
    reason: str


DEFAULT_DENY_LIST: tuple[DeniedCommand, ...] = (
    DeniedCommand(("rm", "-*[rR]*", "/"), "recursive delete of /"),
    DeniedCommand(("rm", "-*[rR]*", "/[*]"), "recursive delete of /*"),
    DeniedCommand(("rm", "--recursive", "/"), "recursive delete of /"),
    DeniedCommand(("rm", "-*[rR]*", "~*"), "recursive delete of a home directory"),
    DeniedCommand(("rm", "--no-preserve-root"), "rm --no-preserve-root"),
    DeniedCommand(("mkfs*",), "creates file systems"),
    DeniedCommand(("mkswap",), "creates swap"),
    DeniedCommand(("fdisk",), "partitions disks"),
    DeniedCommand(("dd", "of=/dev/*"), "writes raw devices"),
    DeniedCommand(("shutdown",), "stops the machine"),
    DeniedCommand(("reboot",), "stops the machine"),
    DeniedCommand(("poweroff",), "stops the machine"),
    DeniedCommand(("halt",), "stops the machine"),
    DeniedCommand(("curl",), "network access"),
    DeniedCommand(("wget",), "network access"),
    DeniedCommand(("nc",), "network access"),
    DeniedCommand(("ncat",), "network access"),
    DeniedCommand(("netcat",), "network access"),
    DeniedCommand(("ssh",), "network access"),
    DeniedCommand(("scp",), "network access"),
    DeniedCommand(("git", "push"), "pushes happen host-side only"),
    DeniedCommand(("git", "send-email"), "network access"),
    DeniedCommand(("git", "daemon"), "serves the repository"),
    DeniedCommand(("git", "credential*"), "credentials are host-side only"),
    DeniedCommand(("docker",), "container engine access"),
    DeniedCommand(("podman",), "container engine access"),
    DeniedCommand(("nsenter",), "namespace escape"),
    DeniedCommand(("chroot",), "namespace escape"),
    DeniedCommand(("mount",), "mounts file systems"),
    DeniedCommand(("su",), "privilege escalation"),
    DeniedCommand(("sudo",), "privilege escalation"),
)

WRAPPERS = frozenset({"env", "nice", "nohup", "timeout", "time", "stdbuf", "xargs", "exec",
                      "command", "builtin", "ionice", "setsid"})
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"})
_SHELL_SEPARATORS = re.compile(r"\s*(?:&&|\|\||[;|&\n])\s*")


def _matches(rule: DeniedCommand, argv: Sequence[str]) -> bool:
    if not argv or not fnmatch.fnmatchcase(os.path.basename(argv[0]), rule.pattern[0]):
        return False
    position = 1
    for glob in rule.pattern[1:]:
        while position < len(argv) and not fnmatch.fnmatchcase(argv[position], glob):
            position += 1
        if position >= len(argv):
            return False
        position += 1
    return True


def _unwrap(argv: Sequence[str]) -> list[str]:
    """Drop wrapper programs and their options/assignments to reach the real program."""
    argv = list(argv)
    while argv and os.path.basename(argv[0]) in WRAPPERS:
        argv = argv[1:]
        while argv and (argv[0].startswith("-") or "=" in argv[0] or argv[0].replace(".", "").isdigit()):
            argv = argv[1:]
    return argv


def _commands(argv: Sequence[str], depth: int = 0) -> Iterable[list[str]]:
    """Every command `argv` would run that we can see statically."""
    yield list(argv)
    inner = _unwrap(argv)
    if inner != list(argv):
        yield inner
    if depth > 3 or not inner:
        return
    if os.path.basename(inner[0]) in SHELLS and "-c" in inner[1:]:
        script = inner[inner.index("-c", 1) + 1] if inner.index("-c", 1) + 1 < len(inner) else ""
        for piece in _SHELL_SEPARATORS.split(script):
            try:
                words = shlex.split(piece)
            except ValueError:
                words = piece.split()
            if words:
                yield from _commands(words, depth + 1)


def denied_reason(argv: Sequence[str], deny_list: Sequence[DeniedCommand] = DEFAULT_DENY_LIST) -> str | None:
    """The reason `argv` is denied, or None when no rule matches."""
    if any("\x00" in arg for arg in argv):
        return "NUL byte in argument"
    for command in _commands(argv):
        for rule in deny_list:
            if _matches(rule, command):
                return f"{' '.join(rule.pattern)}: {rule.reason}"
    return None
