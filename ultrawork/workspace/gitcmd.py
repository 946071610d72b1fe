"""The one way host-side code runs git.

Host-side git must never run code or read configuration that an agent could
have written. Every call therefore gets:

* a clean environment: inherited ``GIT_*`` variables are dropped (a stray
  ``GIT_DIR`` or ``GIT_CONFIG_PARAMETERS`` would redirect us), system and global
  config are ignored (``GIT_CONFIG_NOSYSTEM=1``, ``GIT_CONFIG_GLOBAL=/dev/null``),
  prompts are off, replace refs are ignored;
* command-line overrides (``-c``), which beat any repository config and are
  passed on to child git processes (submodule status, upload-pack): hooks point
  at ``/dev/null``, fsmonitor is off, pagers/editors/ssh/askpass are inert,
  submodules are never recursed into, automatic gc is off;
* argument lists only, never a shell.

Repository config an override cannot name (``filter.<driver>.*``,
``diff.<driver>.textconv``...) can only come from a git directory, and the
git directories host git uses are host-owned: an agent's clone keeps its git
directory outside the work tree the sandbox writes (`clones.AgentClone`), so
attributes an agent writes can name a driver but never define one.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ultrawork.workspace.errors import GitError
from ultrawork.workspace.locks import clear_stale_git_lock

GIT = "git"

HARDENING_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.untrackedCache", "false"),
    ("core.sshCommand", "false"),
    ("core.gitProxy", ""),
    ("core.askPass", ""),
    ("core.pager", "cat"),
    ("core.editor", "true"),
    ("sequence.editor", "true"),
    ("core.attributesFile", "/dev/null"),
    ("core.excludesFile", "/dev/null"),
    ("core.symlinks", "true"),
    ("credential.helper", ""),
    ("diff.external", ""),
    ("diff.ignoreSubmodules", "all"),
    ("status.submoduleSummary", "false"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("commit.gpgSign", "false"),
    ("gpg.program", "false"),
    ("tag.gpgSign", "false"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("protocol.ext.allow", "never"),
    ("init.defaultBranch", "main"),
    ("advice.detachedHead", "false"),
)

CLEAN_ENV: Mapping[str, str] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "SSH_ASKPASS": "true",
    "GIT_PAGER": "cat",
    "GIT_EDITOR": "true",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_OPTIONAL_LOCKS": "0",
    "LC_ALL": "C",
}


@dataclass(frozen=True)
class Identity:
    """Who a host-side commit is attributed to (author and committer)."""

    name: str
    email: str


@dataclass(frozen=True)
class GitResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def hardened_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment minus inherited git state, plus `CLEAN_ENV`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(CLEAN_ENV)
    if extra:
        env.update(extra)
    return env


def git_argv(args: Sequence[str], *, identity: Identity | None = None,
             config: Sequence[tuple[str, str]] = (),
             safe_directory: Path | None = None) -> list[str]:
    """Build the full argv: git, hardening overrides, caller overrides, args."""
    argv = [GIT]
    pairs: list[tuple[str, str]] = list(HARDENING_CONFIG)
    if identity is not None:
        pairs += [("user.name", identity.name), ("user.email", identity.email)]
    if safe_directory is not None:
        pairs.append(("safe.directory", str(safe_directory)))
    pairs += list(config)
    for key, value in pairs:
        argv += ["-c", f"{key}={value}"]
    argv += list(args)
    return argv


def run_git(args: Sequence[str], *, cwd: Path, identity: Identity | None = None,
            config: Sequence[tuple[str, str]] = (), env: Mapping[str, str] | None = None,
            input: str | None = None, check: bool = True,
            safe_directory: Path | None = None, timeout: float = 300.0) -> GitResult:
    """Run one hardened git command in `cwd`; raise `GitError` when `check` and it fails."""
    argv = git_argv(args, identity=identity, config=config, safe_directory=safe_directory)
    extra_env = dict(env or {})
    if identity is not None:
        extra_env.update({
            "GIT_AUTHOR_NAME": identity.name, "GIT_AUTHOR_EMAIL": identity.email,
            "GIT_COMMITTER_NAME": identity.name, "GIT_COMMITTER_EMAIL": identity.email,
        })
    def once() -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                argv, cwd=str(cwd), env=hardened_env(extra_env), input=input,
                capture_output=True, text=True, errors="replace", timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(argv, -1, str(exc)) from exc

    proc = once()
    lock = _blocking_lock(proc)
    if lock is not None:  # a stale lock of a killed git is cleared, a live one waited for; then once more
        try:
            clear_stale_git_lock(lock)
        except TimeoutError as exc:
            raise GitError(argv, proc.returncode, f"{proc.stderr}\n{exc}", proc.stdout) from None
        proc = once()
    result = GitResult(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise GitError(argv, proc.returncode, proc.stderr, proc.stdout)
    return result


_LOCK_MESSAGE = re.compile(r"Unable to create '([^']+\.lock)': File exists")


def _blocking_lock(proc: subprocess.CompletedProcess) -> Path | None:
    """The ``*.lock`` file a failed git command reported as already existing, if any."""
    if proc.returncode == 0:
        return None
    match = _LOCK_MESSAGE.search(proc.stderr or "")
    return Path(match.group(1)) if match else None


def git_out(args: Sequence[str], *, cwd: Path, **kwargs) -> str:
    """Run git and return stdout without the trailing newline."""
    return run_git(args, cwd=cwd, **kwargs).stdout.rstrip("\n")


def parse_config_text(text: str, *, cwd: Path) -> list[tuple[str, str]]:
    """Parse git-config text (never a path: no symlink following, no includes)."""
    result = run_git(["config", "--no-includes", "--file=-", "--list", "--null"],
                     cwd=cwd, input=text, check=False)
    if result.returncode != 0:
        return [("<unparseable>", result.stderr.strip()[:200])]
    entries: list[tuple[str, str]] = []
    for record in result.stdout.split("\0"):
        if not record:
            continue
        key, _, value = record.partition("\n")
        entries.append((key.lower(), value))
    return entries
