"""A stand-in for the Anthropic Messages API that plays a script of replies.

It speaks only what a coding-agent CLI needs to finish a task: ``POST
/v1/messages`` (streamed as Server-Sent Events or as one JSON body) and
``POST /v1/messages/count_tokens``. Every request is recorded (method, path,
headers, body) so a test can check what the CLI sent, key header included.

Requests that offer tools are the agent's turns: each takes the next reply of
the script (a tool call, then a final text, ...). Side requests without tools
(titles, summaries) get a short text and leave the script where it is.

Stdlib only, so it runs in the sandbox image with its python3::

    python3 model_standin.py --port 8080 --script /standin/script.json --record /out/requests.jsonl

or in-process on loopback (``with ModelStandin(replies) as server: server.url``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODEL = "claude-standin"
AFTER_SCRIPT = [{"type": "text", "text": "The scripted conversation is over."}]
SIDE_REPLY = [{"type": "text", "text": "ok"}]


def text_reply(text: str) -> dict:
    """A reply that ends the agent's turn with ``text``."""
    return {"content": [{"type": "text", "text": text}]}


def tool_reply(name: str, tool_input: dict, text: str = "") -> dict:
    """A reply that asks the agent to run tool ``name`` with ``tool_input``."""
    content = [{"type": "text", "text": text}] if text else []
    return {"content": [*content, {"type": "tool_use", "name": name, "input": tool_input}]}


class Script:
    """The replies to play, in order, to the requests that offer tools."""

    def __init__(self, replies: list[dict]):
        self.replies = list(replies)
        self.played = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def next_content(self, request: dict) -> list[dict]:
        with self._lock:
            if not request.get("tools"):
                content = SIDE_REPLY
            elif self.played < len(self.replies):
                content = self.replies[self.played]["content"]
                self.played += 1
            else:
                content = AFTER_SCRIPT
            blocks = []
            for block in content:
                block = dict(block)
                if block["type"] == "tool_use":
                    block.setdefault("id", f"toolu_standin_{next(self._ids):04d}")
                blocks.append(block)
            return blocks


def message(content: list[dict], message_id: str) -> dict:
    stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return {"id": message_id, "type": "message", "role": "assistant", "model": MODEL, "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 8, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def sse_events(content: list[dict], message_id: str) -> list[tuple[str, dict]]:
    """The event stream the Messages API sends for a message with ``content``."""
    whole = message(content, message_id)
    start = dict(whole, content=[], stop_reason=None, usage=dict(whole["usage"], output_tokens=1))
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": start}),
                                      ("ping", {"type": "ping"})]
    for index, block in enumerate(content):
        if block["type"] == "text":
            head, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
        else:
            head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [("content_block_start", {"type": "content_block_start", "index": index, "content_block": head}),
                   ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
                   ("content_block_stop", {"type": "content_block_stop", "index": index})]
    events += [("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
                                  "usage": {"output_tokens": 8}}),
               ("message_stop", {"type": "message_stop"})]
    return events


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # records replace the access log
        pass

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        entry = {"method": self.command, "path": self.path,
                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        self.server.note(entry)
        return entry

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        entry = self._record()
        path = self.path.split("?")[0]
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        if path == "/v1/messages/count_tokens":
            return self._json(200, {"input_tokens": 100})
        if path != "/v1/messages":
            return self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
        content = self.server.script.next_content(body)
        message_id = f"msg_standin_{self.server.count:04d}"
        if not body.get("stream"):
            return self._json(200, message(content, message_id))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in sse_events(content, message_id):
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        self._record()
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

    do_HEAD = do_DELETE = do_PUT = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, script: Script, record: Path | None):
        super().__init__(address, _Handler)
        self.script, self.record_path = script, record
        self.records: list[dict] = []
        self.count = 0
        self._lock = threading.Lock()

    def note(self, entry: dict) -> None:
        with self._lock:
            self.count += 1
            self.records.append(entry)
            if self.record_path is not None:
                with open(self.record_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")


class ModelStandin:
    """The stand-in on a loopback port, in a thread, for the length of a ``with`` block."""

    def __init__(self, replies: list[dict], host: str = "127.0.0.1", port: int = 0):
        self._server = _Server((host, port), Script(replies), None)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def records(self) -> list[dict]:
        return list(self._server.records)

    def __enter__(self) -> "ModelStandin":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--script", type=Path, required=True, help="JSON list of replies")
    parser.add_argument("--record", type=Path, help="append each request here as a JSON line")
    args = parser.parse_args(argv)
    replies = json.loads(args.script.read_text())
    server = _Server((args.host, args.port), Script(replies), args.record)
    print(f"model stand-in listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
