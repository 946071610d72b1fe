"""The conversation a model agent keeps and resends: every part that scales with the model's replies is capped.

A model (or a prompt-injected one) can reply with megabytes of tool-call arguments or text; kept
as they are, they would be resent with every later request and held in memory for the rest of
the run. Before each request (pydantic-ai's ``ProcessHistory`` capability, which also replaces
the run's own history) tool-call arguments over `MAX_ARG_CHARS`, and text, thinking, tool
results and retry feedback over `MAX_TEXT_CHARS`, are cut to their head with a marker saying how
much was cut. A call already ran with its full arguments; only the record of it is cut.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

MAX_ARG_CHARS = 4_000        # one tool call's arguments, as kept in the history
MAX_TEXT_CHARS = 20_000      # one text, thinking, tool result or retry feedback part (tool results: 16,000 already)
HEAD_CHARS = 1_000           # what is kept of a cut call's arguments
CUT_KEY = "ultrawork_cut"

_CAPPED_REQUEST_PARTS = ("tool-return", "retry-prompt", "retry-feedback")
_CAPPED_RESPONSE_PARTS = ("text", "thinking")


def _size(value: Any) -> tuple[int, str]:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return len(text), text


def cut_marker(size: int, what: str) -> str:
    return f"[{what} of {size} characters cut from the history by ultrawork]"


def capped_args(args: Any) -> Any:
    """A tool call's arguments as kept: themselves, or (over the cap) an object holding the marker and a head."""
    if args is None:
        return args
    size, text = _size(args)
    if size <= MAX_ARG_CHARS:
        return args
    return {CUT_KEY: cut_marker(size, "arguments") + " (the call ran with them in full)", "head": text[:HEAD_CHARS]}


def capped_text(content: Any) -> Any:
    size, text = _size(content)
    if size <= MAX_TEXT_CHARS:
        return content
    return text[:MAX_TEXT_CHARS - 200] + "\n" + cut_marker(size, "content")


def _cap_part(part: Any, kinds: tuple[str, ...]) -> Any:
    kind = getattr(part, "part_kind", None)
    if kind == "tool-call":
        args = capped_args(part.args)
        return part if args is part.args else dataclasses.replace(part, args=args)
    if kind in kinds:
        content = capped_text(part.content)
        return part if content is part.content else dataclasses.replace(part, content=content)
    return part


def cap_history(messages: list) -> list:
    """``messages`` with every oversized part cut (the same objects where nothing was cut)."""
    out = []
    for message in messages:
        kinds = _CAPPED_RESPONSE_PARTS if message.kind == "response" else _CAPPED_REQUEST_PARTS
        parts = [_cap_part(p, kinds) for p in message.parts]
        if any(a is not b for a, b in zip(parts, message.parts)):
            message = dataclasses.replace(message, parts=parts)
        out.append(message)
    return out


def history_capability():
    """The pydantic-ai capability that caps the history before every model request."""
    from pydantic_ai.capabilities import ProcessHistory

    return ProcessHistory(cap_history)
