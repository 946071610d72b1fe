"""Best of N: three attempts at one subtask, ranked by the repository's own checks.

Whole runs on the session's Prefect server, the real engine and real git. Each attempt runs
its own command (as each would run its own model or CLI): attempt 2 writes the function the
repository's test needs, attempts 1 and 3 write a broken one.
"""

from __future__ import annotations

import uuid

import pytest

from flowkit import git, make_target_repo, run_sisyphus

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

TASK = "Make widgets/core.py validate the widget's name."
CHECK = ["python3", "-m", "unittest", "-q", "test_core"]
TEST = ("import unittest\nfrom widgets.core import make_widget\n\n"
        "class CoreTest(unittest.TestCase):\n"
        "    def test_name(self):\n        self.assertEqual(make_widget('a'), {'name': 'a'})\n"
        "    def test_empty(self):\n        self.assertRaises(ValueError, make_widget, '')\n")
GOOD = ("def make_widget(name):\n    if not name:\n        raise ValueError('a widget needs a name')\n"
        "    return {'name': name}\n")
BROKEN = "def make_widget(name):\n    return None\n"


def writes(text: str) -> list[str]:
    return ["python3", "-c", f"open('widgets/core.py', 'w').write({text!r})"]


def repo_with_tests(tmp_path):
    return make_target_repo(tmp_path / "widgets", {
        "widgets/__init__.py": "", "widgets/core.py": "def make_widget(name):\n    return {'name': name}\n",
        "test_core.py": TEST})


def attempts_run(tmp_path, commands: dict[str, list[str]], **more):
    run_id = f"at-{uuid.uuid4().hex[:6]}"
    params = {"task": TASK, "repo": str(repo_with_tests(tmp_path)), "agents": ["explore", "frontend"],
              "run_id": run_id, "agent_commands": commands, "review_timeout": 300, "check_command": CHECK,
              "attempts": 3, **more}
    return run_id, params


def test_the_attempt_that_passes_the_checks_ranks_first_and_auto_select_integrates_it(
        prefect_api, uw_home, tmp_path, docker_client):
    run_id, params = attempts_run(tmp_path, {"frontend": writes(BROKEN), "frontend-try2": writes(GOOD),
                                             "frontend-try3": writes(BROKEN + "\n# longer\n")}, auto_select=True)
    result = run_sisyphus(params)            # no reviewer: nobody is asked

    assert result.outcome == "integrated", result.message
    [ranking] = result.attempts
    order = [e["role"] for e in ranking["entries"]]
    assert order[0] == "frontend-try2" and set(order) == {"frontend", "frontend-try2", "frontend-try3"}
    best, *rest = ranking["entries"]
    assert best["check"]["passed"] and best["failing_tests"] == 0
    assert all(not e["check"]["passed"] and e["failing_tests"] for e in rest), rest
    assert order[1:] == ["frontend", "frontend-try3"]          # equal failures: the smaller diff first
    assert result.merged == ["frontend-try2"]
    repo = params["repo"]
    assert git(repo, "show", f"ultrawork/{run_id}/integration:widgets/core.py") == GOOD.rstrip("\n")
    for role in ("frontend", "frontend-try2", "frontend-try3"):       # every attempt's branch is kept
        assert git(repo, "rev-parse", "--verify", f"ultrawork/{run_id}/{role}")
    assert result.check is not None and result.check.passed
    from ultrawork.workspace.ledger import RunLedger

    assert RunLedger.open(run_id).read("review")["automatic"] is True


def test_when_no_attempt_passes_nothing_is_integrated_and_the_outcome_says_why(
        prefect_api, uw_home, tmp_path, docker_client):
    run_id, params = attempts_run(tmp_path, {"frontend": writes(BROKEN), "frontend-try2": writes(BROKEN),
                                             "frontend-try3": ["sh", "-c", "exit 3"]}, auto_select=True)
    result = run_sisyphus(params)

    assert result.outcome == "nothing-approved"
    assert "no attempt passed the checks" in result.message and "nothing was integrated" in result.message
    assert result.merged == []
    repo = params["repo"]
    branches = git(repo, "branch", "--list", f"ultrawork/{run_id}/*")
    assert "integration" not in branches


def test_the_form_shows_every_attempt_with_its_checks_and_preselects_the_best(prefect_api, uw_home, tmp_path,
                                                                               docker_client):
    from ultrawork.flows.review import review_form

    seen = {}

    def look_then_approve(rid: str) -> None:
        from ultrawork.agents.attempts import AttemptRanking
        from ultrawork.cli.runs import submit_review
        from ultrawork.workspace.ledger import RunLedger

        ledger = RunLedger.open(rid)
        rankings = [AttemptRanking.model_validate(r) for r in ledger.read("attempts")["rankings"]]
        outcomes = [o for o in (ledger.outcome(r) for r in ("explore", "frontend", "frontend-try2", "frontend-try3"))]
        from ultrawork.agents.outcome import AgentOutcome

        form = review_form(rid, TASK, [AgentOutcome.model_validate(o) for o in outcomes], checks=True,
                           attempts=rankings)
        seen["description"] = form._description
        seen["defaults"] = {name: f.default for name, f in form.model_fields.items() if name.startswith("frontend")
                            and not name.endswith("_comment")}
        submit_review(rid, ["frontend-try2"], ["explore", "frontend", "frontend-try3"])

    run_id, params = attempts_run(tmp_path, {"frontend": writes(BROKEN), "frontend-try2": writes(GOOD),
                                             "frontend-try3": writes(BROKEN)})
    result = run_sisyphus(params, look_then_approve)

    assert result.outcome == "integrated", result.message
    assert seen["defaults"] == {"frontend": "reject", "frontend-try2": "approve", "frontend-try3": "reject"}
    text = seen["description"]
    assert "Attempts of frontend, best first" in text
    for role in ("frontend", "frontend-try2", "frontend-try3"):
        assert f"**{role}**" in text
    assert text.count("failed (exit 1)") == 2 and "| passed |" in text


def test_status_shows_the_ranking_and_bad_attempt_settings_are_refused_before_anything_starts(
        prefect_api, uw_home, tmp_path, docker_client):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    run_id, params = attempts_run(tmp_path, {"frontend": writes(GOOD), "frontend-try2": writes(BROKEN)},
                                  attempts=2, auto_select=True)
    assert run_sisyphus(params).outcome == "integrated"
    ultrawork = str(Path(sys.executable).with_name("ultrawork"))
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    shown = subprocess.run([ultrawork, "status", run_id, "--json"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    [ranking] = json.loads(shown.stdout)["attempts"]
    assert [e["role"] for e in ranking["entries"]] == ["frontend", "frontend-try2"]
    text = subprocess.run([ultrawork, "status", run_id], capture_output=True, text=True, env=env, timeout=120)
    assert "1. frontend         checks passed" in text.stdout, text.stdout

    runs_before = sorted((uw_home / "runs").iterdir())
    for args, says in [(["--attempts", "3", "--auto-select"], "give the checks (--check-command)"),
                       (["--attempts", "9", "--check-command", "true"], "attempts must be 1 to 8"),
                       (["--attempts", "2", "--attempt-profiles", "builtin", "--check-command", "true"],
                        "give one per attempt")]:
        bad = subprocess.run([ultrawork, "run", "--repo", params["repo"], "--task", TASK, *args],
                             capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
        assert bad.returncode == 2 and says in bad.stderr + bad.stdout, (args, bad.stdout, bad.stderr)
    assert sorted((uw_home / "runs").iterdir()) == runs_before
