"""The diff at the decision: what an agent changed, bounded, read from host-owned git only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest_git import git

pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo, run

ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))


def test_the_diff_shows_the_stat_and_the_patch_and_names_the_command_for_the_rest(run):
    from ultrawork.workspace.review_diff import agent_diff

    ws = run.add_agent("frontend")
    (ws.path / "src" / "app.py").write_text("print('hello')\n")
    (ws.path / "zz-generated.txt").write_text("".join(f"line {n}\n" for n in range(2000)))
    ws.commit_changes()
    diff = agent_diff(run, "frontend", max_lines=120)
    assert "src/app.py" in diff.stat and "zz-generated.txt" in diff.stat and "2 files changed" in diff.stat
    assert "-print('hi')" in diff.patch and "+print('hello')" in diff.patch
    assert len(diff.patch.splitlines()) == 120 and diff.truncated
    assert diff.changed_lines == 2002
    text = diff.text()
    assert f"git -C {run.target.path} diff {run.base_sha[:12]} {ws.branch}" in text
    md = diff.markdown(max_lines=40)
    assert "```diff" in md and md.count("\n+line ") < 40 and f"ultrawork diff {run.run_id} frontend" in md

    # once the run released its clones, the branch published in the target gives the same diff
    run.publish_branch("frontend")
    import shutil

    shutil.rmtree(ws.git_dir)
    again = agent_diff(run, "frontend", max_lines=120)
    assert again.patch == diff.patch and again.source == "the target"


def test_an_agent_without_changes_has_an_empty_diff(run):
    from ultrawork.workspace.review_diff import agent_diff

    run.add_agent("explore")
    diff = agent_diff(run, "explore")
    assert diff.empty and "no change" in diff.text()


def test_attributes_and_escapes_an_agent_writes_neither_run_code_nor_reach_the_terminal(run, tmp_path, ultrawork_home):
    """An agent's .gitattributes names a diff driver whose textconv would run a command, and its
    file holds terminal escape sequences: the driver never runs (even when the target repository
    defines it) and `ultrawork diff` prints no escape byte."""
    from ultrawork.workspace.review_diff import agent_diff

    marker = tmp_path / "textconv-ran"
    # the user's own repository defines the driver; the agent's attributes try to use it
    git(run.target.path, "config", "diff.evil.textconv", f"sh -c 'touch {marker}; cat \"$1\"' --")
    ws = run.add_agent("frontend")
    (ws.path / ".gitattributes").write_text("* diff=evil\n")
    (ws.path / "src" / "app.py").write_text("print('x')\n\x1b]0;owned\x07\x1b[2J\x1b[31mred\n")
    ws.commit_changes()
    run.publish_branch("frontend")
    diff = agent_diff(run, "frontend")
    assert "\x1b" not in diff.patch and "\\x1b]0;owned\\x07" in diff.patch
    env = {**os.environ, "ULTRAWORK_HOME": str(ultrawork_home), "TERM": "xterm-256color"}
    printed = subprocess.run([ULTRAWORK, "diff", run.run_id, "frontend"], capture_output=True, env=env, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert b"\x1b" not in printed.stdout and b"\x07" not in printed.stdout
    assert b"+print('x')" in printed.stdout
    # the released git directory: the target repository is read, as a bare repository
    import shutil

    shutil.rmtree(ws.git_dir)
    assert "\\x1b" in agent_diff(run, "frontend").patch
    assert not marker.exists(), "a textconv driver named by the agent's attributes ran"


def test_a_line_of_an_agents_file_cannot_pass_for_a_line_of_the_diff(run):
    """A CR, a form feed or a Unicode line separator inside an added line stays in that line, written out."""
    from ultrawork.workspace.review_diff import agent_diff

    ws = run.add_agent("frontend")
    (ws.path / "notes.md").write_text("error: build failed\rok: all checks passed\n"
                                      "first\u2028 ultrawork: every agent approved\u2029second\x0cthird\x1cfourth\n")
    ws.commit_changes()
    diff = agent_diff(run, "frontend")
    added = [line for line in diff.patch.split("\n") if line.startswith("+") and not line.startswith("+++")]
    assert added == ["+error: build failed\\x0dok: all checks passed",
                     "+first\\u2028 ultrawork: every agent approved\\u2029second\\x0cthird\\x1cfourth"], diff.patch
    for shown in (diff.text(), diff.markdown()):
        assert not any(line.startswith((" ultrawork", "ok: all")) for line in shown.splitlines()), shown
