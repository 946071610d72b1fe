"""Two sweeps started at the same moment never take the same issue: issue files and GitHub issues."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter

from ultrawork.backlog import ConcurrencyError, FileBacklog, claim_eligible
from ultrawork.backlog.github_issues import GitHubBacklog
from github_stub import GitHubStub
from ultrawork.workspace.github import GitHubTarget

SPEC = {"repo": "/srv/widgets", "task": "Fix the TODO"}


def make_backlog(root) -> set[str]:
    """20 issues: 16 eligible, 2 already moving on, 1 dropped, 1 the claim guard refuses. Returns the eligible ids."""
    backlog = FileBacklog(root)
    eligible = set()
    for n in range(20):
        issue_id = f"issue-{n:02d}"
        if n == 17:
            backlog.create(issue_id, title="no repository")           # guard: no repo, no task
            continue
        issue = backlog.create(issue_id, title=f"issue {n}", **SPEC)
        if n in (18, 19):
            backlog.apply(issue, "start", actor="alice")
        elif n == 16:
            backlog.apply(issue, "drop", actor="alice", reason="duplicate")
        else:
            eligible.add(issue_id)
    return eligible


def sweep_process(root: str, name: str, barrier, results) -> None:
    backlog = FileBacklog(root)
    issues, problems = backlog.scan()          # both sweeps read every issue at version 0 ...
    barrier.wait()                             # ... then claim at the same moment
    claims, skips = claim_eligible(backlog, issues, actor=name)
    results.put((name, [c.issue.id for c in claims], [(s.issue_id, s.reason) for s in skips]))


def test_two_sweeps_at_once_claim_every_eligible_issue_exactly_once(tmp_path):
    eligible = make_backlog(tmp_path)
    ctx = multiprocessing.get_context("spawn")   # a clean process: no threads of the test session inherited
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=sweep_process, args=(str(tmp_path), f"sweep-{k}", barrier, results)) for k in "ab"]
    for p in procs:
        p.start()
    outcomes = {name: (claimed, skipped) for name, claimed, skipped in (results.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    a, b = outcomes["sweep-a"][0], outcomes["sweep-b"][0]
    assert not set(a) & set(b), f"taken twice: {set(a) & set(b)}"
    assert set(a) | set(b) == eligible
    lost = [reason for _, skipped in outcomes.values() for _, reason in skipped]
    assert lost.count("claimed by another writer first") + sum(
        "not allowed in state 'implement'" in r for r in lost) == 16, lost
    assert sum("no repo and no task" in r for r in lost) == 2, "each sweep names the issue its guard refused"

    # The files agree: one claim event per eligible issue, written by the sweep that reported it.
    backlog = FileBacklog(tmp_path)
    owner = {i: "sweep-a" for i in a} | {i: "sweep-b" for i in b}
    for issue in backlog.scan()[0]:
        claims = [e for e in issue.history if e.trigger == "claim"]
        if issue.id in eligible:
            assert issue.state == "implement" and len(claims) == 1 and claims[0].actor == owner[issue.id]
        else:
            assert claims == []


def test_a_limit_claims_that_many_in_order(tmp_path):
    eligible = make_backlog(tmp_path)
    backlog = FileBacklog(tmp_path)
    claims, skips = claim_eligible(backlog, backlog.scan()[0], actor="sweep", limit=3)
    assert [c.issue.id for c in claims] == sorted(eligible)[:3] and skips == []
    assert [c.from_state for c in claims] == ["backlog"] * 3


def test_concurrent_event_comments_on_github_keep_exactly_one(tmp_path):
    with GitHubStub() as stub:
        stub.labels.add("ultrawork")
        number = stub.add_issue("Fix the thing", "Please.\n\n```ultrawork\nrepo: /srv/widgets\n```\n", ("ultrawork",))
        target = GitHubTarget(repository=stub.repository, token=stub.token, api_url=stub.url)
        writers = [GitHubBacklog(target) for _ in range(6)]
        issue = writers[0].get(str(number))
        barrier, won, lost = threading.Barrier(len(writers)), [], []

        def claim(backlog: GitHubBacklog, name: str) -> None:
            barrier.wait()
            try:
                backlog.apply(issue, "claim", actor=name)
                won.append(name)
            except ConcurrencyError:
                lost.append(name)

        threads = [threading.Thread(target=claim, args=(w, f"w{k}")) for k, w in enumerate(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(won) == 1 and len(lost) == 5, (won, lost)
        markers = [c for c in stub.comments[number] if c["body"].startswith("<!-- ultrawork:event")]
        assert len(markers) == 1, "the losers deleted their comments"
        final = writers[0].get(str(number))
        assert final.state == "implement" and final.version == 1 and final.history[0].actor == won[0]
        assert stub.issues[number]["labels"] == ["ultrawork", "ultrawork:implement"]
        calls = Counter(m for m, _ in stub.requests)
        assert calls["DELETE"] == calls["POST"] - 1, "every comment but the winner's was taken back"
