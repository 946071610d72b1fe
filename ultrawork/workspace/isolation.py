"""Snapshots that let the host see what an agent's step touched.

All functions use ``lstat``/``readlink`` only: nothing here follows a symlink
into host files or opens a fifo.

What the isolation check compares, and why it is cheap:

* the workspace tree: every symlink must resolve (lexically) inside the
  workspace or the agent's plan directory;
* the clone's git metadata against the host-written *baseline*: the
  ``.git/config`` entries (allowlist in `repo_guard.ALLOWED_CLONE_CONFIG`),
  ``.git/hooks/*`` and the agent-writable control files
  (`repo_guard.AGENT_WRITABLE_GIT_FILES`) must not change;
* *host anchors* before/after the step: lstat fingerprints of the files an
  escaped agent would target to get code run on the host -- the target
  repository's ``config``, ``hooks/*`` and ``info/*`` and the superproject's
  ``hooks/*``, ``task.md`` and ``run.json`` -- a few dozen lstat calls. The
  superproject's ``.git/config`` changes legitimately when agents are added,
  so its entries are checked against an allowlist instead. Other agents'
  workspaces are not compared: parallel agents change them legitimately.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ultrawork.sandbox import agent_tree
from ultrawork.workspace.gitcmd import parse_config_text
from ultrawork.workspace.repo_guard import (AGENT_WRITABLE_GIT_FILES, ALLOWED_CLONE_CONFIG,
                                  ALLOWED_SUPERPROJECT_CONFIG, config_findings, read_regular_file)

Fingerprint = list  # [kind, mode, size, mtime_ns, inode]


def fingerprint(path: Path) -> Fingerprint | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino]


def tree_snapshot(root: Path, skip: tuple[str, ...] = (".git",)) -> dict[str, Fingerprint]:
    """Fingerprint every entry below `root` but its folders (not descending into `skip` at top level)."""
    snap: dict[str, Fingerprint] = {}
    for e in agent_tree.walk(root, skip_top=skip):
        if not e.is_dir:
            st = e.stat
            snap[e.rel] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino]
    return snap


def changed_paths(before: dict[str, Fingerprint], after: dict[str, Fingerprint]) -> list[str]:
    """Paths added, removed or modified between two `tree_snapshot`s."""
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k))


def escaping_symlinks(root: Path, allowed_roots: tuple[Path, ...] = ()) -> list[str]:
    """Symlinks under `root` whose target lies outside `root` (and `allowed_roots`).

    A link is inside only if both its lexical target and its on-disk resolution
    (``realpath``: readlink on names, no file is opened) stay inside, so chains
    of in-tree links cannot smuggle a path out.
    """
    roots = (root,) + tuple(allowed_roots)
    found = []
    for e in agent_tree.walk(root):
        if not e.is_link:
            continue
        full = os.path.join(root, e.rel)
        lexical = os.path.normpath(os.path.join(os.path.dirname(full), e.link))
        on_disk = os.path.realpath(full)  # resolves names only; opens no file
        if not (_inside(lexical, roots) and _inside(on_disk, roots)):
            found.append(f"symlink {e.rel} -> {e.link}")
    return found


def nested_repositories(root: Path) -> list[str]:
    """``.git`` entries below `root` (the plan directory must hold notes, not repositories)."""
    return [e.rel for e in agent_tree.walk(root) if e.rel.rsplit("/", 1)[-1].lower() == ".git"]


def _inside(path: str, roots: tuple[Path, ...]) -> bool:
    return any(path == str(r) or path.startswith(str(r) + os.sep) for r in roots)


def _digest(path: Path) -> str:
    fp = fingerprint(path)
    if fp is None:
        return "absent"
    if not stat.S_ISREG(fp[0]):
        return f"type:{oct(fp[0])}"
    data = read_regular_file(path)
    return hashlib.sha256(data or b"").hexdigest()


def git_metadata_snapshot(git_dir: Path) -> dict:
    """The parts of a clone's git directory that decide what host git would run or read."""
    hooks = {}
    if os.path.isdir(git_dir / "hooks") and not os.path.islink(git_dir / "hooks"):
        for name in sorted(os.listdir(git_dir / "hooks")):
            hooks[name] = _digest(git_dir / "hooks" / name)
    elif os.path.lexists(git_dir / "hooks"):
        hooks["<hooks dir>"] = _digest(git_dir / "hooks")
    config = read_regular_file(git_dir / "config")
    return {
        "git_dir": _digest(git_dir) if os.path.islink(git_dir) or not os.path.isdir(git_dir) else "dir",
        "config": (config or b"").decode("utf-8", "replace") if config is not None else None,
        "hooks": hooks,
        "control_files": {rel: _digest(git_dir / rel) for rel in AGENT_WRITABLE_GIT_FILES},
    }


def git_metadata_findings(baseline: dict, current: dict, *, where: str, cwd: Path) -> list[str]:
    """Compare two `git_metadata_snapshot`s; report every dangerous difference."""
    findings = []
    if current["git_dir"] != "dir":
        findings.append(f"{where}/.git is no longer a directory ({current['git_dir']})")
    for name in sorted(set(baseline["hooks"]) | set(current["hooks"])):
        if baseline["hooks"].get(name) != current["hooks"].get(name):
            findings.append(f"{where}/.git/hooks/{name} was created or changed")
    for rel, digest in current["control_files"].items():
        if digest != baseline["control_files"].get(rel, "absent"):
            findings.append(f"{where}/.git/{rel} was created or changed")
    if current["config"] is None:
        findings.append(f"{where}/.git/config is missing or not a regular file")
    elif current["config"] != baseline["config"]:
        findings += config_findings(parse_config_text(baseline["config"] or "", cwd=cwd),
                                    parse_config_text(current["config"], cwd=cwd),
                                    ALLOWED_CLONE_CONFIG, f"{where}/.git/config")
    return findings


def host_anchor_paths(target_git_dir: Path, run_dir: Path) -> list[Path]:
    """The host files whose change during a step means an agent escaped (see module doc)."""
    paths = [target_git_dir / "config", target_git_dir / "hooks", target_git_dir / "info",
             run_dir / ".git" / "hooks", run_dir / "task.md", run_dir / "run.json"]
    for directory in (target_git_dir / "hooks", target_git_dir / "info", run_dir / ".git" / "hooks"):
        if os.path.isdir(directory) and not os.path.islink(directory):
            paths += [directory / name for name in sorted(os.listdir(directory))]
    return paths


def host_anchor_snapshot(target_git_dir: Path, run_dir: Path) -> dict[str, Fingerprint | None]:
    return {str(p): fingerprint(p) for p in host_anchor_paths(target_git_dir, run_dir)}


def host_anchor_findings(before: dict, after: dict) -> list[str]:
    return [f"host file {path} was created, changed or removed during the step"
            for path in sorted(set(before) | set(after)) if before.get(path) != after.get(path)]


def superproject_config_findings(run_dir: Path) -> list[str]:
    text = read_regular_file(run_dir / ".git" / "config")
    if text is None:
        return ["superproject .git/config is missing or not a regular file"]
    entries = parse_config_text(text.decode("utf-8", "replace"), cwd=run_dir)
    return config_findings([], entries, ALLOWED_SUPERPROJECT_CONFIG, "superproject .git/config")
