"""``python -m ultrawork.local_server.process --host H --port P``: Prefect's server, as ``prefect server start`` runs it,
with one change for SQLite.

On SQLite, concurrent writes often fail with "database is locked"; Prefect's
server answers 503 and its client then waits 2 s, 4 s, ... before retrying,
which is what made parallel agent subflows start seconds apart. Here every
503 is replayed inside the server a few milliseconds later (``RetrySoon``), so
the client sees the answer of the attempt that got the lock, not a 503 and a
back-off; parallel agent subflows then start together.

The UI is served at ``/`` (and the newer one at ``/v2``) and is told that the
API lives on this host and port, not on Prefect's default 4200. It listens on a
loopback address only; with ``PREFECT_SERVER_API_AUTH_STRING`` set (ultrawork
always sets it) every API request but ``/health`` needs that string.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import threading
import time


class RetrySoon:
    """ASGI middleware: a request the app answers with 503 (SQLite busy; nothing was written)
    is replayed here after a few milliseconds, up to ``budget`` seconds, instead of sending
    the client into its back-off. A 503 that outlasts the budget goes out with a short
    ``Retry-After`` (0.1-0.4 s), which the Prefect client honours."""

    def __init__(self, app, budget: float = 5.0):
        self.app = app
        self.budget = budget

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = b""
        while True:                                   # the whole request body, to replay it
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        deadline = time.monotonic() + self.budget
        delay = 0.005
        while True:
            last_try = time.monotonic() + delay >= deadline
            held: list[dict] = []
            state = {"busy": False}

            async def send_or_hold(message, held=held, state=state, last_try=last_try):
                if message["type"] == "http.response.start" and message["status"] == 503:
                    if not last_try:
                        state["busy"] = True
                        return
                    headers = list(message.get("headers", []))
                    if not any(k.lower() == b"retry-after" for k, _ in headers):
                        headers.append((b"retry-after", f"{random.uniform(0.1, 0.4):.2f}".encode()))
                        message = {**message, "headers": headers}
                if state["busy"]:
                    return                            # the body of a 503 that is replayed
                await send(message)

            request = [{"type": "http.request", "body": body, "more_body": False}]
            try:
                attempt = {**scope, "state": dict(scope.get("state", {}))}   # routing rewrites its scope
                await self.app(attempt, _replay(request, receive), send_or_hold)
            except Exception:
                if not state["busy"]:    # Starlette re-raises the error it answered 503 for
                    raise
            if not state["busy"]:
                return
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 1.5, 0.05)


def _replay(messages: list[dict], receive):
    """An ASGI ``receive`` that gives ``messages`` first, then what the client sends."""
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()
    return replay


def write_transactions_wait_their_turn() -> None:
    """Begin Prefect's SQLite write transactions IMMEDIATE (its default is DEFERRED).

    A DEFERRED transaction that reads, then writes after another writer committed,
    fails at once with SQLITE_BUSY_SNAPSHOT (SQLite's busy timeout does not apply to
    it): the 503s of parallel subflows. IMMEDIATE takes the write lock when the
    transaction begins, so concurrent writers queue on the busy timeout instead
    (Prefect's own comment in ``setup_sqlite`` names this fix). Reads outside
    transactions are unchanged; WAL keeps them concurrent with the writer.
    """
    from prefect.server.database.configurations import AioSqliteConfiguration

    begin = AioSqliteConfiguration.begin_transaction
    if getattr(begin, "ultrawork_immediate", False):
        return

    def begin_immediate(self, session, with_for_update: bool = False):
        return begin(self, session, with_for_update=True)

    begin_immediate.ultrawork_immediate = True
    AioSqliteConfiguration.begin_transaction = begin_immediate


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warm_when_up(host: str, port: int, timeout: float = 120.0) -> threading.Thread:
    """Make the server's first API request itself, as soon as it answers.

    Prefect's app builds its routes' state on the first request (~0.6 s); paid here, it overlaps
    whatever the command that started the server still does before its first call."""
    import base64
    import urllib.request

    base = f"http://{'[::1]' if host == '::1' else host}:{port}/api"
    auth = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}

    def warm() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                urllib.request.urlopen(urllib.request.Request(f"{base}/admin/version", headers=headers),
                                       timeout=30).close()
                return
            except OSError:
                time.sleep(0.05)

    thread = threading.Thread(target=warm, name="warm", daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address: the API is for this machine only")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--home", help="the server's home (PREFECT_HOME); on the command line so that "
                                       "ultrawork finds its server by it")
    args = parser.parse_args()
    if args.host not in LOOPBACK:
        parser.error(f"--host must be a loopback address ({', '.join(LOOPBACK)}), not {args.host!r}")
    if args.home:
        os.environ["PREFECT_HOME"] = args.home
    # The UI asks /ui-settings where the API is; Prefect's default is port 4200, not ours.
    # Settings are read when prefect is imported, so they go into the environment first.
    os.environ["PREFECT_SERVER_API_HOST"], os.environ["PREFECT_SERVER_API_PORT"] = args.host, str(args.port)
    if not (os.environ.get("PREFECT_UI_API_URL") or os.environ.get("PREFECT_SERVER_UI_API_URL")):
        os.environ["PREFECT_SERVER_UI_API_URL"] = f"http://{args.host}:{args.port}/api"
    import uvicorn
    from prefect.server.api.server import create_app

    write_transactions_wait_their_turn()
    warm_when_up(args.host, args.port)

    uvicorn.run(RetrySoon(create_app(final=True)), host=args.host, port=args.port, log_level="warning",
                timeout_keep_alive=5, ws_ping_interval=20.0, ws_ping_timeout=20.0)


if __name__ == "__main__":
    main()
