"""Who owns something: a token naming a process, a liveness test for it, and a lock that names its holder.

The token is ``host:pid:start`` where ``start`` is the process start time from
``/proc`` so a reused pid is not mistaken for the original owner.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from ultrawork.workspace.errors import UltraworkError


def _start_ticks(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat``: when the process started (clock ticks since boot); "" once it
    has exited (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] in ("Z", "X") else fields[19]


def process_start(pid: int) -> str:
    """The start time of ``pid`` ("" when there is no such process)."""
    return _start_ticks(pid)


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_environ(pid: int, name: str) -> str | None:
    """One variable of another process's environment (readable for this user's processes only)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = name.encode() + b"="
    return next((v[len(prefix):].decode(errors="replace") for v in raw.split(b"\0") if v.startswith(prefix)), None)


def process_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def own_processes() -> list[int]:
    """Pids of the live processes of this user."""
    uid = os.getuid()
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and process_uid(int(p.name)) == uid]


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


class LockBusy(UltraworkError):
    """Another live process holds the lock; ``holder`` says which one."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


class HolderLock:
    """An exclusive ``flock`` on a file (mode 0600) that also records who holds it.

    The kernel drops the lock when the holder's last descriptor closes, so a
    killed holder never leaves it taken; the recorded token is only for naming
    the holder in a refusal. A child started with ``pass_fds=(lock.fd,)`` keeps
    the lock after its parent exits (see :meth:`hand_to`).
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, what: str, wait: float = 0.0) -> "HolderLock":
        """Take the lock (waiting up to ``wait`` seconds) or raise :class:`LockBusy` naming the holder.

        Even with no wait it is tried for a moment: a probe (:meth:`held_elsewhere`) holds it for microseconds."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + max(wait, 0.25)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = self.holder()
                    raise LockBusy(f"{self.path} is held by {holder}", holder) from None
                time.sleep(0.05)
        self.fd = fd
        self._record(owner_token(), what)
        return self

    def hand_to(self, pid: int, what: str) -> None:
        """The lock now belongs to ``pid`` (a child that inherited :attr:`fd`); this process lets go of it."""
        self._record(owner_token(pid), what)
        os.close(self.fd)
        self.fd = None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)       # closing the last descriptor drops the flock
            self.fd = None

    def held_elsewhere(self) -> bool:
        """True while another process (or another descriptor of this one) holds the lock; takes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def holder(self) -> str:
        """``process PID (what)`` of the current holder, as well as it can be told."""
        for _ in range(20):    # a new holder writes its name just after it takes the lock
            try:
                token, _, what = self.path.read_text().partition("\n")
            except OSError:
                token, what = "", ""
            if token and owner_alive(token):
                pid = token.rsplit(":", 2)[1]
                return f"process {pid} ({what.strip()})" if what.strip() else f"process {pid}"
            time.sleep(0.05)
        return "another process"

    def _record(self, token: str, what: str) -> None:
        data = f"{token}\n{what}\n".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def __enter__(self) -> "HolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
