"""Writers prepared while the research runs: their prompt arrives after their sandbox.

A writer's prompt holds the research findings, so it is known only once every research
agent has ended; everything else a writer needs (its branch, clone, Plan.md, disk caps and
hardened sandbox) is not. The run therefore starts its writers' subflows together with the
research, each with a prompt still to come: the subflow sets up and starts its sandbox,
then waits here for its prompt (:func:`prompt_for_writer`), which the run hands over
(:func:`deliver`) as soon as the findings are in. Only the prompt waits for the research.

A writer waiting for its prompt starts its sandbox ahead only once every research agent of
its run holds its sandbox (or has ended), and only if a slot of the global sandbox cap is
free then: its run's research never waits for a slot a writer holds while waiting for that
research, so no run can deadlock on the cap.

The sandbox's ``/agent/prompt.md`` is a file of the run's host-owned inbox, bind-mounted
read-only: the prompt is written into that same file (its inode is what the sandbox has
mounted), before the agent's first step runs. Process-local: the writers' subflows run in
the run's own process.
"""

from __future__ import annotations

import asyncio
import os
import threading

PENDING = ("# The research findings are not in yet\n\n"
           "This file is replaced by your prompt before your first step runs.\n")

_LOCK = threading.Lock()
_WAITING: dict[tuple[str, str], asyncio.Future] = {}
_SEATING: dict[str, tuple[asyncio.Event, set[str]]] = {}   # run id -> (all seated, research still to seat)


class ResearchFailed(RuntimeError):
    """The run's research ended without findings to give (cancelled or crashed): no prompt comes."""


def expect(run_id: str, role: str) -> asyncio.Future:
    """The future ``role``'s prompt will arrive by (made on the run's event loop)."""
    future = asyncio.get_running_loop().create_future()
    with _LOCK:
        _WAITING[(run_id, role)] = future
    return future


def deliver(run_id: str, role: str, prompt: str) -> None:
    with _LOCK:
        future = _WAITING.get((run_id, role))
    if future is not None and not future.done():
        future.set_result(prompt)


def withdraw(run_id: str, roles, why: str) -> None:
    """No prompt comes for ``roles`` (the research failed, or the run is stopping)."""
    with _LOCK:
        futures = [_WAITING.pop((run_id, role), None) for role in roles]
    for future in futures:
        if future is not None and not future.done():
            future.set_exception(ResearchFailed(why))
            future.exception()          # retrieved here: a writer that already ended never awaits it


def expect_research(run_id: str, roles) -> None:
    """``roles`` are the run's research agents: writers start sandboxes ahead only once all are seated."""
    event = asyncio.Event()
    with _LOCK:
        _SEATING[run_id] = (event, set(roles))
    if not roles:
        event.set()


def seated(run_id: str, role: str) -> None:
    """Research agent ``role`` holds its sandbox (or has ended, or never will have one)."""
    with _LOCK:
        entry = _SEATING.get(run_id)
        if entry is None:
            return
        entry[1].discard(role)
        done = not entry[1]
    if done:
        entry[0].set()


async def research_seated(run_id: str) -> None:
    with _LOCK:
        entry = _SEATING.get(run_id)
    if entry is not None:
        await entry[0].wait()


def forget(run_id: str) -> None:
    with _LOCK:
        entry = _SEATING.pop(run_id, None)
    if entry is not None:
        entry[0].set()


def waiting(run_id: str, role: str) -> bool:
    with _LOCK:
        return (run_id, role) in _WAITING


async def prompt_for_writer(run_id: str, role: str) -> str | None:
    """The prompt of a writer prepared during the research, once the run delivers it; None for an
    agent whose prompt came with it."""
    with _LOCK:
        future = _WAITING.get((run_id, role))
    if future is None:
        return None
    try:
        return await future
    finally:
        with _LOCK:
            if _WAITING.get((run_id, role)) is future:
                del _WAITING[(run_id, role)]


def write_in_place(path, text: str) -> None:
    """``text`` into the existing inbox file ``path`` (same inode: a sandbox has it mounted). The inbox
    is host-owned and only mounted read-only; the file is opened without following a link anyway."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
