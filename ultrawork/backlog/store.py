"""The one interface every backlog source implements, and the issue-file directory source.

A backlog lists its issues and appends events to one issue's history under an
optimistic lock: ``append`` writes only when the stored version is still the
one the event was built on, else it raises :class:`ConcurrencyError` and
writes nothing.

Issue files: ``<backlog>/issues/<id>/issue.yaml`` holds the spec a person wrote
(title, repo, task, agents, base) and the history ultrawork appends; ``state``
and ``version`` beside it are a cache of the history for people reading the file.
An append holds ``<id>/.lock`` (flock), re-reads the file, compares versions,
writes a temporary file in the same directory, fsyncs it and renames it over
``issue.yaml``: a reader sees the old or the new file, never half of one, and a
stale writer leaves the file byte for byte as it was.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

import yaml

from ultrawork.workspace.locks import file_lock

from .errors import BacklogError, ConcurrencyError, IssueFileError, IssueNotFound
from .issue import ISSUE_ID, Issue, issue_document, issue_from_document
from .machine import IssueEvent, fire

ISSUE_FILE = "issue.yaml"


class Backlog(ABC):
    """Where issues live. ``scan`` never fails for one bad issue: it returns the error instead."""

    name: str = ""

    @abstractmethod
    def scan(self) -> tuple[list[Issue], list[BacklogError]]:
        """Every readable issue, and one named error per issue that could not be read."""

    @abstractmethod
    def get(self, issue_id: str) -> Issue:
        """One issue, read now (raises :class:`IssueNotFound` or the issue's error)."""

    @abstractmethod
    def append(self, issue_id: str, event: IssueEvent) -> Issue:
        """Append ``event`` if the issue is still at ``event.version - 1``; else ConcurrencyError."""

    def apply(self, issue: Issue, trigger: str, actor: str = "", **data) -> Issue:
        """Fire ``trigger`` on the issue as it was read and write the event (optimistic: no re-read)."""
        return self.append(issue.id, fire(issue, trigger, actor=actor, data=data))

    def apply_latest(self, issue_id: str, trigger: str, actor: str = "", attempts: int = 5, **data) -> Issue:
        """Re-read, fire, write; on a concurrent change re-read and try again (the machine re-checks)."""
        for attempt in range(attempts):
            try:
                return self.apply(self.get(issue_id), trigger, actor, **data)
            except ConcurrencyError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")


def _str_presenter(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, _str_presenter)


def dump_yaml(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class FileBacklog(Backlog):
    """A directory of issue files: ``<root>/issues/<id>/issue.yaml``."""

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise BacklogError(f"backlog {root} is not a directory")
        self.root = root
        self.issues_dir = root / "issues"
        self.name = str(root)

    def path(self, issue_id: str) -> Path:
        if not ISSUE_ID.match(issue_id):
            raise IssueNotFound(f"{issue_id!r} is not an issue id (it must match {ISSUE_ID.pattern})")
        return self.issues_dir / issue_id / ISSUE_FILE

    def ids(self) -> list[str]:
        if not self.issues_dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.issues_dir.glob(f"*/{ISSUE_FILE}"))

    def _read(self, issue_id: str) -> tuple[Issue, bytes]:
        path = self.issues_dir / issue_id / ISSUE_FILE
        if not ISSUE_ID.match(issue_id):
            raise IssueFileError(str(path), f"the directory name {issue_id!r} is not an issue id ({ISSUE_ID.pattern})")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise IssueNotFound(f"no issue {issue_id!r} in {self.issues_dir}") from None
        try:
            doc = yaml.safe_load(raw.decode("utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise IssueFileError(str(path), f"is not valid YAML ({detail})") from None
        return issue_from_document(issue_id, doc, str(path)), raw

    def get(self, issue_id: str) -> Issue:
        self.path(issue_id)
        return self._read(issue_id)[0]

    def scan(self) -> tuple[list[Issue], list[BacklogError]]:
        issues, errors = [], []
        for issue_id in self.ids():
            try:
                issues.append(self._read(issue_id)[0])
            except BacklogError as exc:
                errors.append(exc)
        return issues, errors

    def create(self, issue_id: str, **spec) -> Issue:
        """Write a new issue file (version 0, state backlog); refuses to overwrite one."""
        path = self.path(issue_id)
        issue = Issue(id=issue_id, where=str(path), **spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.parent / ".lock"):
            if path.exists():
                raise BacklogError(f"issue {issue_id} already exists ({path})")
            self._write(path, issue)
        return issue

    def append(self, issue_id: str, event: IssueEvent) -> Issue:
        path = self.path(issue_id)
        with file_lock(path.parent / ".lock"):
            current, _ = self._read(issue_id)
            if current.version != event.version - 1:
                raise ConcurrencyError(issue_id, event.version - 1, current.version)
            updated = current.with_event(event)
            updated.state  # noqa: B018 - replay: never write a history the machine forbids
            self._write(path, updated)
        return updated

    @staticmethod
    def _write(path: Path, issue: Issue) -> None:
        text = dump_yaml(issue_document(issue))
        fd, tmp = tempfile.mkstemp(prefix=".issue.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
