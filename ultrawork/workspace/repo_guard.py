"""Trust checks for the repositories host-side git works in.

Two kinds of repository reach the host:

* the *target* repository (the user's): trusted, but its ``.gitmodules`` is
  checked because submodule names/paths/URLs are a classic injection vector;
* an *agent clone*: its work tree is writable by the agent, so untrusted; its
  git directory lives outside the work tree and is host-owned. Before host git
  runs on it, `sanitize_clone` checks the git directory against the
  host-written baseline (config, hooks, info files, alternates, commondir),
  deletes fifos, sockets and device nodes from the work tree (git never stores
  them; a fifo would hang host git) and puts back the work tree's ``.git``
  file. Nothing here follows a symlink.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ultrawork.workspace.errors import GitError, WorkspaceError, WorkspaceEscapeError
from ultrawork.workspace.gitcmd import run_git

# Config keys an agent may change in its clone without it being a finding.
ALLOWED_CLONE_CONFIG: tuple[str, ...] = (
    "user.name", "user.email", "branch.*.remote", "branch.*.merge", "branch.*.rebase",
    "color.*", "advice.*", "pull.rebase", "pull.ff", "core.filemode", "core.autocrlf",
    "core.logallrefupdates", "core.quotepath", "init.defaultbranch", "log.*", "format.pretty",
)
# Config keys the host itself writes in the superproject.
ALLOWED_SUPERPROJECT_CONFIG: tuple[str, ...] = (
    "core.repositoryformatversion", "core.filemode", "core.bare", "core.logallrefupdates",
    "submodule.*.url", "submodule.*.active",
)
# Files in an agent's .git that change how host git behaves; absent from the baseline.
AGENT_WRITABLE_GIT_FILES: tuple[str, ...] = (
    "commondir", "config.worktree", "objects/info/alternates", "objects/info/http-alternates",
    "info/attributes", "info/exclude", "info/grafts", "info/sparse-checkout", "gitdir",
)
_BAD_URL = re.compile(r"^-|^[a-z0-9+]+::|^(ssh|git\+ssh|ssh\+git)://-|[\x00-\x1f\x7f]", re.I)


@dataclass(frozen=True)
class TargetRepo:
    """The user's repository the agents branch from."""

    path: Path
    git_dir: Path
    bare: bool


def open_target_repo(repo: object) -> TargetRepo:
    """Resolve `repo` to a repository top level (or bare repo); else `WorkspaceError`."""
    if not isinstance(repo, (str, os.PathLike)):
        raise WorkspaceError(f"repository path must be a path, got {type(repo).__name__}")
    path = Path(repo).expanduser().resolve()
    if not path.is_dir():
        raise WorkspaceError(f"not a git repository (no such directory): {path}")
    try:
        out = run_git(["rev-parse", "--is-bare-repository", "--absolute-git-dir"], cwd=path,
                      env={"GIT_CEILING_DIRECTORIES": str(path.parent)}).stdout.split("\n")
        bare = out[0].strip() == "true"
        git_dir = Path(out[1].strip())
        if not bare:
            top = run_git(["rev-parse", "--show-toplevel"], cwd=path).stdout.strip()
            if Path(top).resolve() != path:
                raise WorkspaceError(f"{path} is inside a repository; give its top level {top}")
    except GitError as exc:
        raise WorkspaceError(f"not a git repository: {path}") from exc
    return TargetRepo(path=path, git_dir=git_dir.resolve(), bare=bare)


def _bad_submodule_path(text: str) -> bool:
    parts = text.replace("\\", "/").split("/")
    return (not text or text.startswith(("/", "-")) or ".." in parts or ".git" in parts
            or re.search(r"[\x00-\x1f\x7f]", text) is not None or re.match(r"^[A-Za-z]:", text) is not None)


def check_gitmodules(target: TargetRepo, commit: str) -> None:
    """Refuse a base commit whose .gitmodules names/paths escape the tree or look like options.

    URLs may be relative (``../lib.git`` is common and never fetched here: agent
    clones do not init submodules); option-like or helper-transport URLs are refused.
    """
    listing = run_git(["ls-tree", "-z", "--end-of-options", commit, "--", ".gitmodules"],
                      cwd=target.path).stdout
    if not listing:
        return
    mode = listing.split(" ", 1)[0]
    if mode != "100644":
        raise WorkspaceError(f".gitmodules at {commit[:12]} is not a regular file (mode {mode})")
    result = run_git(["config", "--no-includes", "--blob", f"{commit}:.gitmodules", "--list", "--null"],
                     cwd=target.path, check=False)
    if result.returncode != 0:
        raise WorkspaceError(f".gitmodules at {commit[:12]} is unparseable")
    for record in filter(None, result.stdout.split("\0")):
        key, _, value = record.partition("\n")
        match = re.fullmatch(r"submodule\.(.*)\.([^.]*)", key, re.S)
        if not match:
            continue
        name, field = match.group(1), match.group(2).lower()
        if _bad_submodule_path(name):
            raise WorkspaceError(f"refusing repository: .gitmodules submodule name {name!r}")
        if field == "path" and _bad_submodule_path(value):
            raise WorkspaceError(f"refusing repository: .gitmodules path {value!r} for {name!r}")
        if field == "url" and _BAD_URL.search(value):
            raise WorkspaceError(f"refusing repository: .gitmodules url {value!r} for {name!r}")
        if field == "update" and value.startswith("!"):
            raise WorkspaceError(f"refusing repository: .gitmodules update command for {name!r}")


def key_allowed(key: str, allowed: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in allowed)


def config_findings(before: list[tuple[str, str]], after: list[tuple[str, str]],
                    allowed: tuple[str, ...], where: str) -> list[str]:
    """Report config entries added or changed since `before` whose key is not allowed."""
    old = set(before)
    findings = []
    for key, value in after:
        if (key, value) not in old and not key_allowed(key, allowed):
            findings.append(f"{where}: config {key}={value[:120]!r} was set")
    return findings


def read_regular_file(path: Path, limit: int = 1 << 20) -> bytes | None:
    """Read a regular file without following symlinks or blocking on fifos; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)[:limit]
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically; a symlink at `path` is replaced, never written through."""
    tmp = path.with_name(f".{path.name}.ultrawork-tmp")
    _remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def git_dir_symlinks(git_dir: Path) -> list[str]:
    """Every symlink inside a clone's .git (git itself never makes one there)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(git_dir):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                found.append(os.path.relpath(os.path.join(dirpath, name), git_dir.parent))
    return found


def remove_special_files(root: Path) -> list[str]:
    """Delete fifos, sockets and device nodes under `root`: git never stores them, and a
    fifo named ``.gitignore`` (or ``.git/HEAD``) would block host git forever."""
    from ultrawork.sandbox import agent_tree

    return agent_tree.remove_special_files(root)


def sanitize_clone(clone, baseline_config: bytes) -> list[str]:
    """Before host git runs on an agent clone (`clones.AgentClone`): check and reset its
    host-owned git directory to the baseline, drop special files from the work tree and
    put the work tree's ``.git`` file back; return what was reset.

    The git directory is never writable from a sandbox, so a change there means the host
    itself was reached: refused (`WorkspaceEscapeError`) when it is not a real directory
    or holds symlinks. What the agent did to its work tree's ``.git`` entry is undone
    (host git never reads it: it is given ``--git-dir``).
    """
    git_dir = clone.git_dir
    st = os.lstat(git_dir) if os.path.lexists(git_dir) else None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise WorkspaceEscapeError(f"the git directory of {clone.work_tree.name} is not a directory; "
                                   "refusing host git there", findings=[f"{git_dir} replaced"])
    links = git_dir_symlinks(git_dir)
    if links:
        raise WorkspaceEscapeError(f"symlinks inside the git directory of {clone.work_tree.name}; "
                                   "refusing host git there", findings=[f"symlink {p}" for p in links])
    reset = [f"special file {p}" for p in remove_special_files(clone.work_tree)]
    if read_regular_file(git_dir / "config") != baseline_config:
        write_private_file(git_dir / "config", baseline_config)
        reset.append("git directory config")
    hooks = git_dir / "hooks"
    if os.path.lexists(hooks):
        _remove(hooks)
        reset.append("git directory hooks")
    for rel in AGENT_WRITABLE_GIT_FILES:
        if os.path.lexists(git_dir / rel):
            _remove(git_dir / rel)
            reset.append(f"git directory {rel}")
    gitfile = clone.work_tree / ".git"
    if read_regular_file(gitfile) != clone.gitfile():      # None for a link, a folder, a fifo
        _remove(gitfile)
        write_private_file(gitfile, clone.gitfile())
        reset.append(".git in the work tree (the agent had replaced it)")
    return reset
