"""Awaiting independent steps at the same time, the way a run needs it."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable


async def together(*steps: Awaitable[Any]) -> list[Any]:
    """Run ``steps`` concurrently and wait for every one of them, even after one fails
    (none is left running unobserved); then raise the first failure, else return the results."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
