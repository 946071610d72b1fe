"""Hostile agents in real sandboxes: what a prompt-injected agent tries, and what the host does.

Every attack leaves a payload that, if it ran on the host, would create a marker file in a
folder only the host has (the test's tmp_path, never mounted). Each test asserts no marker
exists, that the siblings' work reached the review, and that the outcome names the refusal.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

import pytest

from flowkit import git, make_target_repo, run_sisyphus

pytestmark = [pytest.mark.docker, pytest.mark.prefect]


def takeover_script(markers: Path) -> str:
    """Replace the work tree's .git with a git directory the agent owns, name payloads in its
    config and attributes, and leave a detached process that keeps rewriting that config
    (the host used to run such a filter as root while committing)."""
    m = shlex.quote(str(markers))
    return f"""
set -e
unset GIT_DIR GIT_WORK_TREE
cd /workspace
mv .git .git.orig
git init -q .
cat > /tmp/evil-config <<EOF
[core]
	fsmonitor = touch {m}/FSMONITOR_RAN
	hooksPath = /workspace/.hooks
[filter "evil"]
	clean = touch {m}/FILTER_RAN; cat
	smudge = touch {m}/FILTER_RAN; cat
	required = true
[diff "evil"]
	textconv = touch {m}/TEXTCONV_RAN; cat
[gpg]
	program = touch {m}/GPG_RAN
[commit]
	gpgSign = true
EOF
cat /tmp/evil-config >> .git/config
mkdir -p .hooks .git/hooks
for h in pre-commit post-commit post-checkout reference-transaction pre-push; do
  printf '#!/bin/sh\\ntouch {m}/HOOK_RAN\\n' > .hooks/$h; cp .hooks/$h .git/hooks/$h; chmod +x .hooks/$h .git/hooks/$h
done
echo '* filter=evil diff=evil' > .gitattributes
echo '# changed by the agent' >> widgets/core.py
setsid sh -c 'while :; do cat /tmp/evil-config >> /workspace/.git/config 2>/dev/null;
  touch /workspace/still-running-$$; sleep 0.2; done' </dev/null >/dev/null 2>&1 &
sleep 1
"""


def test_git_takeover_with_a_detached_process_runs_nothing_on_the_host(prefect_api, uw_home, tmp_path,
                                                                        docker_client):
    from ultrawork.tasks.sandboxes import engine

    markers = tmp_path / "host-only-markers"
    markers.mkdir()
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"hx-{uuid.uuid4().hex[:6]}"
    plan_dir_script = "rm -f /plan/Plan.md && mkdir -p /plan/Plan.md/x && echo hi > /plan/Plan.md/x/y"
    result = run_sisyphus({"task": "Fix the TODO", "repo": str(repo), "agents": ["explore", "oracle", "frontend"],
                           "run_id": run_id, "review_timeout": 3,
                           "agent_commands": {"frontend": ["sh", "-c", takeover_script(markers)],
                                              "oracle": ["sh", "-c", plan_dir_script]}})

    assert sorted(p.name for p in markers.iterdir()) == [], "an agent payload ran on the host"
    assert result.outcome == "review-timed-out"               # the run reached its review
    by_role = {o.role: o for o in result.agents}
    assert set(by_role) == {"explore", "oracle", "frontend"}
    assert by_role["explore"].status == "succeeded"           # a sibling's work is not lost
    front = by_role["frontend"]
    assert front.status == "failed"
    assert any(".git was replaced" in e for e in front.errors), front.errors
    # the work is committed as written, without the agent's git metadata
    branch = f"ultrawork/{run_id}/frontend"
    assert "# changed by the agent" in git(repo, "show", f"{branch}:widgets/core.py")
    names = git(repo, "ls-tree", "-r", "--name-only", branch).splitlines()
    assert not any(n == ".git" or n.startswith(".git/") for n in names), names
    # the detached process ran (its file is in the work), and died with the sandbox
    assert any(n.startswith("still-running-") for n in names), "the attack did not happen"
    assert engine().list(run_id=run_id) == []
    assert "host reset agent-written git metadata" in Path(front.plan_path).read_text()
    # Plan.md turned into a directory: the oracle's failure is its outcome, and Plan.md is the host's again
    oracle = by_role["oracle"]
    plan = uw_home / "runs" / run_id / "plans" / "oracle" / "Plan.md"
    assert plan.is_file() and "recreated by the host" in plan.read_text()
    assert oracle.status in ("failed", "succeeded") and oracle.plan_path == str(plan)


def test_a_huge_file_is_not_committed_and_the_outcome_names_it(prefect_api, uw_home, tmp_path, docker_client):
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"hd-{uuid.uuid4().hex[:6]}"
    script = ("python3 -c \"open('/workspace/big.bin','wb').truncate(1 << 30)\" && "
              "echo '# kept' >> /workspace/widgets/core.py")
    result = run_sisyphus({"task": "Fix the TODO", "repo": str(repo), "agents": ["explore", "frontend"],
                           "run_id": run_id, "review_timeout": 3,
                           "agent_commands": {"frontend": ["sh", "-c", script]}})
    by_role = {o.role: o for o in result.agents}
    assert by_role["explore"].status == "succeeded"
    front = by_role["frontend"]
    assert front.status == "failed"
    assert any("big.bin" in e and "per-file cap" in e for e in front.errors), front.errors
    branch = f"ultrawork/{run_id}/frontend"
    assert "big.bin" not in git(repo, "ls-tree", "-r", "--name-only", branch)
    assert "# kept" in git(repo, "show", f"{branch}:widgets/core.py")       # the rest is not lost
    assert "not committed: big.bin" in Path(front.plan_path).read_text()


@pytest.mark.parametrize("point", ["git:create-workspace", "git:commit"])
def test_a_git_error_past_its_retries_is_that_agents_outcome(point, prefect_api, uw_home, tmp_path, docker_client,
                                                             monkeypatch):
    """Setup or commit failing more often than its retries: the agent fails with the error named,
    its sibling's work reaches the review, no sandbox is left."""
    import json

    from ultrawork.tasks.sandboxes import engine

    monkeypatch.setenv("ULTRAWORK_FAULTS", json.dumps([{"at": point, "role": "frontend", "times": 20,
                                                         "action": "git_error"}]))
    repo = make_target_repo(tmp_path / "widgets")
    run_id = f"hg-{uuid.uuid4().hex[:6]}"
    result = run_sisyphus({"task": "Fix the TODO", "repo": str(repo), "agents": ["explore", "frontend"],
                           "run_id": run_id, "review_timeout": 2})
    assert result.outcome == "review-timed-out"
    by_role = {o.role: o for o in result.agents}
    assert by_role["explore"].status == "succeeded"
    assert by_role["frontend"].status == "failed"
    assert any("GitError" in e for e in by_role["frontend"].errors), by_role["frontend"].errors
    assert engine().list(run_id=run_id) == []
