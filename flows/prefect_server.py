"""``python -m flows.prefect_server --host H --port P``: Prefect's server, as ``prefect server start`` runs it,
with one change for SQLite.

On SQLite, concurrent writes often fail with "database is locked"; Prefect's
server answers 503 and its client then waits 2 s, 4 s, ... before retrying,
which is what made parallel agent subflows start seconds apart. Here every
503 without a ``Retry-After`` gets a short one (0.1-0.4 s), which the Prefect
client honours: the same retry, without the long back-off.

The UI is served at ``/`` (and the newer one at ``/v2``) and is told that the
API lives on this host and port, not on Prefect's default 4200.
"""

from __future__ import annotations

import argparse
import os
import random


class RetrySoon:
    """ASGI middleware: add a short ``Retry-After`` to 503 responses that have none."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_retry_after(message):
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", f"{random.uniform(0.1, 0.4):.2f}".encode()))
                    message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_retry_after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args()
    # The UI asks /ui-settings where the API is; Prefect's default is port 4200, not ours.
    # Settings are read when prefect is imported, so they go into the environment first.
    os.environ["PREFECT_SERVER_API_HOST"], os.environ["PREFECT_SERVER_API_PORT"] = args.host, str(args.port)
    if not (os.environ.get("PREFECT_UI_API_URL") or os.environ.get("PREFECT_SERVER_UI_API_URL")):
        os.environ["PREFECT_SERVER_UI_API_URL"] = f"http://{args.host}:{args.port}/api"
    import uvicorn
    from prefect.server.api.server import create_app

    uvicorn.run(RetrySoon(create_app(final=True)), host=args.host, port=args.port, log_level="warning",
                timeout_keep_alive=5, ws_ping_interval=20.0, ws_ping_timeout=20.0)


if __name__ == "__main__":
    main()
