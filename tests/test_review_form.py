"""The review form as data (what the UI renders from it) and the UI the local server serves.

``ultrawork.flows.review`` is imported inside the tests: importing prefect while tests are collected
would freeze its settings before the session's server exports ``PREFECT_API_URL``.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from ultrawork.agents.outcome import AgentOutcome


def outcome(role: str, **kw) -> AgentOutcome:
    return AgentOutcome(role=role, status=kw.pop("status", "succeeded"), branch=f"ultrawork/r1/{role}", **kw)


OUTCOMES = [
    outcome("explore", duration=2.34, plan_summary="## Findings\n\nRepository map: 4 files."),
    outcome("librarian", status="failed", retries=2, duration=75, errors=["AgentCommandError: exit 1 <stderr>"],
            plan_summary="## Findings\n\n```text\n" + "x\n" * 2000),
    outcome("oracle", plan_summary=""),
    outcome("frontend", files_changed=2, insertions=3, deletions=1, duration=2.7,
            plan_summary="## Findings\n\n- edited `widgets/core.py`"),
]


def test_the_form_has_one_required_choice_and_one_optional_comment_per_agent_with_titles_for_people():
    from ultrawork.flows.review import review_form

    form = review_form("r1", "Fix the TODO | <b>now</b>\nsecond line", OUTCOMES)
    schema = form.model_json_schema()
    assert schema["required"] == ["explore", "librarian", "oracle", "frontend"]
    props = schema["properties"]
    assert list(props) == ["explore", "explore_comment", "librarian", "librarian_comment",
                           "oracle", "oracle_comment", "frontend", "frontend_comment"]
    assert props["frontend"]["enum"] == ["approve", "reject"]
    assert props["frontend"]["title"] == "Frontend: approve or reject"
    assert props["frontend"]["description"] == ("Succeeded: 2 files changed (+3 / -1 lines) in 2.7s, no retries; "
                                                "branch ultrawork/r1/frontend.")
    assert props["librarian"]["description"].startswith("Failed: 0 files changed (+0 / -0 lines) in 1m 15s, 2 retries")
    assert props["oracle_comment"]["title"] == "Oracle: comment"     # the UI adds "(Optional)" itself
    assert props["oracle_comment"]["default"] == ""
    assert schema["additionalProperties"] is False                  # a decision for an agent that did not run


def test_the_description_tables_every_agent_and_collapses_long_plan_summaries():
    from ultrawork.flows.review import review_form

    text = review_form("r1", "Fix the TODO | <b>now</b>\nsecond line", OUTCOMES)._description
    assert "**Task:** Fix the TODO \\| &lt;b&gt;now&lt;/b&gt;" in text and "second line" not in text
    assert "| Agent | Outcome | Files changed | Lines +/- | Duration | Retries |" in text
    for row in ("| **explore** | succeeded | 0 | +0 / -0 | 2.3s | 0 |",
                "| **librarian** | **failed** | 0 | +0 / -0 | 1m 15s | 2 |",
                "| **frontend** | succeeded | 2 | +3 / -1 | 2.7s | 0 |"):
        assert row in text
    assert "**explore** (succeeded)\n\n```text\n## Findings\n\nRepository map: 4 files.\n```" in text   # short: open
    assert "_Plan.md has no summary._" in text
    librarian = text[text.index("<details><summary><b>librarian</b> (failed)"):]
    librarian = librarian[:librarian.index("</details>")]
    assert "shortened; the whole Plan.md is an artifact" in librarian
    assert "\n````text\n## Findings\n\n```text\n" in librarian and "more bytes]\n````\n" in librarian, \
        "the agent's own fence stays inside the host's, which closes"
    assert "- AgentCommandError: exit 1 &lt;stderr&gt;" in librarian


def test_a_decision_maps_to_verdicts_and_the_cli_input_decides_every_agent_once():
    from ultrawork.flows.review import review_form, review_input, verdicts

    roles = [o.role for o in OUTCOMES]
    form = review_form("r1", "task", OUTCOMES)
    data = review_input(roles, approve=["explore", "frontend"], reject=["librarian", "oracle"], comment="ok")
    decided = verdicts(form(**data), roles)
    assert [(v.role, v.approved, v.comment) for v in decided] == [
        ("explore", True, "ok"), ("librarian", False, "ok"), ("oracle", False, "ok"), ("frontend", True, "ok")]
    with pytest.raises(ValueError, match="wizard did not run"):
        review_input(roles, approve=["wizard"], reject=roles)
    with pytest.raises(ValueError, match="frontend neither approved nor rejected"):
        review_input(roles, approve=["explore"], reject=["librarian", "oracle"])


def test_the_local_server_serves_the_ui_and_points_it_at_its_own_api(prefect_api):
    ui = prefect_api.removesuffix("/api")
    with urllib.request.urlopen(f"{ui}/ui-settings", timeout=10) as resp:
        settings = json.load(resp)
    assert settings["api_url"] == prefect_api, "the UI would call Prefect's default port instead"
    assert set(settings["available_uis"]) == {"v1", "v2"}
    for page in ("/", "/v2/"):
        request = urllib.request.Request(f"{ui}{page}", headers={"Accept": "text/html"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200 and "<html" in resp.read().decode().lower()


def test_each_writers_diff_is_above_the_form_and_links_the_whole_diff():
    from ultrawork.flows.review import review_form

    changes = {"frontend": "```diff\n-    # TODO: validate name\n+    if not name:\n```\n\n[The whole diff as an artifact](http://ui/a/1)\n"}
    text = review_form("r1", "task", OUTCOMES, changes=changes)._description
    assert text.index("#### What each agent changed") < text.index("#### What each agent reported")
    assert "<summary><b>frontend</b>: its diff</summary>" in text and "+    if not name:" in text
    assert "[The whole diff as an artifact](http://ui/a/1)" in text
    assert "<b>explore</b>: its diff" not in text          # read-only: its findings, not a diff


def test_with_rounds_left_a_finished_agent_can_be_sent_back_and_a_failed_one_retried():
    from ultrawork.flows.review import review_form, review_input, verdicts

    form = review_form("r1", "task", OUTCOMES, rounds_left=True)
    props = form.model_json_schema()["properties"]
    assert props["frontend"]["enum"] == ["approve", "reject", "revise", "later"]
    assert props["frontend"]["title"] == "Frontend: approve, reject, revise or later"
    assert props["librarian"]["enum"] == ["retry", "reject", "approve", "abort", "later"]
    assert "Failed with AgentCommandError" in props["librarian"]["description"]
    last = review_form("r1", "task", OUTCOMES, rounds_left=False).model_json_schema()["properties"]
    assert "revise" not in last["frontend"]["enum"] and "retry" not in last["librarian"]["enum"]
    assert "later" not in last["frontend"]["enum"] and "later" not in last["librarian"]["enum"]

    data = review_input([o.role for o in OUTCOMES], ["explore", "oracle"], [],
                        again={"frontend": ("revise", "add a test"), "librarian": ("retry", "")})
    decided = verdicts(form.model_validate(data), [o.role for o in OUTCOMES])
    assert [(v.role, v.choice, v.approved, v.comment) for v in decided] == [
        ("explore", "approve", True, ""), ("librarian", "retry", False, ""), ("oracle", "approve", True, ""),
        ("frontend", "revise", False, "add a test")]
    # one agent sent back, nobody else decided: the others are left for the next round's review
    alone = review_input([o.role for o in OUTCOMES], [], [], again={"frontend": ("revise", "add a test")})
    assert alone == {"explore": "later", "librarian": "later", "oracle": "later", "frontend": "revise",
                     "frontend_comment": "add a test"}
    form.model_validate(alone)
    with pytest.raises(ValueError, match="neither approved nor rejected"):
        review_input([o.role for o in OUTCOMES], ["explore"], [])
    aborted = review_input([o.role for o in OUTCOMES], [], [], abort=True, failed=["librarian"])
    assert aborted == {"explore": "reject", "librarian": "abort", "oracle": "reject", "frontend": "reject"}
    form.model_validate(aborted)
    with pytest.raises(ValueError, match="none failed"):
        review_input(["explore"], [], [], abort=True, failed=[])


def test_a_hostile_report_renders_as_text_and_hides_no_report_after_it():
    """Rendered as the UIs do (CommonMark with HTML and tables): the host's structure only, every report."""
    from hostile_strings import everything
    from test_untrusted import render

    from ultrawork.flows.review import review_form

    attack = everything("http://127.0.0.1:9") + "\n<!--"
    team = [outcome("explore", plan_summary=attack),
            outcome("librarian", status="failed", errors=[f"AgentCommandError: {attack}"] * 3, plan_summary=attack),
            outcome("oracle", plan_summary="Oracle's report: the parser is fine."),
            outcome("frontend", status="failed", errors=["AgentExecutionError: frontend's own error"],
                    plan_summary="Frontend's report: edited core.py", egress=attack)]
    form = review_form("r1", f"Fix it {attack}", team)
    page = render(form._description)
    assert not page.comments
    assert set(page.tags) <= {"h3", "h4", "p", "strong", "em", "code", "pre", "table", "thead", "tbody", "tr", "th",
                              "td", "details", "summary", "b", "ul", "li"}, sorted(set(page.tags))
    assert page.tags.count("h3") == 1 and page.tags.count("h4") == 1 and page.tags.count("table") == 1
    shown = "".join(page.text)
    for report in ("Oracle's report: the parser is fine.", "Frontend's report: edited core.py",
                   "AgentExecutionError: frontend's own error"):
        assert report in shown, report
    for role in ("explore", "librarian", "oracle", "frontend"):
        assert page.text.count(role) >= 2 or shown.count(role) >= 2, role          # its row and its report
    for field in form.model_json_schema()["properties"].values():
        described = render(field.get("description", ""))
        assert set(described.tags) <= {"p"} and not described.comments, field
