"""One backlog issue: what to do (repository, task) and its event-sourced history."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import IssueFileError
from .machine import IssueEvent, check_state, replay

ISSUE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class IssueSpec(BaseModel):
    """The fields a person writes: which repository, what task, optionally which agents and base."""

    model_config = ConfigDict(extra="forbid")

    title: str = ""
    repo: str = Field("", description="Path of the git repository a run works on.")
    task: str = Field("", description="What the agents should do (the Sisyphus task).")
    agents: list[str] | None = Field(None, description="Roles to run (default: chosen from the task).")
    base: str = Field("HEAD", description="Base ref the agents' branches start from.")


class Issue(IssueSpec):
    """An issue as read from a backlog: its spec, its history, and the projection of that history."""

    id: str
    where: str = Field("", description="The file or URL the issue was read from (for error messages).")
    history: list[IssueEvent] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not ISSUE_ID.match(value):
            raise ValueError(f"issue id {value!r} must match {ISSUE_ID.pattern}")
        return value

    @property
    def version(self) -> int:
        return len(self.history)

    @property
    def state(self) -> str:
        return replay(self.history, self.where or f"issue {self.id}")

    def with_event(self, event: IssueEvent) -> "Issue":
        return self.model_copy(update={"history": [*self.history, event]})

    def spec(self) -> dict[str, Any]:
        return IssueSpec.model_validate(self.model_dump(include=set(IssueSpec.model_fields))).model_dump()


def issue_from_document(issue_id: str, doc: object, where: str) -> Issue:
    """Parse a stored document (``issue.yaml`` or a GitHub issue turned into a dict); check its history.

    ``state`` and ``version`` in the document are a cache for people reading the file;
    they must agree with the history, which is the truth.
    """
    if not isinstance(doc, dict):
        raise IssueFileError(where, f"must be a mapping of fields, not {type(doc).__name__}")
    doc = dict(doc)
    if "id" in doc and str(doc.pop("id")) != issue_id:
        raise IssueFileError(where, f"its id does not match its directory name {issue_id!r}")
    stored_state = doc.pop("state", None)
    stored_version = doc.pop("version", None)
    if stored_state is not None:
        check_state(stored_state, where)
    history = doc.pop("history", None) or []
    if not isinstance(history, list):
        raise IssueFileError(where, "history must be a list of events")
    try:
        events = [IssueEvent.model_validate(e) for e in history]
        issue = Issue(id=issue_id, where=where, history=events, **doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise IssueFileError(where, f"field {field}: {first['msg']}") from None
    except TypeError as exc:
        raise IssueFileError(where, str(exc)) from None
    state = issue.state  # replays: a history the machine forbids raises here
    if stored_state is not None and stored_state != state:
        raise IssueFileError(where, f"state {stored_state!r} disagrees with its history, which leads to {state!r}")
    if stored_version is not None and stored_version != issue.version:
        raise IssueFileError(where, f"version {stored_version!r} disagrees with its {issue.version} event(s)")
    return issue


def issue_document(issue: Issue) -> dict[str, Any]:
    """What is stored: the spec, the cached state and version, then the history."""
    doc: dict[str, Any] = {"id": issue.id}
    doc.update({k: v for k, v in issue.spec().items() if v not in (None, "") and not (k == "base" and v == "HEAD")})
    doc["state"] = issue.state
    doc["version"] = issue.version
    doc["history"] = [e.model_dump() for e in issue.history]
    return doc
