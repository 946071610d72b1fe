"""A local stand-in for the few GitHub REST endpoints ultrawork calls.

GET /repos/{o}/{r}, GET /repos/{o}/{r}/pulls, POST /repos/{o}/{r}/pulls.
It checks the bearer token and records every request, so tests can count
pull requests and check that the token was only ever sent here.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class GitHubStub:
    def __init__(self, repository: str = "acme/widgets", token: str = "ghp_stubtoken0123456789", default_branch: str = "main"):
        self.repository = repository
        self.token = token
        self.default_branch = default_branch
        self.pulls: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                if auth not in (f"token {stub.token}", f"Bearer {stub.token}"):
                    self._send(401, {"message": "Bad credentials"})
                    return False
                return True

            def do_GET(self):
                stub.requests.append(("GET", self.path))
                if not self._authorized():
                    return
                url = urlparse(self.path)
                path = re.sub(r"^/api/v3", "", url.path)
                if path == f"/repos/{stub.repository}":
                    return self._send(200, stub._repo_json())
                if path == f"/repos/{stub.repository}/pulls":
                    query = parse_qs(url.query)
                    head = query.get("head", [None])[0]
                    found = [p for p in stub.pulls if p["state"] == query.get("state", ["open"])[0]
                             and (head is None or f"{stub.repository.split('/')[0]}:{p['head']['ref']}" == head)]
                    return self._send(200, found)
                self._send(404, {"message": "Not Found"})

            def do_POST(self):
                stub.requests.append(("POST", self.path))
                if not self._authorized():
                    return
                path = re.sub(r"^/api/v3", "", urlparse(self.path).path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if path != f"/repos/{stub.repository}/pulls":
                    return self._send(404, {"message": "Not Found"})
                if any(p["head"]["ref"] == body["head"] and p["state"] == "open" for p in stub.pulls):
                    return self._send(422, {"message": "Validation Failed",
                                            "errors": [{"message": f"A pull request already exists for {body['head']}."}]})
                number = len(stub.pulls) + 1
                pr = {"number": number, "state": "open", "title": body["title"], "body": body.get("body", ""),
                      "html_url": f"http://github.invalid/{stub.repository}/pull/{number}",
                      "url": f"{stub.url}/repos/{stub.repository}/pulls/{number}",
                      "head": {"ref": body["head"], "label": body["head"]}, "base": {"ref": body["base"]}}
                stub.pulls.append(pr)
                self._send(201, pr)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _repo_json(self) -> dict:
        owner, name = self.repository.split("/")
        return {"id": 1, "name": name, "full_name": self.repository, "default_branch": self.default_branch,
                "owner": {"login": owner}, "url": f"{self.url}/repos/{self.repository}"}

    def __enter__(self) -> "GitHubStub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
