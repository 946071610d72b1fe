"""New code cannot slip agent text into a sink around ``ultrawork.untrusted``: the source is read (AST).

- every table artifact is built from ``table_rows(...)`` (the older UI renders its cells as markdown);
- every markdown artifact's text comes from a renderer that escapes or fences what it holds;
- every Rich console the CLI makes has no ``:emoji:`` codes (``rich_markup`` cannot escape them);
- every process that runs a flow or prints its logs installs the escaping log filter.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("ultrawork", "flows", "tasks", "blocks") for p in (ROOT / folder).rglob("*.py")]
# the functions whose result may be a markdown artifact's text: each renders agent text through untrusted
MARKDOWN_RENDERERS = {"plan_markdown", "bounded", "markdown"}


def calls(name: str):
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name:
                yield path.relative_to(ROOT), node


def keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def called(expr: ast.expr | None) -> str | None:
    if isinstance(expr, ast.Call):
        return getattr(expr.func, "id", getattr(expr.func, "attr", None))
    return None


def test_every_table_artifact_is_built_from_escaped_rows():
    found = list(calls("create_table_artifact"))
    assert found, "no table artifact found: the scan is broken"
    wrong = [f"{path}:{node.lineno}" for path, node in found if called(keyword(node, "table")) != "table_rows"]
    assert not wrong, f"table artifacts whose cells are not escaped with table_rows(): {wrong}"


def test_every_markdown_artifact_is_rendered_by_an_escaping_renderer():
    found = list(calls("create_markdown_artifact"))
    assert found, "no markdown artifact found: the scan is broken"
    wrong = [f"{path}:{node.lineno}" for path, node in found
             if called(keyword(node, "markdown")) not in MARKDOWN_RENDERERS]
    assert not wrong, f"markdown artifacts whose text is not rendered through ultrawork.untrusted: {wrong}"


def test_every_cli_console_prints_no_emoji_codes():
    found = [(path, node) for path, node in calls("Console") if str(path).startswith("ultrawork/cli")]
    assert found
    wrong = [f"{path}:{node.lineno}" for path, node in found
             if not (isinstance(keyword(node, "emoji"), ast.Constant) and keyword(node, "emoji").value is False)]
    assert not wrong, f"CLI consoles that replace :emoji: codes in agent text: {wrong}"


def test_every_process_that_runs_a_flow_installs_the_log_escaping():
    installing = {str(path) for path, _ in calls("install_log_escaping")}
    for where in ("flows/sisyphus.py", "ultrawork/cli/main.py", "ultrawork/cli/launch.py"):
        assert where in installing, f"{where} does not install the log escaping"


def test_after_installing_every_handler_prefect_configured_escapes_records():
    import logging

    from prefect.logging.configuration import setup_logging

    from ultrawork.untrusted import EscapeLogRecords, install_log_escaping

    setup_logging()
    install_log_escaping()
    handlers = [h for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
                for h in logging.getLogger(name or None).handlers]
    kinds = {type(h).__name__ for h in handlers}
    assert {"PrefectConsoleHandler", "APILogHandler"} <= kinds, kinds
    assert all(any(isinstance(f, EscapeLogRecords) for f in h.filters) for h in handlers)
