"""An evaluation's inputs: tasks (a repository at a commit, a task text, checks, a hidden check)
and the settings compared (profile, model, attempts). Plain data, no Prefect.

A task's ``repo`` is a repository path or URL, or a plain folder next to the tasks file: such
a folder is made a git repository once per evaluation (one commit with a fixed date, so the
same folder gives the same commit), in the evaluation's own folder.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from ultrawork.agents.attempts import MAX_ATTEMPTS
from ultrawork.workspace.gitcmd import Identity, run_git

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")
FIXED_DATE = "2026-01-01T00:00:00+00:00"


class EvalError(ValueError):
    """A tasks or settings file that cannot be evaluated, refused before anything starts."""


def _short_name(kind: str, value: str) -> str:
    """A task's or setting's name: it names a run id, files and report columns."""
    if not NAME.fullmatch(value):
        raise ValueError(f"{kind} name {value!r}: use lower case letters, digits and '-' (at most 24)")
    return value


def _argv(value):
    if isinstance(value, str):
        return shlex.split(value)
    return value


class EvalTask(BaseModel):
    name: str = Field(description="Short name: lower case letters, digits and '-', at most 24.")
    repo: str = Field(description="A repository path or URL, or a plain folder (relative to the tasks file).")
    commit: str = Field("HEAD", description="The commit the agents start from.")
    task: str = Field(description="What the agents are asked to do.")
    checks: list[str] = Field(description="The checks the agents may run (and the attempts are ranked by).")
    hidden_check: list[str] | None = Field(None, description="Run after integration only; the agents never see it.")
    agents: list[str] = Field(default_factory=lambda: ["frontend"])

    @field_validator("checks", "hidden_check", mode="before")
    @classmethod
    def _split(cls, value):          # a string is split as a shell would (no shell ever runs it)
        return _argv(value)

    _name = field_validator("name")(classmethod(lambda cls, value: _short_name("task", value)))

    @field_validator("checks")
    @classmethod
    def _checks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a task needs its checks (e.g. 'python3 -m unittest')")
        return value


class EvalSetting(BaseModel):
    name: str
    attempts: int = Field(1, ge=1, le=MAX_ATTEMPTS)
    agent_profile: str | None = Field(None, description="Named profile of the writers (builtin, model, "
                                                        "claude-code, opencode, codex).")
    attempt_profiles: list[str] | None = None
    model_settings: str | None = None
    agent_commands: dict[str, list[str]] | None = Field(None, description="Role (or attempt) -> the command it runs.")

    _name = field_validator("name")(classmethod(lambda cls, value: _short_name("setting", value)))


def _load(path: Path, key: str, model):
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvalError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise EvalError(f"{path} is not valid YAML: {exc}") from None
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise EvalError(f"{path} must hold a non-empty list under {key!r}")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(model.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "entry"
            raise EvalError(f"{path}: {key}[{i}].{where}: {first['msg']}") from None
    names = [o.name for o in out]
    if len(set(names)) != len(names):
        raise EvalError(f"{path}: each of the {key} needs its own name")
    return out


def load_tasks(path: Path) -> list[EvalTask]:
    tasks = _load(path, "tasks", EvalTask)
    for t in tasks:
        if "://" not in t.repo and not (path.parent / t.repo).is_dir():
            raise EvalError(f"{path}: task {t.name}: {t.repo} is not a folder (relative to {path.parent})")
    return tasks


def load_settings(path: Path | None) -> list[EvalSetting]:
    if path is None:
        return [EvalSetting(name="builtin")]
    return _load(path, "settings", EvalSetting)


def task_repository(task: EvalTask, tasks_dir: Path, eval_dir: Path) -> tuple[str, str]:
    """(the repository a run works on, its base): a URL or repository as given; a plain folder made
    a repository with one commit (the same folder gives the same commit)."""
    if "://" in task.repo:
        return task.repo, task.commit
    source = (tasks_dir / task.repo).resolve()
    if (source / ".git").exists():
        return str(source), task.commit
    repo = eval_dir / "repos" / task.name
    if not (repo / ".git").is_dir():
        scratch = repo.with_name(f".{task.name}.tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(source, scratch, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
        run_git(["init", "--quiet", "--template=", "--initial-branch=main"], cwd=scratch)
        run_git(["add", "-A"], cwd=scratch)
        run_git(["commit", "--quiet", "-m", f"evaluation task {task.name}"], cwd=scratch,
                identity=Identity("ultrawork-eval", "eval@ultrawork.invalid"),
                env={"GIT_AUTHOR_DATE": FIXED_DATE, "GIT_COMMITTER_DATE": FIXED_DATE})
        scratch.rename(repo)
    return str(repo), "HEAD"
