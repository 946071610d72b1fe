"""Who owns a sandbox: a token naming this process, and a liveness test for it.

The token is ``host:pid:start`` where ``start`` is the process start time from
``/proc`` so a reused pid is not mistaken for the original owner.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _start_ticks(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_alive(token: str) -> bool:
    """True if the process named by ``token`` still runs (unknown hosts count as alive)."""
    try:
        host, pid_text, start = token.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    return bool(start) and _start_ticks(pid) == start
