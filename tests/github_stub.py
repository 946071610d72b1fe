"""A local stand-in for the few GitHub REST endpoints ultrawork calls.

GET /repos/{o}/{r}, GET /repos/{o}/{r}/pulls, POST /repos/{o}/{r}/pulls; and for a
backlog of issues: GET .../labels/{name}, GET .../issues?labels=, GET .../issues/{n},
GET and POST .../issues/{n}/comments, DELETE .../issues/comments/{id}, PUT .../issues/{n}/labels.
It checks the bearer token and records every request, so tests can count
pull requests and check that the token was only ever sent here.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


class GitHubStub:
    def __init__(self, repository: str = "acme/widgets", token: str = "ghp_stubtoken0123456789", default_branch: str = "main"):
        self.repository = repository
        self.token = token
        self.default_branch = default_branch
        self.pulls: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.labels: set[str] = set()
        self.issues: dict[int, dict] = {}
        self.comments: dict[int, list[dict]] = {}
        self._lock = threading.Lock()
        self._next_comment = 1000
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
                issues_reply = stub._get_issues(path, parse_qs(url.query))
                if issues_reply is not None:
                    return self._send(*issues_reply)
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
                match = re.fullmatch(rf"/repos/{stub.repository}/issues/(\d+)/comments", path)
                if match:
                    return self._send(*stub._add_comment(int(match.group(1)), body.get("body", "")))
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

            def do_PUT(self):
                stub.requests.append(("PUT", self.path))
                if not self._authorized():
                    return
                path = re.sub(r"^/api/v3", "", urlparse(self.path).path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"[]")
                match = re.fullmatch(rf"/repos/{stub.repository}/issues/(\d+)/labels", path)
                if not match or int(match.group(1)) not in stub.issues:
                    return self._send(404, {"message": "Not Found"})
                names = body.get("labels", []) if isinstance(body, dict) else body
                with stub._lock:
                    stub.labels.update(names)          # like GitHub: unknown labels are created
                    stub.issues[int(match.group(1))]["labels"] = sorted(set(names))
                return self._send(200, [stub._label_json(n) for n in sorted(set(names))])

            def do_DELETE(self):
                stub.requests.append(("DELETE", self.path))
                if not self._authorized():
                    return
                path = re.sub(r"^/api/v3", "", urlparse(self.path).path)
                match = re.fullmatch(rf"/repos/{stub.repository}/issues/comments/(\d+)", path)
                if match and stub._delete_comment(int(match.group(1))):
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._send(404, {"message": "Not Found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _repo_json(self) -> dict:
        owner, name = self.repository.split("/")
        return {"id": 1, "name": name, "full_name": self.repository, "default_branch": self.default_branch,
                "owner": {"login": owner}, "url": f"{self.url}/repos/{self.repository}"}

    # --- issues, labels and comments (the backlog) ---

    def add_issue(self, title: str, body: str = "", labels: tuple[str, ...] = ()) -> int:
        number = len(self.issues) + len(self.pulls) + 1
        self.issues[number] = {"number": number, "title": title, "body": body, "labels": list(labels),
                               "state": "open"}
        self.comments[number] = []
        return number

    def _label_json(self, name: str) -> dict:
        return {"name": name, "color": "ededed", "url": f"{self.url}/repos/{self.repository}/labels/{name}"}

    def _issue_json(self, number: int) -> dict:
        issue = self.issues[number]
        return {"id": 10_000 + number, "number": number, "title": issue["title"], "body": issue["body"],
                "state": issue["state"], "labels": [self._label_json(n) for n in issue["labels"]],
                "comments": len(self.comments[number]),
                "url": f"{self.url}/repos/{self.repository}/issues/{number}",
                "html_url": f"http://github.invalid/{self.repository}/issues/{number}"}

    def _get_issues(self, path: str, query: dict) -> tuple[int, object] | None:
        base = f"/repos/{self.repository}"
        if path.startswith(f"{base}/labels/"):
            name = unquote(path[len(f"{base}/labels/"):])
            return (200, self._label_json(name)) if name in self.labels else (404, {"message": "Not Found"})
        if path == f"{base}/issues":
            wanted = [n for n in query.get("labels", [""])[0].split(",") if n]
            state = query.get("state", ["open"])[0]
            found = [self._issue_json(n) for n, i in sorted(self.issues.items())
                     if (state == "all" or i["state"] == state) and all(w in i["labels"] for w in wanted)]
            return 200, found
        match = re.fullmatch(rf"{base}/issues/(\d+)(/comments)?", path)
        if match:
            number = int(match.group(1))
            if number not in self.issues:
                return 404, {"message": "Not Found"}
            if match.group(2):
                with self._lock:
                    return 200, list(self.comments[number])
            return 200, self._issue_json(number)
        return None

    def _add_comment(self, number: int, body: str) -> tuple[int, dict]:
        if number not in self.issues:
            return 404, {"message": "Not Found"}
        with self._lock:
            self._next_comment += 1
            cid = self._next_comment
            comment = {"id": cid, "body": body, "user": {"login": "ultrawork-bot"},
                       "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                       "url": f"{self.url}/repos/{self.repository}/issues/comments/{cid}",
                       "html_url": f"http://github.invalid/{self.repository}/issues/{number}#issuecomment-{cid}",
                       "issue_url": f"{self.url}/repos/{self.repository}/issues/{number}"}
            self.comments[number].append(comment)
        return 201, comment

    def _delete_comment(self, cid: int) -> bool:
        with self._lock:
            for comments in self.comments.values():
                for i, c in enumerate(comments):
                    if c["id"] == cid:
                        del comments[i]
                        return True
        return False

    def __enter__(self) -> "GitHubStub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
