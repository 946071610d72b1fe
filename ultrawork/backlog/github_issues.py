"""GitHub issues with a label as a backlog (PyGithub, host side only).

How an issue maps onto the backlog:

* **Spec.** The issue's title and body are the task. A fenced block
  ```` ```ultrawork ```` in the body holds YAML with ``repo`` (the local checkout
  a run works on; default: the backlog's ``default_repo``), ``agents`` and
  ``base``; it is left out of the task text.
* **History.** Each event is one issue comment whose body starts with
  ``<!-- ultrawork:event {json} -->`` followed by a line for people. The
  version is the number of accepted event comments.
* **Optimistic lock.** GitHub has no compare-and-swap, so an append is
  write-then-verify: re-read the comments, refuse if the version moved,
  post the event comment, re-read, and keep it only if it is the *first*
  comment carrying that version (lowest comment id). A writer that lost the
  race deletes its comment and raises :class:`ConcurrencyError`. Readers
  apply the same rule (first comment per version wins, later duplicates are
  ignored), so even a writer that died before deleting its comment cannot
  change the projection.
* **State label.** After each event the issue's ``ultrawork:<state>`` label
  is replaced, for people browsing GitHub; the comments stay the truth.
"""

from __future__ import annotations

import json
import logging
import re

import yaml
from github import Auth, Github, GithubException, UnknownObjectException

from ultrawork.workspace.github import GitHubTarget

from .errors import BacklogError, ConcurrencyError, IssueFileError, IssueNotFound, UnknownLabelError
from .issue import Issue, issue_from_document
from .machine import IssueEvent, replay
from .store import Backlog

MARKER = re.compile(r"^<!-- ultrawork:event (\{.*?\}) -->", re.S)
SPEC_BLOCK = re.compile(r"```ultrawork[ \t]*\n(.*?)```[ \t]*\n?", re.S)
STATE_LABEL_PREFIX = "ultrawork:"

log = logging.getLogger("ultrawork.backlog")


def event_comment(event: IssueEvent) -> str:
    payload = json.dumps(event.model_dump(), sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e")
    return (f"<!-- ultrawork:event {payload} -->\n"
            f"**ultrawork** · `{event.source}` → `{event.dest}` ({event.trigger}) by {event.actor or 'someone'}"
            f" · version {event.version}")


def accepted_events(comments) -> list[tuple[int, IssueEvent]]:
    """(comment id, event) for the comments that make the history: the first one of each version, in order."""
    accepted: list[tuple[int, IssueEvent]] = []
    for comment in sorted(comments, key=lambda c: c.id):
        match = MARKER.match(comment.body or "")
        if not match:
            continue
        try:
            event = IssueEvent.model_validate(json.loads(match.group(1)))
        except ValueError:
            continue   # someone edited the marker by hand: not an event
        if event.version == len(accepted) + 1:
            accepted.append((comment.id, event))
    return accepted


class GitHubBacklog(Backlog):
    """Open issues carrying ``label`` in ``target.repository``."""

    def __init__(self, target: GitHubTarget, label: str = "ultrawork", default_repo: str = "",
                 mirror_labels: bool = True):
        self.target, self.label, self.default_repo = target, label, default_repo
        self.mirror_labels = mirror_labels
        self.name = f"github:{target.repository} (label {label!r})"
        self._gh = Github(auth=Auth.Token(target.token.get_secret_value()), base_url=target.api_url,
                          retry=None, timeout=30)
        self._repo = None

    def _repository(self):
        if self._repo is None:
            try:
                self._repo = self._gh.get_repo(self.target.repository)
            except GithubException as exc:
                raise BacklogError(f"cannot read {self.target.repository} on {self.target.api_url}: "
                                   f"{exc.status} {_message(exc)}") from None
        return self._repo

    def _where(self, number: int | str) -> str:
        return f"github:{self.target.repository}#{number}"

    def _issue(self, issue_id: str):
        if not str(issue_id).isdigit():
            raise IssueNotFound(f"{issue_id!r} is not a GitHub issue number")
        try:
            return self._repository().get_issue(int(issue_id))
        except UnknownObjectException:
            raise IssueNotFound(f"no issue {self._where(issue_id)}") from None

    def _to_issue(self, gh_issue, comments=None) -> Issue:
        where = self._where(gh_issue.number)
        body = gh_issue.body or ""
        spec: dict = {}
        block = SPEC_BLOCK.search(body)
        if block:
            try:
                spec = yaml.safe_load(block.group(1)) or {}
            except yaml.YAMLError as exc:
                raise IssueFileError(where, f"the ultrawork block is not valid YAML ({str(exc).splitlines()[0]})") from None
            if not isinstance(spec, dict):
                raise IssueFileError(where, "the ultrawork block must be a mapping (repo: ..., agents: [...])")
            body = SPEC_BLOCK.sub("", body)
        task = f"{gh_issue.title}\n\n{body.strip()}".strip()
        comments = list(gh_issue.get_comments()) if comments is None else comments
        doc = {"title": gh_issue.title, "task": task, "repo": self.default_repo, **spec,
               "history": [e.model_dump() for _, e in accepted_events(comments)]}
        return issue_from_document(str(gh_issue.number), doc, where)

    def check_label(self) -> None:
        try:
            self._repository().get_label(self.label)
        except UnknownObjectException:
            raise UnknownLabelError(self.target.repository, self.label) from None

    def scan(self) -> tuple[list[Issue], list[BacklogError]]:
        self.check_label()
        issues, errors = [], []
        for gh_issue in self._repository().get_issues(state="open", labels=[self.label]):
            if "/pull/" in (gh_issue.html_url or ""):      # the issues API lists pull requests too
                continue
            try:
                issues.append(self._to_issue(gh_issue))
            except BacklogError as exc:
                errors.append(exc)
        return issues, errors

    def get(self, issue_id: str) -> Issue:
        return self._to_issue(self._issue(issue_id))

    def append(self, issue_id: str, event: IssueEvent) -> Issue:
        gh_issue = self._issue(issue_id)
        where = self._where(issue_id)
        before = accepted_events(gh_issue.get_comments())
        if len(before) != event.version - 1:
            raise ConcurrencyError(issue_id, event.version - 1, len(before))
        replay([e for _, e in before] + [event], where)   # never write a history the machine forbids
        try:
            mine = gh_issue.create_comment(event_comment(event))
        except GithubException as exc:
            raise BacklogError(f"{where}: GitHub refused the event comment: {exc.status} {_message(exc)}") from None
        after = list(gh_issue.get_comments())
        accepted = accepted_events(after)
        if len(accepted) < event.version or accepted[event.version - 1][0] != mine.id:
            try:
                mine.delete()          # lost the race: take our comment back
            except GithubException:
                log.warning("%s: could not delete the losing event comment %s", where, mine.id)
            raise ConcurrencyError(issue_id, event.version - 1, len(accepted))
        issue = self._to_issue(gh_issue, comments=after)
        if self.mirror_labels:
            self._mirror_state(gh_issue, issue.state)
        return issue

    def _mirror_state(self, gh_issue, state: str) -> None:
        labels = [lb.name for lb in gh_issue.labels if not lb.name.startswith(STATE_LABEL_PREFIX)]
        try:
            gh_issue.set_labels(*labels, f"{STATE_LABEL_PREFIX}{state}")
        except GithubException as exc:   # cosmetic: the comments are the record
            log.warning("%s: could not set the state label: %s %s", self._where(gh_issue.number),
                        exc.status, _message(exc))

    def close(self) -> None:
        self._gh.close()


def _message(exc: GithubException) -> str:
    return exc.data.get("message", "") if isinstance(exc.data, dict) else str(exc.data)
