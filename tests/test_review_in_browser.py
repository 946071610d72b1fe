"""The review as a person gives it: the Prefect UI in a real browser (Debian's Chromium via Playwright).

A four-agent run pauses for review on the session's Prefect server; the test opens
the run in the UI, checks the summary lists every agent and shows the writer's diff,
submits an incomplete form (refused: the run stays paused), then sends the writer back
with a comment; the writer's second round gets the comment in its prompt, the run asks
again, and the second review approves it: the run completes with exactly the approved
agents' work on the integration branch.
Screenshots go to ``test-artifacts/browser/`` in the repository root.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from flowkit import FlowThread, git, make_target_repo

pytestmark = [pytest.mark.docker, pytest.mark.prefect, pytest.mark.browser]

ROLES = ["explore", "librarian", "oracle", "frontend"]
DECISIONS = {"explore": "approve", "librarian": "reject", "oracle": "reject", "frontend": "approve"}
COMMENT = ("oracle", "Findings noted; nothing to merge from a read-only review.")
REVISE = "Also say in the guide that an empty name raises."
# the writer keeps each prompt it gets; its second round adds the line the reviewer asked for
WRITER = ["sh", "-c", "cat /agent/prompt.md >> /plan/prompts.log && echo ===== >> /plan/prompts.log && "
                      "if grep -q 'Review, round 2' /agent/prompt.md; then echo 'An empty name raises.' >> docs/guide.md; "
                      "else exec python3 /agent/builtin_agent.py frontend; fi"]
TASK = """Fix the TODO in widgets/core.py and document the check.

```ultrawork-edit
[{"path": "widgets/core.py", "replace": ["    # TODO: validate name\\n", "    if not name:\\n        raise ValueError('name')\\n"]},
 {"path": "docs/guide.md", "append": "make_widget('') raises ValueError.\\n"}]
```
"""
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"


def flow_run_state(flow_run_id: str) -> str:
    from ultrawork.cli.runs import flow_run_state as state

    return state(flow_run_id)


def local_only(route) -> None:
    """The browser talks to this machine only (the UI would otherwise try analytics hosts)."""
    if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        route.abort()


def sign_in(page, ui: str) -> None:
    """The local server asks for its auth string: sign in on the UI's login page, as a person does
    (the string is in ``$ULTRAWORK_HOME/prefect/auth-string``); both UIs then keep it for this origin."""
    from playwright.sync_api import expect

    page.goto(f"{ui}/runs")
    password = page.get_by_placeholder("admin:pass")
    expect(password).to_be_visible()
    password.fill(os.environ["PREFECT_API_AUTH_STRING"])
    page.get_by_role("button", name="Login").click()
    expect(password).to_be_hidden()
    assert page.evaluate("localStorage.getItem('prefect-password')")


def resume(flow_run_id: str, run_input: dict) -> None:
    """Resume through the API. Forced sync: Playwright's sync API keeps an event loop in this thread."""
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(uuid.UUID(flow_run_id), run_input=run_input, _sync=True)


def decide(page, dialog, role: str, choice: str) -> None:
    """Pick approve/reject in a role's select; the select must then show the choice.

    The dialog re-renders while the run's data refreshes, which can move or replace
    the open option list under the pointer: a click that does not land is retried
    from a freshly opened list, as a person would.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    select = dialog.get_by_label(f"{role.capitalize()}: approve, reject, revise or later")
    option = page.get_by_role("option", name=choice, exact=True)
    for _ in range(5):
        if not option.is_visible():
            select.click()
        try:
            option.click(timeout=5_000)
            expect(select).to_contain_text(choice, timeout=3_000)
            return
        except (PlaywrightTimeout, AssertionError):
            continue
    expect(select).to_contain_text(choice)


def wait_for_round(run_id: str, round_no: int, timeout: float = 240) -> None:
    import json
    import time

    from ultrawork.sandbox.spec import ultrawork_home

    deadline = time.monotonic() + timeout
    while True:
        try:
            review = json.loads((ultrawork_home() / "runs" / run_id / "review.json").read_text())
        except (OSError, ValueError):
            review = {}
        if review.get("round") == round_no and review.get("state") == "requested":
            return
        assert time.monotonic() < deadline, f"the run never asked for review round {round_no}"
        time.sleep(0.3)


def test_review_in_the_prefect_ui(prefect_api, uw_home, tmp_path, docker_client, browser, capsys):
    from playwright.sync_api import expect

    ui = prefect_api.removesuffix("/api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}
    repo = make_target_repo(tmp_path / "widgets")
    base = git(repo, "rev-parse", "HEAD")
    run_id = f"ui-{uuid.uuid4().hex[:6]}"
    flow = FlowThread({"task": TASK, "repo": str(repo), "agents": ROLES, "run_id": run_id,
                       "agent_commands": {"frontend": WRITER}})
    flow.start()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(30_000)
    context.route("**/*", local_only)
    page = context.new_page()
    try:
        fr = flow.wait_for_review()
        sign_in(page, ui)

        # The older UI (where "View at" links in the logs lead): a blank form is refused in the page.
        page.goto(f"{ui}/runs/flow-run/{fr}")
        page.get_by_role("button", name="Resume").click()
        for role in ROLES:
            expect(page.get_by_text(f"{role.capitalize()}: approve, reject, revise or later")).to_be_visible()
        page.get_by_role("button", name="Submit").click()
        for role in ROLES:
            expect(page.get_by_text(f"'{role}' is a required property")).to_be_visible()
        shots["blank form refused (v1 UI)"] = ARTIFACTS / "review-blank-refused-v1.png"
        page.screenshot(path=shots["blank form refused (v1 UI)"])
        assert flow_run_state(fr) == "Paused"

        # A decision for an agent that did not run cannot come from the form; through the API it is refused.
        with pytest.raises(RuntimeError, match="wizard"):
            resume(fr, {**DECISIONS, "wizard": "approve"})
        assert flow_run_state(fr) == "Paused"

        # The UI the server's address leads to: the summary above the form names every agent.
        page.goto(f"{ui}/v2/runs/flow-run/{fr}")
        page.get_by_role("button", name="Open menu").first.click()
        page.get_by_role("menuitem", name="Resume").click()
        dialog = page.get_by_role("dialog")
        summary = dialog.locator("table").first
        expect(summary).to_be_visible()
        for role in ROLES:
            expect(summary.get_by_role("row").filter(has_text=role)).to_have_count(1)
            expect(dialog.get_by_text(f"{role.capitalize()}: comment")).to_be_visible()
        # the writer's change itself, above the decision, with the link to the whole diff
        expect(dialog.get_by_text("frontend: its diff")).to_be_visible()
        expect(dialog.get_by_text("+        raise ValueError('name')").first).to_be_visible()
        link = dialog.get_by_role("link", name="The whole diff as an artifact")
        expect(link).to_have_count(1)
        diff_url = link.get_attribute("href")

        # Frontend neither approved nor rejected: refused, the run stays paused.
        for role in ROLES[:-1]:
            decide(page, dialog, role, DECISIONS[role])
        dialog.get_by_role("button", name="Resume").click()
        expect(page.get_by_text("'frontend' is a required property")).to_be_visible()
        expect(dialog).to_be_visible()
        shots["incomplete form refused (v2 UI)"] = ARTIFACTS / "review-incomplete-refused.png"
        page.screenshot(path=shots["incomplete form refused (v2 UI)"])
        assert flow_run_state(fr) == "Paused"

        # The writer is sent back with a comment.
        decide(page, dialog, "frontend", "revise")
        dialog.get_by_label("Frontend: comment").fill(REVISE)
        page.set_viewport_size({"width": 1280, "height": 2300})           # the whole dialog in one picture
        shots["the first review: the writer sent back"] = ARTIFACTS / "review-form.png"
        dialog.screenshot(path=shots["the first review: the writer sent back"])
        dialog.get_by_role("button", name="Resume").click()
        expect(dialog).to_be_hidden()

        # The whole diff opens from its link.
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.goto(diff_url)
        expect(page.get_by_text("+        raise ValueError('name')").first).to_be_visible()

        # The second round: the run asks again; this time every decision, the writer approved.
        wait_for_round(run_id, 2)
        fr = flow.wait_for_review()
        page.goto(f"{ui}/v2/runs/flow-run/{fr}")
        page.get_by_role("button", name="Open menu").first.click()
        page.get_by_role("menuitem", name="Resume").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("+An empty name raises.").first).to_be_visible()   # its new work, in its diff
        for role in ROLES:
            decide(page, dialog, role, DECISIONS[role])
        dialog.get_by_label(f"{COMMENT[0].capitalize()}: comment").fill(COMMENT[1])
        page.set_viewport_size({"width": 1280, "height": 2300})
        shots["the second review"] = ARTIFACTS / "review-form-round-2.png"
        dialog.screenshot(path=shots["the second review"])
        dialog.get_by_role("button", name="Resume").click()
        expect(dialog).to_be_hidden()
        result = flow.wait()

        # The completed run in the UI: four agent subflows in its graph, its artifacts.
        page.set_viewport_size({"width": 1280, "height": 1000})
        with page.expect_response(lambda r: "/graph-v2" in r.url and r.ok):   # the graph's data ...
            page.goto(f"{ui}/v2/runs/flow-run/{fr}")
        expect(page.locator("canvas").first).to_be_visible()                   # ... and its canvas
        expect(page.get_by_text("Completed").first).to_be_visible()
        page.get_by_role("tab", name="Subflow Runs").click()
        for role in ROLES:
            expect(page.get_by_text(f"{run_id}-{role}", exact=True).first).to_be_visible()
        page.get_by_role("tab", name="Artifacts").click()
        for key in [f"results-{run_id}", f"progress-{run_id}", f"diff-{run_id}-frontend",
                    *(f"plan-{run_id}-{r}" for r in ROLES)]:
            expect(page.get_by_text(key, exact=True).first).to_be_visible()     # results: once per round
        shots["the completed run"] = ARTIFACTS / "run-completed.png"
        page.screenshot(path=shots["the completed run"], full_page=True)
    finally:
        context.close()
        if flow.is_alive():                                  # a failed step must not leave the run paused
            try:
                resume(flow.wait_for_review(timeout=60), {role: "reject" for role in ROLES})
            except Exception:  # noqa: BLE001 - the run may not have reached the review
                pass
            flow.join(120)
        with capsys.disabled():
            for what, path in shots.items():
                print(f"\n[screenshot] {what}: {path}", end="")
            print()

    assert flow_run_state(fr) == "Completed"
    assert result.outcome == "integrated", result.message
    assert [(v.role, v.approved) for v in result.verdicts] == [(r, DECISIONS[r] == "approve") for r in ROLES]
    assert {v.role: v.comment for v in result.verdicts}[COMMENT[0]] == COMMENT[1]
    integration = f"ultrawork/{run_id}/integration"
    assert result.integration_branch == integration
    # Exactly the approved agents' work: frontend's commits (explore is read-only and made none).
    frontend = git(repo, "rev-list", f"{base}..ultrawork/{run_id}/frontend").split()
    assert frontend, "the approved writer made commits"
    assert git(repo, "rev-list", "--no-merges", f"{base}..{integration}").split() == frontend
    assert git(repo, "diff", "--name-only", f"ultrawork/{run_id}/frontend", integration) == ""
    # the writer's second round: its prompt carried the reviewer's comment, its work followed it
    prompts = (uw_home / "runs" / run_id / "plans" / "frontend" / "prompts.log").read_text().split("=====\n")
    assert REVISE not in prompts[0] and REVISE in prompts[1]
    assert "An empty name raises." in git(repo, "show", f"{integration}:docs/guide.md")
    assert {o.role: o.round for o in result.agents} == {"explore": 1, "librarian": 1, "oracle": 1, "frontend": 2}
    for rejected in ("librarian", "oracle"):
        assert git(repo, "rev-list", f"{base}..ultrawork/{run_id}/{rejected}") == ""
