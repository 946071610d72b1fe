"""Text an agent controls, bounded when it is read and rendered for the sink that shows it.

Everything a sandbox can write is hostile (Plan.md, output, file names, errors that quote
them, JSON an agent writes), and so is text that came from a model or a GitHub issue.
Such text is read with a byte cap (:func:`read_bounded`, :func:`bounded`) before it is
held, and it is shown only through one of the sinks below, never pasted into markup:

- :meth:`Untrusted.markdown` / :meth:`Untrusted.block` for the Prefect UI (artifacts, the
  review form and its field descriptions, table artifacts' cells): one line of text with HTML
  and markup characters escaped (list, heading and rule markers where it starts), or a fenced
  block sized from its content (its longest backtick run + 1), so it renders as text -- no raw
  HTML, no image or frame that loads an address, no heading, table or rule that passes for
  the host's, no ``<!--`` that hides what follows.
- :meth:`Untrusted.terminal` (plain text) and :meth:`Untrusted.rich` (a Rich ``Text``,
  never parsed as markup): C0/C1 controls, escape sequences, bidi and line-changing
  characters are written out as ``\\xNN`` / ``\\uNNNN``.
- :meth:`Untrusted.log`: the terminal's escaping plus a cap per line and per record;
  :func:`install_log_escaping` puts the same rule on every log handler of the process.

The naming rule: a value an agent controls is wrapped in ``Untrusted`` (or handed straight to
one of the sink functions below) where it enters the host's rendering code, so a reviewer of a
change sees which strings are not the host's. ``tests/test_render_sinks.py`` reads the source
so that artifacts, CLI consoles and flow processes cannot go around it.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import traceback
from dataclasses import dataclass
from pathlib import Path

ARTIFACT_BYTES = 1 << 20      # an artifact's markdown is cut here, naming the command for the rest
LOG_LINE_CHARS = 2_000        # one line of one log record
LOG_RECORD_CHARS = 64_000     # one log record (a step's output comes in batches of 16 KiB, escaped)
CUT = "… [cut: {more} more bytes{rest}]"

# C0 but tab and newline, DEL, C1; bidi controls, zero-width and other format characters;
# the line and paragraph separators.
_INVISIBLE = ("\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
              "\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
              "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
_HIDDEN = re.compile(f"[{_INVISIBLE}]")
_HIDDEN_OR_LINE = re.compile(f"[{_INVISIBLE}\n\t]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MD_INLINE = re.compile(r"([\\`*_{}\[\]|~!$^])")              # markup anywhere in a line
_MD_BLOCK_START = re.compile(r"^(\s*)([-+=#]|\d+(?=[.)]))")       # a list, heading or rule where a line starts
_BACKTICKS = re.compile(r"`+")


def _code(ch: str) -> str:
    n = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def visible(text: str, *, one_line: bool = False) -> str:
    """``text`` with every control, escape, bidi, zero-width and line-changing character written out.

    With ``one_line`` newline and tab are written out too: the text cannot start a line of its own."""
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text))
    return (_HIDDEN_OR_LINE if one_line else _HIDDEN).sub(lambda m: _code(m.group()), text)


# -- bounded before held ------------------------------------------------------------------------

@dataclass(frozen=True)
class Bounded:
    """Text read under a cap: ``cut`` says whether more was there (``size``: bytes seen, at least)."""

    text: str
    cut: bool
    size: int


def byte_len(text: str) -> int:
    """Its size in UTF-8 (lone surrogates, which decoding with ``surrogateescape`` leaves, count too)."""
    return len(text.encode("utf-8", "surrogatepass"))


def bounded(text: str | bytes, limit: int, rest: str = "") -> str:
    """At most ``limit`` bytes (UTF-8) of ``text``; a cut one ends with a marker naming ``rest``
    (the command or place that shows the whole)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) <= limit:
        return data.decode("utf-8", "replace")
    marker = CUT.format(more=len(data) - limit, rest=f"; the rest: {rest}" if rest else "")
    return data[:limit].decode("utf-8", "ignore") + "\n" + marker


def read_bounded(path: str | os.PathLike, limit: int) -> Bounded | None:
    """At most ``limit`` bytes of a regular file, read without following a link or blocking on a
    fifo; None for anything else. The file is never read further than ``limit + 1`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    from ultrawork.sandbox.agent_tree import read_capped

    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        data = read_capped(fd, limit)
    finally:
        os.close(fd)
    cut = len(data) > limit or st.st_size > limit
    return Bounded(data[:limit].decode("utf-8", "replace"), cut, max(st.st_size, len(data)))


def read_stream(stream, limit: int) -> Bounded:
    """At most ``limit`` bytes of a binary stream (a pipe from git or a sandbox); stops reading there."""
    data = stream.read(limit + 1) or b""
    return Bounded(data[:limit].decode("utf-8", "replace"), len(data) > limit, len(data))


def bounded_list(items, limit: int, item_chars: int = 500) -> list[str]:
    """The first ``limit`` items, each at most ``item_chars`` characters; a marker counts the rest."""
    out: list[str] = []
    more = 0
    for item in items:
        if len(out) < limit:
            text = str(item)
            out.append(text if len(text) <= item_chars else text[:item_chars] + "…")
        else:
            more += 1
    return out + ([f"… and {more} more"] if more else [])


# -- markdown for the Prefect UI ---------------------------------------------------------------

def markdown_inline(text: str, limit: int | None = None) -> str:
    """Agent text as one line of markdown text: nothing in it is markup, HTML, a link or an image,
    wherever the line is put (a cell, after a list marker, at the start of a line)."""
    text = visible(text if limit is None else bounded(text, limit), one_line=True)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_BLOCK_START.sub(_escape_block_start, _MD_INLINE.sub(r"\\\1", text), count=1)


def _escape_block_start(match: re.Match) -> str:
    lead, mark = match.group(1), match.group(2)
    return f"{lead}{mark}\\" if mark[0].isdigit() else f"{lead}\\{mark}"     # 1\. or \# or \-


def table_rows(rows: list[dict], limit: int = 2000) -> list[dict]:
    """Rows for a table artifact: the Prefect UI renders its cells as markdown, so text cells are
    escaped (``markdown_inline``); numbers and empty cells stay as they are."""
    return [{key: markdown_inline(value, limit) if isinstance(value, str) and value else value
             for key, value in row.items()} for row in rows]


def fence_for(text: str, char: str = "`") -> str:
    """A code fence longer than every run of backticks in ``text`` (at least three)."""
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    return char * max(3, longest + 1)


def markdown_block(text: str, info: str = "text", limit: int | None = None) -> str:
    """Agent text as a fenced block sized from its content: shown as written, never interpreted."""
    text = visible(text if limit is None else bounded(text, limit)).rstrip("\n")
    fence = fence_for(text)
    return f"{fence}{info}\n{text}\n{fence}"


# -- the terminal ----------------------------------------------------------------------------------

def terminal(text: str, *, one_line: bool = False) -> str:
    """Agent text for a terminal: controls and escape sequences written out, nothing executed."""
    return visible(text, one_line=one_line)


def rich_text(text: str, *, one_line: bool = False, style: str = ""):
    """Agent text as a Rich ``Text``: printed as written (never read as markup), controls written out."""
    from rich.text import Text

    return Text(visible(text, one_line=one_line), style=style)


def rich_markup(text: str, *, one_line: bool = True) -> str:
    """Agent text to embed in a Rich markup string of the host's: controls written out, ``[`` escaped
    (print it with ``emoji=False``: Rich has no escape for ``:name:`` codes)."""
    from rich.markup import escape

    return escape(visible(text, one_line=one_line))


# -- logs --------------------------------------------------------------------------------------

def log_text(text: str, line_chars: int = LOG_LINE_CHARS, limit: int = LOG_RECORD_CHARS) -> str:
    """Agent text for a log record: controls written out, each line and the whole record capped."""
    text = str(text)
    more = len(text) - limit
    if more > 0:
        text = text[:limit]
    lines = []
    for line in visible(text).split("\n"):
        if len(line) > line_chars:
            line = f"{line[:line_chars]}… [{len(line) - line_chars} more characters on this line]"
        lines.append(line)
    return "\n".join(lines) + (f"\n… [{more} more characters not logged]" if more > 0 else "")


class EscapeLogRecords(logging.Filter):
    """On a handler: every record (message, arguments, traceback) is escaped and capped before it is
    written, whatever logged it -- Prefect's own crash reports quote an agent's stderr too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_ultrawork_escaped", False):
            return True
        try:
            record.msg, record.args = log_text(record.getMessage()), ()
        except Exception:  # noqa: BLE001 - a broken format string is shown as itself
            record.msg, record.args = log_text(repr(record.msg)), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = log_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        if record.stack_info:
            record.stack_info = log_text(record.stack_info)
        record._ultrawork_escaped = True
        return True


_FILTER = EscapeLogRecords()


def install_log_escaping() -> int:
    """Put :class:`EscapeLogRecords` on every handler of every logger of this process (idempotent);
    returns how many handlers got it. Call it after Prefect configured its logging."""
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    added = 0
    for logger in loggers:
        for handler in list(getattr(logger, "handlers", [])):
            if not any(isinstance(f, EscapeLogRecords) for f in handler.filters):
                handler.addFilter(_FILTER)
                added += 1
    return added


# -- the marker type ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Untrusted:
    """A string an agent (or a model, or an issue's author) controls; render it for its sink."""

    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", str(self.text))

    def __str__(self) -> str:                      # a mistake shows, escaped, rather than passing raw
        return self.terminal(one_line=True)

    def markdown(self, limit: int | None = None) -> str:
        return markdown_inline(self.text, limit)

    def block(self, info: str = "text", limit: int | None = None) -> str:
        return markdown_block(self.text, info, limit)

    def terminal(self, *, one_line: bool = False) -> str:
        return terminal(self.text, one_line=one_line)

    def rich(self, *, one_line: bool = False, style: str = ""):
        return rich_text(self.text, one_line=one_line, style=style)

    def markup(self) -> str:
        return rich_markup(self.text)

    def log(self) -> str:
        return log_text(self.text)


def read_agent_file(path: str | Path, limit: int) -> Untrusted | None:
    """An agent-written file, bounded and marked: its text (cut with a marker past ``limit``)."""
    got = read_bounded(path, limit)
    if got is None:
        return None
    more = f"\n… [cut: the file has {got.size} bytes, {limit} shown]" if got.cut else ""
    return Untrusted(got.text + more)
