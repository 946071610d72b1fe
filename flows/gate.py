"""Starting concurrent subflows one after the other, then letting them run together.

Prefect's local server on SQLite answers concurrent flow-run creations with
"database is locked"; the client then backs off for 2 s or more, so four
subflows gathered at once started 0.1 / 1.8 / 2.4 / 7.0 s apart (measured).
Waiting until the previous subflow has *started* (a few hundred ms) before
creating the next keeps them concurrent and starts all four within ~0.3 s.
"""

from __future__ import annotations

import asyncio

_STARTED: dict[tuple[str, str], asyncio.Event] = {}
START_WAIT = 10.0  # never wait longer than this for a sibling that fails to start


def _event(run_id: str, role: str) -> asyncio.Event:
    return _STARTED.setdefault((run_id, role), asyncio.Event())


def mark_started(run_id: str, role: str) -> None:
    """Called first thing in an agent subflow."""
    _event(run_id, role).set()


async def wait_started(run_id: str, role: str | None) -> None:
    """Wait (bounded) until ``role``'s subflow has started; None: nothing to wait for."""
    if role is None:
        return
    try:
        await asyncio.wait_for(_event(run_id, role).wait(), START_WAIT)
    except asyncio.TimeoutError:
        pass


def forget(run_id: str) -> None:
    for key in [k for k in _STARTED if k[0] == run_id]:
        del _STARTED[key]
