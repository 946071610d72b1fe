"""A model agent's conversation, saved before every request, so it continues instead of starting over.

Two host-private files in the agent's state folder (never in a sandbox mount):

* ``conversation.json``: the round in progress, as it is about to be sent (capped, see ``history``);
  a retried request, and a run resumed after its process was killed, send it again as it was,
  so no tool call of a finished turn runs twice;
* ``conversation-done.json``: the last finished round's whole conversation; a revise round
  continues it with the reviewer's comment.

Written whole and renamed into place, so a kill leaves the previous version or the new one.

Why not pydantic-ai's own Prefect integration (``pydantic_ai.durable_exec.prefect``, in the pinned
2.68): its model and tool tasks are cached per flow run (``RUN_ID`` in the cache key), while
``ultrawork resume`` and a revise round run the agent in a new flow run, so neither would find the
saved turns; and a replayed tool call must match a work tree the host may reset between rounds,
which this journal decides together with the work tree (see ``runtime.environment``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CURRENT = "conversation.json"
DONE = "conversation-done.json"
MAX_BYTES = 64 << 20          # read back at most this much (the history is capped far below it)


class ConversationJournal:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)

    def _write(self, name: str, data: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.dir / name)

    def _read(self, name: str) -> dict:
        try:
            fd = os.open(self.dir / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return {}
        with os.fdopen(fd) as fh:
            text = fh.read(MAX_BYTES + 1)
        try:
            data = json.loads(text) if len(text) <= MAX_BYTES else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, round_no: int, messages_json: str) -> None:
        """The round's conversation as it is about to be sent."""
        self._write(CURRENT, {"round": round_no, "messages": messages_json})

    def finish(self, round_no: int, messages_json: str) -> None:
        """The round ended (an answer, or a spent budget): its conversation is what a next round continues."""
        self._write(DONE, {"round": round_no, "messages": messages_json})
        try:
            os.unlink(self.dir / CURRENT)
        except FileNotFoundError:
            pass

    def in_progress(self, round_no: int) -> str | None:
        """The unfinished conversation of ``round_no``, or None."""
        data = self._read(CURRENT)
        return data.get("messages") if data.get("round") == round_no and data.get("messages") else None

    def finished_before(self, round_no: int) -> str | None:
        """The conversation of the last round before ``round_no`` that finished, or None."""
        data = self._read(DONE)
        done = data.get("round")
        return data.get("messages") if isinstance(done, int) and done < round_no and data.get("messages") else None


def start_of(journal: ConversationJournal, round_no: int, prompt: str) -> tuple[str | None, str | None, str | None]:
    """Where a model round starts: ``(prompt to send, history to continue, what to note)``.

    The round's own unfinished conversation is sent again as it was (no new prompt); a later
    round continues the last finished one with its own part of the prompt (the reviewer's
    comment, from ``# Review, round N`` on); otherwise the round starts with ``prompt``.
    """
    saved = journal.in_progress(round_no)
    if saved:
        return None, saved, "continues its saved conversation (the request that was not answered is sent again)"
    if round_no > 1:
        earlier = journal.finished_before(round_no)
        start = prompt.rfind(f"# Review, round {round_no}")
        if earlier and start >= 0:
            return prompt[start:], earlier, "continues its conversation of the earlier round with the reviewer's comment"
    return prompt, None, None
