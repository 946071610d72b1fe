"""The one road to the model provider: bounded in time, retried here only, and metered per HTTP request.

The provider SDKs' own retries are off (``max_retries=0``): every attempt goes through
`MeteredTransport`, which

* asks the `RequestMeter` before sending (atomic: a budget is never passed, whatever the
  number of agents sending at once) and counts the request when it is sent;
* tries a request at most ``attempts`` times (connection errors, timeouts, 408/429/5xx), with
  a short backoff (``Retry-After`` honoured up to `MAX_BACKOFF`);
* gives each attempt ``connect_timeout`` to connect and ``request_timeout`` for the rest.

So a model call takes at most ``attempts * (connect_timeout + request_timeout)`` plus the
backoff, and the count of requests is the count the provider received.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field
from typing import Callable

import httpx2

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF = 10.0
MAX_RESPONSE_BYTES = 16 << 20    # one answer (an honest one is well under 1 MiB); past it the call fails


class ResponseTooLarge(httpx2.RemoteProtocolError):
    """The provider's answer was over `MAX_RESPONSE_BYTES` (read no further; not tried again)."""


class RequestRefused(Exception):
    """The meter refused to send a request: ``limit`` names the budget (never sent, never counted)."""

    def __init__(self, limit: str) -> None:
        super().__init__(f"budget {limit} reached: request not sent")
        self.limit = limit


@dataclass
class RequestMeter:
    """Counts the HTTP requests sent to the provider; refuses the one that would pass a limit.

    ``limit``: most requests through this meter (None: no limit); ``parent``: a meter every request
    also goes through (the run's, shared by its agents and its planner). Thread-safe.
    """

    limit: int | None = None
    name: str = "max_requests"
    parent: "RequestMeter | None" = None
    sent: int = 0
    refused: str | None = None          # the limit that refused a request, once one did
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self) -> None:
        """Count one request about to be sent, or raise `RequestRefused` (nothing counted)."""
        with self._lock:
            if self.limit is not None and self.sent >= self.limit:
                self.refused = self.name
                raise RequestRefused(self.name)
            if self.parent is not None:
                try:
                    self.parent.take()
                except RequestRefused as exc:
                    self.refused = exc.limit
                    raise
            self.sent += 1


class MeteredTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that meters, bounds and retries every request to the provider."""

    def __init__(self, meter: RequestMeter | None, attempts: int,
                 on_attempt: Callable[[int, str], None] | None = None) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.meter = meter or RequestMeter()
        self.attempts = max(1, attempts)
        self.on_attempt = on_attempt       # (attempt, why the previous failed): for the log

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()       # sent again on a retry
        for attempt in range(1, self.attempts + 1):
            self.meter.take()
            last = attempt == self.attempts
            try:
                response = await self.inner.handle_async_request(request)
            except (httpx2.TimeoutException, httpx2.NetworkError) as exc:
                if last:
                    raise
                why, wait = type(exc).__name__, _backoff(attempt, None)
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    return await _capped(response, request)
                await response.aread()
                await response.aclose()
                why, wait = f"HTTP {response.status_code}", _backoff(attempt, response.headers.get("retry-after"))
            if self.on_attempt is not None:
                self.on_attempt(attempt + 1, why)
            await asyncio.sleep(wait)
            request = httpx2.Request(request.method, request.url, headers=request.headers, content=body,
                                     extensions=request.extensions)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _capped(response: httpx2.Response, request: httpx2.Request) -> httpx2.Response:
    """The response with its body read, at most `MAX_RESPONSE_BYTES` of it (raw, as sent)."""
    chunks, size = [], 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(f"the model's answer is over {MAX_RESPONSE_BYTES >> 20} MiB; "
                                       "not read further", request=request)
            chunks.append(chunk)
    finally:
        await response.aclose()
    return httpx2.Response(response.status_code, headers=response.headers, content=b"".join(chunks),
                           request=request, extensions=response.extensions)


def _backoff(attempt: int, retry_after: str | None) -> float:
    try:
        asked = float(retry_after) if retry_after else None
    except ValueError:
        asked = None
    base = asked if asked is not None else 0.5 * 2 ** (attempt - 1)
    return min(MAX_BACKOFF, base) * (1 + random.uniform(0, 0.2))


def http_client(config, meter: RequestMeter | None) -> httpx2.AsyncClient:
    """The HTTP client of one model: ``config``'s timeouts and attempts, requests counted by ``meter``."""
    from pydantic_ai.models import create_async_httpx2_client

    return create_async_httpx2_client(timeout=timeouts(config),
                                      transport=MeteredTransport(meter, config.attempts))


def timeouts(config) -> httpx2.Timeout:
    return httpx2.Timeout(config.request_timeout, connect=config.connect_timeout)
