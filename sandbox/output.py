"""Bounded output: what a command printed, kept and logged within fixed budgets.

A hostile command can print without end. :class:`BoundedBuffer` keeps the head
and the tail of a stream in memory; :class:`OutputLog` turns the stream into a
few log records (several lines each, flushed every ``batch_seconds`` or
``batch_bytes``) and stops logging at a per-step budget, with one marker line
saying how much was not logged. Past its budget a chunk costs one addition.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class BoundedBuffer:
    """Keeps the head and the tail of a stream up to ``limit`` bytes, marking what was cut."""

    def __init__(self, limit: int):
        self.limit = max(2, limit)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def write(self, data: bytes) -> None:
        half = self.limit // 2
        room = half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        keep = self.limit - half
        if len(data) >= keep:           # the chunk alone fills the tail: never copy more than that
            self.dropped += len(self.tail) + len(data) - keep
            self.tail = bytearray(data[-keep:])
            return
        self.tail += data
        extra = len(self.tail) - keep
        if extra > 0:
            del self.tail[:extra]
            self.dropped += extra

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    @property
    def total(self) -> int:
        return len(self.head) + len(self.tail) + self.dropped

    def text(self) -> str:
        if not self.dropped:
            return (self.head + self.tail).decode(errors="replace")
        marker = f"\n[... {self.dropped} bytes truncated ...]\n"
        return self.head.decode(errors="replace") + marker + self.tail.decode(errors="replace")


OnOutput = Callable[[str, str], None]  # (stream name, several lines of text)


class OutputLog:
    """Batches a command's output into log records and caps what one step logs.

    ``emit(stream, text)`` gets several lines at a time: when a stream's batch
    reaches ``batch_bytes``, when it is ``batch_seconds`` old (see :meth:`tick`),
    and at :meth:`close`. After ``max_lines`` lines or ``max_bytes`` bytes nothing
    more is logged; :meth:`close` then emits ``marker`` with the count of bytes
    left out. Lines are cut at ``max_line`` characters. Thread-safe: a reader
    thread feeds it while the waiting thread ticks it.
    """

    def __init__(self, emit: OnOutput, *, max_lines: int = 2000, max_bytes: int = 256 * 1024,
                 batch_bytes: int = 16 * 1024, batch_seconds: float = 0.5, max_line: int = 2000,
                 marker: str = "[output truncated: {dropped} more bytes not logged]"):
        self.emit = emit
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.batch_bytes, self.batch_seconds, self.max_line = batch_bytes, batch_seconds, max_line
        self.marker = marker
        self.lines = 0           # lines logged (or batched to be logged)
        self.bytes = 0           # bytes logged (or batched)
        self.dropped = 0         # bytes seen past the budget
        self.records = 0         # log records emitted
        self._partial = {"stdout": bytearray(), "stderr": bytearray()}
        self._batch: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self._batch_size = {"stdout": 0, "stderr": 0}
        self._batch_since: dict[str, float | None] = {"stdout": None, "stderr": None}
        self._full = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def feed(self, stream: str, data: bytes) -> None:
        with self._lock:
            if self._full or self._closed:
                self.dropped += len(data)
                return
            partial = self._partial[stream]
            partial += data
            start = 0
            while not self._full:
                end = partial.find(b"\n", start, start + self.max_line + 1)
                if end < 0:
                    if len(partial) - start <= self.max_line:
                        break
                    end = start + self.max_line     # an endless line is cut into pieces
                    line, start = bytes(partial[start:end]), end
                else:
                    line, start = bytes(partial[start:end]), end + 1
                self._add(stream, line)
            if self._full:
                self.dropped += len(partial) - start
                partial.clear()
            else:
                del partial[:start]
            self._flush_due(stream, time.monotonic())

    def _add(self, stream: str, line: bytes) -> None:
        if self.lines >= self.max_lines or self.bytes + len(line) + 1 > self.max_bytes:
            self._full = True
            self.dropped += len(line) + 1
            return
        self.lines += 1
        self.bytes += len(line) + 1
        self._batch[stream].append(line.rstrip(b"\r"))
        self._batch_size[stream] += len(line) + 1
        if self._batch_since[stream] is None:
            self._batch_since[stream] = time.monotonic()

    def _flush_due(self, stream: str, now: float) -> None:
        since = self._batch_since[stream]
        if since is not None and (self._batch_size[stream] >= self.batch_bytes or now - since >= self.batch_seconds):
            self._flush(stream)

    def _flush(self, stream: str) -> None:
        lines = self._batch[stream]
        if not lines:
            return
        text = b"\n".join(lines).decode(errors="replace")
        self._batch[stream], self._batch_size[stream], self._batch_since[stream] = [], 0, None
        self.records += 1
        try:
            self.emit(stream, text)
        except Exception:  # a broken log sink must not break the command
            pass

    def tick(self) -> None:
        """Flush batches older than ``batch_seconds`` (called while the command is quiet)."""
        with self._lock:
            now = time.monotonic()
            for stream in self._batch:
                self._flush_due(stream, now)

    def close(self) -> None:
        """Flush what is left (an unterminated last line too) and the truncation marker."""
        with self._lock:
            if self._closed:
                return
            for stream, partial in self._partial.items():
                if partial and not self._full:
                    self._add(stream, bytes(partial))
                elif partial:
                    self.dropped += len(partial)
                partial.clear()
            for stream in self._batch:
                self._flush(stream)
            self._closed = True
            if self.dropped:
                self.records += 1
                try:
                    self.emit("stdout", self.marker.format(dropped=self.dropped))
                except Exception:
                    pass
