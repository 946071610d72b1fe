"""The run superproject: one git repository per run that records everything.

``$ULTRAWORK_HOME/runs/<run-id>/`` (home defaults to ``~/.ultrawork``) holds
``task.md``, ``run.json``, ``plans/<role>/Plan.md`` and one submodule per agent
at ``agents/<role>`` -- a full clone of the target repository whose git
directory is ``.git/modules/<role>`` (host-owned; the work tree the sandbox
edits holds only a ``.git`` file pointing there), so parallel agents share no
index or config lock and nothing an agent writes is read by host git. ``inbox/<role>/`` holds the
files an agent's sandbox reads, read-only, at ``/agent`` (its prompt); git ignores it. Every stage is one commit,
so the history is the run's event log and one commit pins every agent's
result. Commits are serialised with a file lock because all agents share the
superproject index. Host-private state (locks, hook state, isolation
baselines) lives in ``.git/ultrawork/``, which no container ever sees.

Stages (commit subjects): ``run created``, then per agent the stages of
``ultrawork.workspace.stages`` (``<role>: step <n> (exit <code>)``...).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ultrawork.sandbox import agent_tree
from ultrawork.workspace.agent import AgentWorkspace
from ultrawork.workspace.clones import branch_head, fetch_into_target
from ultrawork.workspace.errors import WorkspaceError
from ultrawork.workspace.gitcmd import Identity, run_git
from ultrawork.workspace.hooks import (HookContext, HookPoint, HookRegistry, HookSpec, hooks_from_config,
                             hooks_from_entry_points)
from ultrawork.workspace.locks import file_lock
from ultrawork.workspace.names import agent_branch, resolve_base_ref, validate_role, validate_run_id
from ultrawork.settings import ultrawork_home  # noqa: F401 - its one definition
from ultrawork.workspace.stages import Stage
from ultrawork.workspace.stages import subject as stage_subject
from ultrawork.workspace.repo_guard import TargetRepo, check_gitmodules, open_target_repo

RUN_SCHEMA = 1




def run_path(run_id: str) -> Path:
    return ultrawork_home() / "runs" / validate_run_id(run_id)


class RunSuperproject:
    """One run's superproject. Make it with `create`, reopen it (any process) with `open`."""

    def __init__(self, run_id: str, path: Path, meta: Mapping[str, Any], hooks: Iterable[HookSpec] = ()) -> None:
        self.run_id = run_id
        self.path = path
        self.meta = dict(meta)
        self.target = TargetRepo(Path(meta["target_repo"]), Path(meta["target_git_dir"]), bool(meta["target_bare"]))
        self.base_ref: str = meta["base_ref"]
        self.base_sha: str = meta["base_sha"]
        self.private_dir = path / ".git" / "ultrawork"
        self.identity = Identity("ultrawork", f"host@{run_id}.ultrawork.invalid")
        specs = hooks_from_config(meta.get("hooks", [])) + hooks_from_entry_points() + list(hooks)
        self.hooks = HookRegistry(specs, max_consecutive_failures=int(meta.get("max_hook_failures", 3)),
                                  state_path=self.private_dir / "hook-state.json")

    @property
    def remote(self) -> str | None:
        """The repository URL the run was given (its target is then this worker's cache clone of it)."""
        return self.meta.get("remote")

    @property
    def where(self) -> str:
        """Where the run's branches are kept, as a person names it: the URL, or the repository's path."""
        return self.remote or str(self.target.path)

    def pushing(self, branch: str):
        """Around an update of ``branch`` in the target: with a remote, push it there afterwards, leased."""
        if not self.remote:
            return nullcontext()
        from ultrawork.workspace.remote import LeasedPush

        return LeasedPush(self.target.path, self.remote, branch)

    @property
    def task(self) -> str:
        return (self.path / "task.md").read_text(encoding="utf-8")

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    def create(cls, run_id: str, repo: Path | str, task: str, base: str = "HEAD", *,
               hooks: Sequence[HookSpec | Mapping[str, Any]] = (), max_hook_failures: int = 3,
               remote: str | None = None) -> "RunSuperproject":
        """Validate everything, then make the run directory and commit ``run created``.

        ``remote``: the URL ``repo`` is this worker's cache clone of; what the run publishes is pushed there."""
        path = run_path(run_id)
        target = open_target_repo(repo)
        base_sha = resolve_base_ref(target.path, base)
        check_gitmodules(target, base_sha)
        if not isinstance(task, str) or not task.strip():
            raise WorkspaceError("task must be a non-empty string")
        configured = [dict(h) for h in hooks if isinstance(h, Mapping)]
        in_memory = [h for h in hooks if isinstance(h, HookSpec)]
        hooks_from_config(configured)  # fail on a bad hook target before creating anything
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path)
        except FileExistsError:
            raise WorkspaceError(f"run {run_id!r} already exists at {path}") from None
        meta = {"schema": RUN_SCHEMA, "run_id": run_id, "target_repo": str(target.path),
                "target_git_dir": str(target.git_dir), "target_bare": target.bare, "base_ref": base,
                "base_sha": base_sha, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "hooks": configured, "max_hook_failures": max_hook_failures, "remote": remote}
        try:
            run_git(["init", "--quiet", "--template=", "--initial-branch=main"], cwd=path)
            (path / ".git" / "info").mkdir(exist_ok=True)
            (path / ".git" / "info" / "exclude").write_text("/inbox/\n", encoding="utf-8")
            (path / "task.md").write_text(task if task.endswith("\n") else task + "\n", encoding="utf-8")
            (path / "run.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            run = cls(run_id, path, meta, in_memory)
            run.commit_stage("run created", [path / "task.md", path / "run.json"])
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return run

    @classmethod
    def open(cls, run_id: str, *, hooks: Iterable[HookSpec] = ()) -> "RunSuperproject":
        path = run_path(run_id)
        try:
            meta = json.loads((path / "run.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError) as exc:
            raise WorkspaceError(f"no run {run_id!r} under {path.parent}") from exc
        return cls(run_id, path, meta, hooks)

    # -- superproject git ---------------------------------------------------------------
    def _git(self, args: Sequence[str], **kwargs: Any):
        return run_git(args, cwd=self.path, identity=self.identity, **kwargs)

    def commit_stage(self, message: str, paths: Iterable[Path], agents: Iterable[AgentWorkspace] = ()) -> None:
        """Commit `paths` and the branch heads of `agents` as one stage, holding the run's
        superproject lock (kept short: every agent of the run waits on it).

        An agent's gitlink is written from its host-owned git directory (``--cacheinfo``):
        the superproject never reads anything through the agent's work tree. Files are
        staged with ``update-index`` (a symlink is stored as a link, never followed);
        anything it cannot take (a folder) goes through ``git add``."""
        rel = [os.path.relpath(p, self.path) for p in paths]
        links = [f"160000,{branch_head(ws.clone, ws.branch)},{os.path.relpath(ws.path, self.path)}"
                 for ws in agents]
        stage = ["update-index", "--add", "--remove"]
        for link in links:
            stage += ["--cacheinfo", link]
        with file_lock(self.private_dir / "superproject.lock"):
            if self._git([*stage, "--", *rel], check=False).returncode:
                self._git([*stage, "--"])                    # the gitlinks alone; then the paths
                self._git(["add", "--all", "--", *rel])
            self._git(["commit", "--quiet", "--allow-empty", "--no-verify", "--no-gpg-sign", "-m", message])

    def register_submodule(self, ws: AgentWorkspace) -> None:
        """Add the existing clone at ``agents/<role>`` as submodule `role`, branch recorded.

        What ``git submodule add`` of an existing clone records (the .gitmodules section, the
        gitlink, the submodule initialized in .git/config), written directly: the run's agents
        register one at a time, and ``submodule add`` takes several times as long."""
        rel = os.path.relpath(ws.path, self.path)
        head = branch_head(ws.clone, ws.branch)             # the clone's commit, read before the lock
        url = str(self.target.path)
        section = (f'[submodule "{validate_role(ws.role)}"]\n\tpath = {_config_value(rel)}\n'
                   f"\turl = {_config_value(url)}\n\tbranch = {_config_value(ws.branch)}\n")
        gitmodules = self.path / ".gitmodules"
        with file_lock(self.private_dir / "superproject.lock"):
            try:
                before = gitmodules.read_text(encoding="utf-8") if gitmodules.exists() else ""
                gitmodules.write_text(before + ("\n" if before and not before.endswith("\n") else "") + section,
                                      encoding="utf-8")
                _init_submodule(self.path / ".git" / "config", ws.role, url)
                self._git(["update-index", "--add", "--cacheinfo", f"160000,{head},{rel}", "--", ".gitmodules"])
                self._git(["commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m",
                           stage_subject(ws.role, Stage.WORKSPACE_CREATED)])
            except BaseException:
                self._unstage_submodule(ws.role, rel)
                raise

    def _unstage_submodule(self, role: str, rel: str) -> None:
        """Leave the shared index, .gitmodules and config as HEAD has them (lock held)."""
        self._git(["reset", "--quiet", "HEAD", "--", rel, ".gitmodules"], check=False)
        self._git(["config", "--remove-section", f"submodule.{role}"], check=False)
        if self._git(["cat-file", "-e", "HEAD:.gitmodules"], check=False).returncode == 0:
            self._git(["checkout", "--quiet", "HEAD", "--", ".gitmodules"], check=False)
        else:
            (self.path / ".gitmodules").unlink(missing_ok=True)

    def recorded_commit(self, role: str) -> str | None:
        """The agent commit the superproject's HEAD pins for `role`."""
        out = self._git(["ls-tree", "-z", "HEAD", "--", f"agents/{validate_role(role)}"]).stdout
        fields = out.split("\t", 1)[0].split()
        return fields[2] if len(fields) == 3 and fields[1] == "commit" else None

    def history(self) -> list[str]:
        """Commit subjects, oldest first: the run's event log."""
        return self._git(["log", "--reverse", "--format=%s"]).stdout.splitlines()

    def roles(self) -> list[str]:
        return sorted(key[len("submodule."):-len(".path")] for key in _gitmodules(self.path)
                      if key.startswith("submodule.") and key.endswith(".path"))

    # -- agents --------------------------------------------------------------------------
    def add_agent(self, role: str, *, checklist: Sequence[str] = (), sandbox_spec: Mapping[str, Any] | None = None,
                  branch: str | None = None,
                  on_cloned: Callable[[AgentWorkspace], None] | None = None) -> AgentWorkspace:
        """Run the setup hooks: validate, clone on the branch, add the submodule, write Plan.md.

        ``on_cloned`` is called (in this thread) as soon as the clone is on its branch,
        before the submodule and Plan.md are committed."""
        validate_role(role)
        ws = AgentWorkspace(self, role, branch if branch is not None else agent_branch(self.run_id, role))
        if os.path.lexists(ws.plan_path.parent):
            raise WorkspaceError(f"agent {role!r} already exists in run {self.run_id!r}")
        ctx = HookContext(HookPoint.SETUP, ws, checklist=[str(c) for c in checklist], sandbox_spec=sandbox_spec,
                          data={"on_cloned": on_cloned} if on_cloned else {})
        try:
            self.hooks.run(HookPoint.SETUP, ctx)
        except BaseException:
            if ctx.data.get("claimed"):
                self._discard_partial_agent(ws)
            raise
        return ws

    def _discard_partial_agent(self, ws: AgentWorkspace) -> None:
        """Best-effort undo of a failed setup: remove what no superproject commit records."""
        from ultrawork.sandbox import disk

        if self.recorded_commit(ws.role) is None:
            disk.release(ws.path)                       # its disk cap, unmounted before the folder goes
            agent_tree.remove(ws.path)                  # the agent's work tree
            shutil.rmtree(ws.git_dir, ignore_errors=True)
            shutil.rmtree(ws.state_dir, ignore_errors=True)
        plan_rel = os.path.relpath(ws.plan_path, self.path)
        if self._git(["cat-file", "-e", f"HEAD:{plan_rel}"], check=False).returncode != 0:
            disk.release(ws.plan_path.parent)
            agent_tree.remove(ws.plan_path.parent)      # its Plan.md folder

    def agent(self, role: str) -> AgentWorkspace:
        """Reopen an existing agent workspace (branch read from .gitmodules)."""
        validate_role(role)
        branch = _gitmodules(self.path).get(f"submodule.{role}.branch")
        if branch is None:
            raise WorkspaceError(f"no agent {role!r} in run {self.run_id!r}")
        return AgentWorkspace(self, role, branch)

    def publish_branch(self, role: str) -> str:
        """Make ``refs/heads/<agent branch>`` exist in the target repository (and on the remote); return its sha."""
        ws = self.agent(role)
        ws.prepare_host_git()
        with self.pushing(ws.branch):
            return fetch_into_target(self.target, ws.clone, ws.branch)


_GITMODULES: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}


def _gitmodules(run_path: Path) -> dict[str, str]:
    """The run's ``.gitmodules`` as ``{key: value}`` (read by git, once per change of the file: every
    reopened agent asks for its branch, and the run's agents register one at a time)."""
    path = run_path / ".gitmodules"
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return {}
    signature = (st.st_ino, st.st_size, st.st_mtime_ns)
    seen = _GITMODULES.get(str(path))
    if seen is not None and seen[0] == signature:
        return seen[1]
    out = run_git(["config", "--file", ".gitmodules", "--list", "-z"], cwd=run_path, check=False).stdout
    values = dict(entry.split("\n", 1) for entry in out.split("\0") if "\n" in entry)
    _GITMODULES[str(path)] = (signature, values)
    return values


def _init_submodule(config: Path, role: str, url: str) -> None:
    """What ``git submodule init`` writes for ``role`` (its url, active), appended to the superproject's
    own ``.git/config`` (host-owned; the run's lock is held): two ``git config`` processes less per agent."""
    section = f'\n[submodule "{validate_role(role)}"]\n\turl = {_config_value(url)}\n\tactive = true\n'
    with open(config, "a", encoding="utf-8") as fh:
        fh.write(section)


def _config_value(value: str) -> str:
    """``value`` quoted for a git config file (as ``git config`` would read it back)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'
