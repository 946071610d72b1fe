"""Bounds mitmproxy 11.0.x does not have: the size of an HTTP/1 request head, and what a client
sends while its request waits for the response (inside the gateway container only).

mitmproxy buffers a request head until it ends (``FIXME: protect against header size DoS``
in ``proxy/layers/http/_http1.py``) and keeps whatever a client pipelines meanwhile, so one
request line of hundreds of megabytes is held in memory. :func:`install` wraps
``Http1Server._handle_event``: a head not ended within ``max_head`` bytes, or more than
that pipelined, is answered with 431 and the connection closed; ``on_refusal`` is told (with
the connection) so the record names the agent. A request head mitmproxy cannot parse is
told too: it never becomes a flow, so no other hook sees it.
"""

from __future__ import annotations

import re
from typing import Callable

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

_HEAD_END = re.compile(rb"\n\r?\n")
MALFORMED: set[int] = set()     # ids of requests whose head mitmproxy refused with 400


def install(max_head: int, on_refusal: Callable[[object, int, str], None]) -> None:
    """Bound every HTTP/1 request head to ``max_head`` bytes (idempotent)."""
    server = _http1.Http1Server
    original = getattr(server, "_ultrawork_original", None) or server._handle_event

    def _handle_event(self, event):
        state = getattr(self.state, "__func__", None)
        reading = state is server.read_headers
        waiting = state is server.wait
        if isinstance(event, events.DataReceived) and (reading or waiting):
            pending = len(self.buf) + len(event.data)
            if pending > max_head:
                head = bytes(self.buf)[:max_head + 4] + event.data[:max_head + 4]
                if waiting or not _HEAD_END.search(head[:max_head + 2]):
                    why = (f"request head over {max_head} bytes" if reading
                           else f"over {max_head} bytes sent before the response")
                    yield commands.SendData(self.conn, _http1.make_error_response(
                        431, f"ultrawork gateway: {why}"))
                    yield commands.CloseConnection(self.conn)
                    self.state = self.done
                    on_refusal(self.conn, 431, why)
                    return
        if not (isinstance(event, events.DataReceived) and reading):
            return (yield from original(self, event))
        for command in original(self, event):
            if isinstance(command, commands.SendData) and command.data.startswith(b"HTTP/1.1 400"):
                if self.request is None:
                    on_refusal(self.conn, 400, "malformed request head")
                else:                   # a flow follows: its error hook records it as refused
                    MALFORMED.add(id(self.request))
            yield command

    server._ultrawork_original = original
    server._handle_event = _handle_event
