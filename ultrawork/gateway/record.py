"""The gateway's record of requests: one JSON line per request and refusal, bounded per agent (stdlib only).

The gateway writes it (:class:`RecordWriter`, inside the container) to a file in a
folder the host made and mounted for it; the host reads it as it grows
(:class:`RecordReader`). It is not the container's log: nothing an agent sends
can rotate it away. Each agent (known by its source address, never by what it
sends) gets at most ``per_agent`` lines; what it asks for beyond that is
counted in ``dropped.json`` beside it (rewritten, so it never grows), at most
half a second after the drop.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time

RECORD_FILE = "requests.jsonl"
DROPPED_FILE = "dropped.json"
FLUSH_DELAY = 0.5
MAX_LINE = 8192                 # a longer line is not read back (the writer never writes one)
UNKNOWN = "-"                   # the bucket of requests from no known agent


class RecordWriter:
    """Appends records to ``path``; ``per_agent`` request lines per agent, drops counted."""

    def __init__(self, path: str, per_agent: int):
        self.path, self.per_agent = path, per_agent
        self.lines: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.failed = 0
        self.dropped_path = os.path.join(os.path.dirname(path), DROPPED_FILE)
        self._flush_due = False
        self._read_existing()          # a restarted gateway continues the same record and its bounds
        self.fh = open(path, "a", buffering=1, encoding="utf-8")

    def _read_existing(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    agent = record.get("agent") or UNKNOWN
                    if record.get("event") == "request":
                        self.lines[agent] = self.lines.get(agent, 0) + 1
        except (OSError, TypeError, ValueError):
            pass
        self.dropped = read_dropped(self.dropped_path)

    def write(self, record: dict) -> None:
        agent = record.get("agent") or UNKNOWN
        if self.lines.get(agent, 0) < self.per_agent:
            self.lines[agent] = self.lines.get(agent, 0) + 1
            self._put(record)
            return
        self.dropped[agent] = self.dropped.get(agent, 0) + 1
        if not self._flush_due:
            self._flush_due = True
            try:
                asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush_dropped)
            except RuntimeError:       # no event loop (a test, a tool): write now
                self.flush_dropped()

    def flush_dropped(self) -> None:
        self._flush_due = False
        tmp = self.dropped_path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"time": round(time.time(), 3), "dropped": self.dropped}, fh)
            os.replace(tmp, self.dropped_path)
        except OSError:
            self.failed += 1

    def _put(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True)
        if len(line) >= MAX_LINE:
            line = json.dumps({k: v for k, v in record.items() if k in ("event", "time", "agent", "decision",
                                                                         "status")} | {"truncated": True})
        try:
            self.fh.write(line + "\n")
        except (OSError, ValueError):
            self.failed += 1

    def close(self) -> None:
        self.flush_dropped()
        try:
            self.fh.close()
        except OSError:
            pass


class RecordReader:
    """The host's view of a record file, read incrementally from where it left off."""

    def __init__(self, path: str, max_bytes_per_read: int = 8 << 20):
        self.path, self.max_bytes = path, max_bytes_per_read
        self.offset = 0
        self.records: list[dict] = []
        self.by_agent: dict[str, list[dict]] = {}     # the same records, per agent (None: UNKNOWN)
        self.dropped: dict[str, int] = {}
        self.unreadable = 0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the complete lines written since the last call."""
        with self._lock:
            self.dropped = read_dropped(os.path.join(os.path.dirname(self.path), DROPPED_FILE))
            fd = open_regular(self.path)
            if fd is None:
                return
            with os.fdopen(fd, "rb") as fh:
                while True:
                    fh.seek(self.offset)
                    chunk = fh.read(self.max_bytes)
                    end = chunk.rfind(b"\n")
                    if end < 0:
                        if len(chunk) >= self.max_bytes:   # one line longer than a read: skip it
                            self.offset += len(chunk)
                            self.unreadable += 1
                            continue
                        return
                    self.offset += end + 1
                    for line in chunk[:end].split(b"\n"):
                        self._take(line)
                    if len(chunk) < self.max_bytes:
                        return

    def _take(self, line: bytes) -> None:
        if len(line) >= MAX_LINE:
            self.unreadable += 1
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.unreadable += 1
            return
        if not isinstance(record, dict):
            self.unreadable += 1
        else:
            self.records.append(record)
            self.by_agent.setdefault(str(record.get("agent") or UNKNOWN), []).append(record)


def read_dropped(path: str) -> dict[str, int]:
    """Agent -> requests past its bound, from the side file (empty when there is none)."""
    fd = open_regular(path)
    if fd is None:
        return {}
    try:
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(1 << 16))["dropped"]
        return {str(k): int(v) for k, v in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def open_regular(path: str) -> int | None:
    """A read descriptor of ``path`` if it is a regular file (not a link, FIFO or device the writer
    put there), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd
