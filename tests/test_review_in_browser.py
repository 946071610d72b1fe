"""The review as a person gives it: the Prefect UI in a real browser (Debian's Chromium via Playwright).

A four-agent run pauses for review on the session's Prefect server; the test opens
the run in the UI, checks the summary lists every agent, submits an incomplete form
(refused: the run stays paused), then a complete one, and checks that the run
completes with exactly the approved agents' work on the integration branch.
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

    select = dialog.get_by_label(f"{role.capitalize()}: approve or reject")
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


def test_review_in_the_prefect_ui(prefect_api, uw_home, tmp_path, docker_client, browser, capsys):
    from playwright.sync_api import expect

    ui = prefect_api.removesuffix("/api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}
    repo = make_target_repo(tmp_path / "widgets")
    base = git(repo, "rev-parse", "HEAD")
    run_id = f"ui-{uuid.uuid4().hex[:6]}"
    flow = FlowThread({"task": TASK, "repo": str(repo), "agents": ROLES, "run_id": run_id})
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
            expect(page.get_by_text(f"{role.capitalize()}: approve or reject")).to_be_visible()
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

        # Frontend neither approved nor rejected: refused, the run stays paused.
        for role in ROLES[:-1]:
            decide(page, dialog, role, DECISIONS[role])
        dialog.get_by_role("button", name="Resume").click()
        expect(page.get_by_text("'frontend' is a required property")).to_be_visible()
        expect(dialog).to_be_visible()
        shots["incomplete form refused (v2 UI)"] = ARTIFACTS / "review-incomplete-refused.png"
        page.screenshot(path=shots["incomplete form refused (v2 UI)"])
        assert flow_run_state(fr) == "Paused"

        # The complete decision, with one comment.
        decide(page, dialog, "frontend", DECISIONS["frontend"])
        dialog.get_by_label(f"{COMMENT[0].capitalize()}: comment").fill(COMMENT[1])
        page.set_viewport_size({"width": 1280, "height": 2300})           # the whole dialog in one picture
        shots["the filled form"] = ARTIFACTS / "review-form.png"
        dialog.screenshot(path=shots["the filled form"])
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
        for key in [f"results-{run_id}", f"progress-{run_id}", *(f"plan-{run_id}-{r}" for r in ROLES)]:
            expect(page.get_by_text(key, exact=True)).to_be_visible()
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
    for rejected in ("librarian", "oracle"):
        assert git(repo, "rev-list", f"{base}..ultrawork/{run_id}/{rejected}") == ""
