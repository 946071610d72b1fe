"""Bounded output capture and line splitting for streamed command output."""

from __future__ import annotations

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
        if data:
            self.tail += data
            extra = len(self.tail) - (self.limit - half)
            if extra > 0:
                del self.tail[:extra]
                self.dropped += extra

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def text(self) -> str:
        if not self.dropped:
            return (self.head + self.tail).decode(errors="replace")
        marker = f"\n[... {self.dropped} bytes truncated ...]\n"
        return self.head.decode(errors="replace") + marker + self.tail.decode(errors="replace")


class LineSplitter:
    """Feeds complete lines of a byte stream to a callback (lines are capped at 8 KiB)."""

    def __init__(self, on_line: Callable[[str], None], max_line: int = 8192):
        self.on_line = on_line
        self.max_line = max_line
        self.pending = bytearray()

    def feed(self, data: bytes) -> None:
        self.pending += data
        while True:
            idx = self.pending.find(b"\n")
            if idx < 0:
                if len(self.pending) > self.max_line:
                    self._emit(bytes(self.pending[: self.max_line]))
                    del self.pending[: self.max_line]
                return
            self._emit(bytes(self.pending[:idx]))
            del self.pending[: idx + 1]

    def close(self) -> None:
        if self.pending:
            self._emit(bytes(self.pending))
            self.pending.clear()

    def _emit(self, line: bytes) -> None:
        try:
            self.on_line(line.decode(errors="replace").rstrip("\r"))
        except Exception:  # a broken progress callback must not break the command
            pass
