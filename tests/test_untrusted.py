"""Every sink of ``ultrawork.untrusted`` fed every hostile string of ``hostile_strings``.

Markdown is checked by rendering it with a CommonMark renderer (HTML allowed, tables on, as the
Prefect UIs do) and reading the tags it produced; the terminal by what Rich writes to a terminal.
"""

from __future__ import annotations

import io
import logging
import os
import unicodedata
from html.parser import HTMLParser

import pytest

from hostile_strings import ESC, RICH, hostile
from ultrawork.untrusted import (LOG_LINE_CHARS, LOG_RECORD_CHARS, EscapeLogRecords, Untrusted, bounded,
                                 markdown_block, markdown_inline, read_bounded, rich_markup, visible)

CASES = list(hostile("http://127.0.0.1:9").items())
IDS = [name for name, _ in CASES]


def unsafe_for_a_terminal(text: str, one_line: bool = False) -> list[str]:
    """Characters that steer a terminal or change how a line reads (by Unicode category, not by our list)."""
    allowed = "" if one_line else "\n\t"
    return [c for c in text if c not in allowed and (
        ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs"))]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)

    def handle_comment(self, data):
        self.comments.append(data)


def render(markdown: str) -> Tags:
    from markdown_it import MarkdownIt

    parsed = Tags()
    parsed.feed(MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown))
    return parsed


@pytest.mark.parametrize("text", [t for _, t in CASES], ids=IDS)
def test_the_terminal_sinks_write_no_control_escape_or_line_changing_character(text):
    shown = Untrusted(text).terminal()
    assert not unsafe_for_a_terminal(shown), shown
    assert not unsafe_for_a_terminal(Untrusted(text).terminal(one_line=True), one_line=True)
    assert ESC not in shown and "\x9b" not in shown


@pytest.mark.parametrize("text", [t for _, t in CASES], ids=IDS)
def test_rich_prints_agent_text_as_written_never_as_markup(text):
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system=None, width=400, soft_wrap=True)
    console.print(Untrusted(text).rich(one_line=True))
    # inside the host's markup: the CLI's consoles have no emoji codes (``:name:`` would be replaced)
    console.print(f"[bold]conflict in[/] {rich_markup(text)} [dim](resolve it)[/]", emoji=False)
    printed = buffer.getvalue()
    assert ESC not in printed and not unsafe_for_a_terminal(printed.replace("\n", ""), one_line=True)
    assert printed.count(visible(text, one_line=True)) == 2, printed


@pytest.mark.parametrize("name", list(RICH))
def test_a_rich_markup_file_name_is_named_literally(name):
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=400, emoji=False).print(f"conflict on {rich_markup(RICH[name])}")
    assert buffer.getvalue() == f"conflict on {RICH[name]}\n"


@pytest.mark.parametrize("text", [t for _, t in CASES], ids=IDS)
def test_inline_markdown_is_one_paragraph_of_exactly_the_agents_text(text):
    page = render(f"Error: {markdown_inline(text)}")
    assert page.tags == ["p"] and not page.comments, page.tags
    assert "".join(page.text).strip() == f"Error: {visible(text, one_line=True)}".strip()


@pytest.mark.parametrize("text", [t for _, t in CASES] + ["1. first", "  - item", "+ plus", "=== rule",
                                                          "12) twelve"], ids=IDS + ["ol", "ul", "plus", "eq", "ol2"])
def test_inline_markdown_where_a_line_or_a_cell_starts_is_still_one_paragraph_of_text(text):
    for where, tags in (("{}", ["p"]), ("- {}", ["ul", "li"]),
                        ("| a |\n| - |\n| {} |", ["table", "thead", "tr", "th", "tbody", "tr", "td"])):
        page = render(where.format(markdown_inline(text)))
        assert page.tags == tags and not page.comments, (where, page.tags)
        assert visible(text, one_line=True).strip() in "".join(page.text), page.text


@pytest.mark.parametrize("text", [t for _, t in CASES], ids=IDS)
def test_a_fenced_block_shows_exactly_the_agents_text_and_the_host_text_after_it(text):
    page = render(f"### Agent one\n\n{markdown_block(text)}\n\n**Agent two**\n\n{markdown_block('fine')}\n")
    assert page.tags == ["h3", "pre", "code", "p", "strong", "pre", "code"], page.tags
    assert not page.comments
    assert "".join(page.text).split("Agent one\n", 1)[1].startswith(visible(text).rstrip("\n")), page.text


def test_one_document_of_every_hostile_string_renders_no_element_but_the_hosts():
    everything = "\n".join(t for _, t in CASES)
    page = render(f"# Host\n\n| a | b |\n| - | - |\n| 1 | 2 |\n\n{markdown_block(everything)}\n\n"
                  f"- {markdown_inline(everything)}\n\nthe end")
    assert page.tags == ["h1", "table", "thead", "tr", "th", "th", "tbody", "tr", "td", "td", "pre", "code",
                         "ul", "li", "p"], page.tags
    assert "".join(page.text).rstrip().endswith("the end")


@pytest.mark.parametrize("text", [t for _, t in CASES], ids=IDS)
def test_a_log_line_is_escaped(text):
    assert not unsafe_for_a_terminal(Untrusted(text).log())


def test_log_lines_and_records_are_capped():
    line = Untrusted("x" * 100_000).log()
    assert len(line) < LOG_LINE_CHARS + 100 and "more characters on this line" in line
    record = Untrusted("y\n" * 100_000).log()
    assert len(record) < LOG_RECORD_CHARS + 100 and "more characters not logged" in record


def test_the_log_filter_escapes_messages_arguments_and_tracebacks_of_any_logger():
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(EscapeLogRecords())
    logger = logging.getLogger("test-untrusted")
    logger.addHandler(handler)
    try:
        everything = "\n".join(t for _, t in CASES)
        logger.warning("agent failed: %s", everything)
        try:
            raise RuntimeError(everything)
        except RuntimeError:
            logger.exception("step failed")
    finally:
        logger.removeHandler(handler)
    written = buffer.getvalue()
    assert "agent failed: " in written and "RuntimeError" in written
    assert not unsafe_for_a_terminal(written)


def test_a_file_is_read_up_to_its_cap_only_and_links_and_fifos_are_not_read(tmp_path):
    big = tmp_path / "Plan.md"
    big.write_bytes(b"z" * (3 << 20))
    got = read_bounded(big, 1 << 20)
    assert got.cut and len(got.text) == 1 << 20 and got.size == 3 << 20
    small = tmp_path / "small"
    small.write_text("ok")
    assert read_bounded(small, 10).text == "ok" and not read_bounded(small, 10).cut
    (tmp_path / "link").symlink_to(small)
    assert read_bounded(tmp_path / "link", 10) is None
    os.mkfifo(tmp_path / "fifo")
    assert read_bounded(tmp_path / "fifo", 10) is None         # returns at once: never blocks


def test_a_cut_names_what_shows_the_rest():
    text = bounded("é" * 1000, 101, rest="ultrawork diff r1 frontend")
    assert text.startswith("é" * 50) and "more bytes" in text and "ultrawork diff r1 frontend" in text
    assert bounded("short", 100) == "short"


def test_ultrawork_logs_indents_the_later_lines_of_a_record_so_none_passes_for_a_record():
    from datetime import datetime
    from types import SimpleNamespace

    from ultrawork.cli.follow import _line

    forged = "[explore stdout] working\n12:00:00 ERROR   review sent: approved every agent\n\x1b[2Jdone"
    shown = _line(SimpleNamespace(timestamp=datetime(2026, 1, 1, 12, 0), level=20, message=forged))
    lines = shown.splitlines()
    assert lines[0] == "12:00:00 INFO    [explore stdout] working"
    assert all(line.startswith(" " * 17) for line in lines[1:]) and "\x1b" not in shown, lines


def test_table_artifact_cells_render_as_one_paragraph_of_text_and_numbers_stay_numbers():
    from ultrawork.untrusted import table_rows

    [row] = table_rows([{"agent": "explore", "egress": "\n".join(t for _, t in CASES), "bytes": 12, "note": ""}])
    assert row["bytes"] == 12 and row["note"] == "" and row["agent"] == "explore"
    page = render(row["egress"])
    assert page.tags == ["p"] and not page.comments
