"""The issue state machine, its event-sourced history and the optimistic lock of issue files (no Docker, no Prefect)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

from ultrawork.backlog import (STATES, TRANSITIONS, ConcurrencyError, FileBacklog, GuardFailed, IllegalTransition, Issue,
                     IssueFileError, UnknownStateError, allowed, fire, replay)
from ultrawork.backlog.machine import OUTCOME_TRIGGERS, TRIGGERS

DATA = {"run_id": "r1", "flow_run_id": "f1", "reason": "because"}   # satisfies every guard
SPEC = {"title": "Fix it", "repo": "/srv/repo", "task": "Fix the TODO"}


def path_to(state: str) -> list[str]:
    """Triggers that lead from backlog to ``state`` (breadth first over the table)."""
    seen, queue = {"backlog": []}, deque(["backlog"])
    while queue:
        current = queue.popleft()
        for t in TRANSITIONS:
            if t.source == current and t.dest not in seen:
                seen[t.dest] = seen[current] + [t.trigger]
                queue.append(t.dest)
    return seen[state]


def issue_in(state: str) -> Issue:
    issue = Issue(id="i1", **SPEC)
    for trigger in path_to(state):
        issue = issue.with_event(fire(issue, trigger, actor="test", data=DATA))
    assert issue.state == state
    return issue


def test_every_state_is_reachable_and_every_legal_transition_passes():
    assert set(STATES) == {"backlog", "define", "research", "plan", "implement", "review", "accepted", "not_doing"}
    for state in STATES:
        path_to(state)                                  # KeyError if unreachable
    for t in TRANSITIONS:
        issue = issue_in(t.source)
        event = fire(issue, t.trigger, actor="test", data=DATA)
        assert (event.source, event.dest, event.version) == (t.source, t.dest, issue.version + 1)
        assert issue.with_event(event).state == t.dest


def test_every_illegal_transition_raises_a_named_error():
    checked = 0
    for state in STATES:
        issue = issue_in(state)
        legal = {t.trigger for t in TRANSITIONS if t.source == state}
        assert set(allowed(state)) == legal
        for trigger in [*TRIGGERS, "teleport"]:
            if trigger in legal:
                continue
            with pytest.raises(IllegalTransition) as info:
                fire(issue, trigger, data=DATA)
            assert "issue i1" in str(info.value) and state in str(info.value)
            checked += 1
    assert checked > 60
    assert allowed("accepted") == []        # accepted is final


def test_guards_refuse_with_a_reason():
    bare = Issue(id="i2", title="no repo")
    with pytest.raises(GuardFailed, match="no repo and no task"):
        fire(bare, "claim")
    with pytest.raises(GuardFailed, match="needs reason"):
        fire(issue_in("define"), "drop")
    with pytest.raises(GuardFailed, match="needs run_id"):
        fire(issue_in("implement"), "review_requested")
    assert set(OUTCOME_TRIGGERS) == {"integrated", "nothing-approved", "conflict", "review-timed-out", "failed"}
    for outcome, trigger in OUTCOME_TRIGGERS.items():     # every outcome can be recorded from review
        fire(issue_in("review"), trigger, data=DATA)


def test_replaying_the_history_gives_the_stored_state(tmp_path):
    backlog = FileBacklog(tmp_path)
    rng = random.Random(7)
    for n in range(6):
        issue = backlog.create(f"walk-{n}", **SPEC)
        for _ in range(rng.randint(3, 14)):
            options = allowed(issue.state)
            if not options:
                break
            issue = backlog.apply(issue, rng.choice(options), actor="walker", **DATA)
        stored = __import__("yaml").safe_load(backlog.path(issue.id).read_text())
        reread = backlog.get(issue.id)
        assert stored["state"] == replay(reread.history, "x") == issue.state == reread.state
        assert stored["version"] == len(stored["history"]) == reread.version == issue.version
        assert [e["version"] for e in stored["history"]] == list(range(1, issue.version + 1))


def test_a_stale_write_raises_and_leaves_the_file_byte_for_byte_unchanged(tmp_path):
    backlog = FileBacklog(tmp_path)
    stale = backlog.create("race", **SPEC)
    fresh = backlog.apply(stale, "start", actor="alice")        # version 1
    before = backlog.path("race").read_bytes()
    stat = os.stat(backlog.path("race"))
    with pytest.raises(ConcurrencyError, match="version 1, not 0"):
        backlog.apply(stale, "claim", actor="bob")               # built on version 0
    assert backlog.path("race").read_bytes() == before
    assert os.stat(backlog.path("race")).st_ino == stat.st_ino, "not even rewritten"
    assert not list(backlog.path("race").parent.glob(".issue.*.tmp")), "no temporary file left"
    assert backlog.get("race").version == fresh.version == 1


BAD_FILES = {
    "bad-yaml": ("title: [unclosed\n", IssueFileError, "not valid YAML"),
    "not-a-mapping": ("- just\n- a list\n", IssueFileError, "must be a mapping"),
    "typo-field": ("title: x\nrepo_path: /srv\n", IssueFileError, "repo_path"),
    "unknown-state": ("title: x\nstate: doing\n", UnknownStateError, "unknown state 'doing'"),
    "bad-history": ("title: x\nhistory:\n- {version: 1, trigger: claim, source: backlog, dest: accepted, at: now}\n",
                    IssueFileError, "not a transition the machine allows"),
    "state-lies": ("title: x\nstate: review\n", IssueFileError, "disagrees with its history"),
}


def test_malformed_issue_files_are_named_and_skipped(tmp_path):
    backlog = FileBacklog(tmp_path)
    backlog.create("good", **SPEC)
    for name, (text, _, _) in BAD_FILES.items():
        (tmp_path / "issues" / name).mkdir(parents=True)
        (tmp_path / "issues" / name / "issue.yaml").write_text(text)
    issues, problems = backlog.scan()
    assert [i.id for i in issues] == ["good"]
    by_file = {Path(p.where).parent.name: p for p in problems}
    assert set(by_file) == set(BAD_FILES)
    for name, (_, error, words) in BAD_FILES.items():
        assert isinstance(by_file[name], error), (name, by_file[name])
        assert words in str(by_file[name]) and f"issues/{name}/issue.yaml" in str(by_file[name])


def test_issues_cli_lists_shows_and_moves(tmp_path):
    backlog = FileBacklog(tmp_path)
    backlog.create("one", **SPEC)
    backlog.apply(backlog.get("one"), "claim", actor="sweep")
    (tmp_path / "issues" / "broken").mkdir()
    (tmp_path / "issues" / "broken" / "issue.yaml").write_text("state: nowhere\n")
    exe = str(Path(sys.executable).with_name("ultrawork"))

    def cli(*args):
        return subprocess.run([exe, *args, "--backlog", str(tmp_path)], capture_output=True, text=True, timeout=60)

    listed = cli("issues", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["issues"] == [{"id": "one", "state": "implement", "version": 1, "title": "Fix it", "repo": "/srv/repo"}]
    assert "broken/issue.yaml" in data["errors"][0] and "unknown state 'nowhere'" in data["errors"][0]
    shown = cli("issues", "show", "one")
    assert "state implement" in shown.stdout and "claim" in shown.stdout and "backlog -> implement" in shown.stdout
    refused = cli("issues", "move", "one", "accept")
    assert refused.returncode == 1 and "'accept' is not allowed in state 'implement'" in refused.stderr
    moved = cli("issues", "move", "one", "drop", "--reason", "duplicate")
    assert moved.returncode == 0 and "not_doing" in moved.stdout
    assert backlog.get("one").history[-1].data == {"reason": "duplicate"}
