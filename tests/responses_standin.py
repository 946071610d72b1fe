"""A stand-in for the OpenAI Responses API (what Codex calls) that plays a script of turns.

Stdlib only, so it runs in the sandbox image's python3 (``tests/test_agent_cli_gateway.py``
serves it over TLS as ``api.openai.com``). ``POST /v1/responses`` is answered as a
Server-Sent Events stream; every request is recorded (method, path, headers, body).

A turn of the script is ``{"shell": "a command line"}`` (a call of whichever shell tool
the request offers: Codex's code-mode ``exec`` (JavaScript calling ``tools.exec_command``),
``shell_command``, ``exec_command`` or ``shell``) or ``{"text": "..."}`` (the final answer).
Tools are offered in ``tools`` or, as Codex 0.171 does, in an ``additional_tools`` input
item of namespaces. Requests that offer no tools (titles, summaries) get a short text and
leave the script where it is.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["Path", "Script", "_Server"]


def offered_tools(request: dict) -> list[dict]:
    """Every tool a request offers, namespaces flattened."""
    found: list[dict] = []
    pending = list(request.get("tools") or [])
    for item in request.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            pending += item.get("tools") or []
    while pending:
        tool = pending.pop(0)
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            pending += tool.get("tools") or []
        elif isinstance(tool, dict):
            found.append(tool)
    return found


def _shell_call(tools: list[dict], command: str, call_id: str) -> dict:
    names = {t.get("name") for t in tools if isinstance(t, dict)}
    if "exec" in names:    # code mode: JavaScript that calls the nested shell tool
        source = f"const r = await tools.exec_command({{cmd: {json.dumps(command)}}});\ntext(r);\n"
        return {"type": "custom_tool_call", "id": f"ctc_{call_id}", "call_id": call_id, "name": "exec",
                "input": source, "status": "completed"}
    if "shell_command" in names:
        name, args = "shell_command", {"command": command}
    elif "exec_command" in names:
        name, args = "exec_command", {"cmd": command}
    else:
        name, args = "shell", {"command": ["bash", "-lc", command]}
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": name,
            "arguments": json.dumps(args), "status": "completed"}


def _message(text: str, n: int) -> dict:
    return {"type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


class Script:
    def __init__(self, turns: list[dict]):
        self.turns, self.played = list(turns), 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def next_items(self, request: dict) -> list[dict]:
        with self._lock:
            n = next(self._ids)
            tools = offered_tools(request)
            if not tools:
                return [_message("ok", n)]
            if self.played >= len(self.turns):
                return [_message("The scripted conversation is over.", n)]
            turn = self.turns[self.played]
            self.played += 1
            if "shell" in turn:
                return [_shell_call(tools, turn["shell"], f"call_{n}")]
            return [_message(turn["text"], n)]


def sse_events(items: list[dict], response_id: str, model: str) -> list[dict]:
    base = {"id": response_id, "object": "response", "model": model, "created_at": 0}
    events: list[dict] = [{"type": "response.created", "response": {**base, "status": "in_progress", "output": []}}]
    for index, item in enumerate(items):
        events.append({"type": "response.output_item.added", "output_index": index,
                       "item": {**item, "status": "in_progress"}})
        if item["type"] == "message":
            events.append({"type": "response.output_text.delta", "output_index": index, "content_index": 0,
                           "item_id": item["id"], "delta": item["content"][0]["text"]})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    usage = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 8,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 20}
    events.append({"type": "response.completed",
                   "response": {**base, "status": "completed", "output": items, "usage": usage}})
    return events


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
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
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        if self.path.split("?")[0] != "/v1/responses":
            return self._json(404, {"error": {"message": f"no {self.path} here", "type": "invalid_request_error"}})
        items = self.server.script.next_items(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in sse_events(items, f"resp_{self.server.count:04d}", body.get("model", "standin")):
            self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        self._record()
        if self.path.split("?")[0] == "/v1/models":
            return self._json(200, {"object": "list", "data": []})
        self._json(404, {"error": {"message": f"no {self.path} here", "type": "invalid_request_error"}})

    do_HEAD = do_DELETE = do_PUT = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, script: Script, record: Path | None):
        super().__init__(address, _Handler)
        self.script, self.record_path = script, record
        self.count = 0
        self._lock = threading.Lock()

    def note(self, entry: dict) -> None:
        with self._lock:
            self.count += 1
            if self.record_path is not None:
                with open(self.record_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
