"""A stand-in for the OpenAI Chat Completions API on 127.0.0.1, for tests of the model agent.

It plays a script of replies in order -- tool calls with their arguments, then a
final answer -- and records every request (path, headers, JSON body) so a test
can check what the client sent, the Authorization header included (header names lower-cased). Only the
non-streaming ``POST /v1/chat/completions`` the OpenAI client sends is spoken;
anything else gets a 404, and a request past the end of the script a 500.

    with OpenAIStandIn([tool_call("read_file", path="README.md"), final_answer("done")]) as server:
        ModelAgentConfig(provider="openai", base_url=server.base_url, api_key=..., model="standin")
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted model response: tool calls (name, arguments) and/or text, with its token usage."""

    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    text: str | None = None
    prompt_tokens: int = 100
    completion_tokens: int = 20
    status: int = 200   # another status answers with an error whose message is ``text``, where
                        # "{authorization}" becomes the request's Authorization header (a server echoing it)


def tool_call(name: str, prompt_tokens: int = 100, completion_tokens: int = 20, **arguments: Any) -> Reply:
    return Reply([(name, arguments)], prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def final_answer(summary: str, files_changed: list[str] | None = None, findings: list[str] | None = None,
                 prompt_tokens: int = 100, completion_tokens: int = 20) -> Reply:
    """The model's structured answer: a call of the agent's output tool."""
    return tool_call("final_answer", prompt_tokens, completion_tokens, summary=summary,
                     files_changed=files_changed or [], findings=findings or [])


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class OpenAIStandIn:
    """The server; a context manager that starts it on a free loopback port and stops it."""

    def __init__(self, script: list[Reply], model: str = "standin-model") -> None:
        self.script = list(script)
        self.model = model
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "OpenAIStandIn":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:   # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = standin._answer(self.path, headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="openai-standin", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _answer(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(RecordedRequest(path, headers, body))
            if path.rstrip("/") != "/v1/chat/completions":
                return 404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}
            if body.get("stream"):
                return 400, {"error": {"message": "the stand-in answers non-streaming requests only",
                                       "type": "invalid_request_error"}}
            turn = sum(1 for r in self.requests if r.path.rstrip("/") == "/v1/chat/completions")
            if turn > len(self.script):
                return 500, {"error": {"message": f"script has {len(self.script)} replies; request {turn} "
                                                  "is past its end", "type": "server_error"}}
            reply = self.script[turn - 1]
        if reply.status != 200:
            message = (reply.text or "error").replace("{authorization}", headers.get("authorization", ""))
            return reply.status, {"error": {"message": message, "type": "invalid_request_error"}}
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{turn}_{i}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(arguments)}}
                for i, (name, arguments) in enumerate(reply.tool_calls)]
        return 200, {
            "id": f"chatcmpl-standin-{turn}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        }

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.rstrip("/") == "/v1/chat/completions"]
