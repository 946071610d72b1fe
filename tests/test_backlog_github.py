"""GitHub issues with a label as a backlog, against the local GitHub stand-in (no Docker, no Prefect)."""

from __future__ import annotations

import pytest

from ultrawork.backlog import BacklogError, IssueFileError, UnknownLabelError, open_backlog
from ultrawork.backlog.github_issues import event_comment
from github_stub import GitHubStub
from ultrawork.workspace.github import GitHubTarget

SPEC_BODY = "The widget crashes on empty names.\n\n```ultrawork\nagents: [explore, frontend]\nbase: main\n```\n"


@pytest.fixture
def stub():
    with GitHubStub() as stub:
        stub.labels.add("ultrawork")
        yield stub


def target(stub: GitHubStub) -> GitHubTarget:
    return GitHubTarget(repository="someone/else", token=stub.token, api_url=stub.url)


def test_labelled_issues_become_the_backlog_and_events_become_comments(stub):
    good = stub.add_issue("Validate names", SPEC_BODY, ("ultrawork", "bug"))
    stub.add_issue("Not for the sweep", "no label")
    bad = stub.add_issue("Broken block", "```ultrawork\nagents: [oops\n```\n", ("ultrawork",))
    source = open_backlog(f"github:{stub.repository}?label=ultrawork&repo=/srv/widgets", github=target(stub))

    issues, problems = source.scan()
    assert [i.id for i in issues] == [str(good)]
    issue = issues[0]
    assert (issue.repo, issue.agents, issue.base, issue.state, issue.version) == (
        "/srv/widgets", ["explore", "frontend"], "main", "backlog", 0)
    assert issue.task == "Validate names\n\nThe widget crashes on empty names." and "```" not in issue.task
    assert len(problems) == 1 and isinstance(problems[0], IssueFileError)
    assert f"github:acme/widgets#{bad}" in str(problems[0]) and "not valid YAML" in str(problems[0])

    # A person's comment and a hand-made duplicate of version 1 do not change the history.
    claimed = source.apply(issue, "claim", actor="sweep-1")
    stub._add_comment(good, "Looks important, thanks!")
    first = next(e for e in claimed.history)
    stub._add_comment(good, event_comment(first.model_copy(update={"actor": "impostor", "dest": "implement"})))
    started = source.apply(source.get(str(good)), "run_started", actor="sweep-1", run_id="r1", flow_run_id="f1")
    assert [(e.version, e.trigger, e.actor) for e in started.history] == [
        (1, "claim", "sweep-1"), (2, "run_started", "sweep-1")]
    assert started.state == "implement" and source.get(str(good)).version == 2
    assert stub.issues[good]["labels"] == ["bug", "ultrawork", "ultrawork:implement"], "state label replaced"
    bodies = [c["body"] for c in stub.comments[good]]
    assert sum(b.startswith("<!-- ultrawork:event") for b in bodies) == 3 and "Looks important" in bodies[1]


def test_a_label_that_does_not_exist_is_a_named_error(stub):
    source = open_backlog(f"github:{stub.repository}?label=nightly", github=target(stub))
    with pytest.raises(UnknownLabelError, match="label 'nightly' does not exist in acme/widgets"):
        source.scan()
    with pytest.raises(BacklogError, match="needs GitHub settings"):
        open_backlog(f"github:{stub.repository}")
