"""GitHub's REST API replayed from a local HTTP server, in the shapes GitHub answers with.

Serves one repository's pull requests with `Link` paging (two per page, so paging is
exercised with few of them), their files, reviews, review comments and conversation
comments, and rate-limit headers. Switches make it answer 401, 404, a primary rate limit
(remaining 0 until a reset a moment away), a secondary one (403 with Retry-After), or
drop the connection from some page on.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

PER_PAGE = 2


@dataclass
class Replay:
    owner: str = "acme"
    repo: str = "widgets"
    pulls: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # number -> files, reviews, ...
    token: str = "ghp_" + "replaytoken0000000000000000000000000000"
    requests: list[str] = field(default_factory=list)
    primary_limit_once: bool = False
    secondary_limit_once: bool = False
    drop_from_page: int | None = None
    base: str = ""

    def add(self, number: int, title: str, updated: str, merged: bool = True, fork: bool = False,
            body: str = "", files: list[dict[str, Any]] | None = None, reviews: list[dict[str, Any]] | None = None,
            review_comments: list[dict[str, Any]] | None = None, comments: list[dict[str, Any]] | None = None,
            merge_sha: str | None = None) -> None:
        url = f"{self.base}/repos/{self.owner}/{self.repo}/pulls/{number}"
        full = f"{self.owner}/{self.repo}"
        self.pulls.append({
            "url": url, "id": 1000 + number, "number": number, "state": "closed" if merged else "open",
            "title": title, "body": body, "user": _user("ada"), "labels": [{"id": 1, "name": "enhancement"}],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": updated,
            "closed_at": updated if merged else None, "merged_at": updated if merged else None,
            "merge_commit_sha": merge_sha or f"{number:040x}", "issue_url": f"{self.base}/repos/{full}/issues/{number}",
            "comments_url": f"{self.base}/repos/{full}/issues/{number}/comments",
            "review_comments_url": f"{url}/comments",
            "head": {"label": f"dev:feature-{number}", "ref": f"feature-{number}", "sha": f"{number:040x}",
                     "user": _user("dev"), "repo": _repo(self.base, "dev/widgets" if fork else full)},
            "base": {"label": "acme:main", "ref": "main", "sha": "0" * 40, "user": _user("acme"),
                     "repo": _repo(self.base, full)},
        })
        self.extras[number] = {"files": files or [], "reviews": reviews or [],
                               "review_comments": review_comments or [], "comments": comments or []}

    def start(self) -> tuple[ThreadingHTTPServer, str]:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                replay.requests.append(self.path)
                replay.serve(self)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{server.server_port}"
        return server, self.base

    # --- answers ------------------------------------------------------------------------

    def serve(self, h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("Authorization", "") != f"token {self.token}" and \
                h.headers.get("Authorization", "") != f"Bearer {self.token}":
            return _send(h, 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
        url = urlparse(h.path)
        page = int(parse_qs(url.query).get("page", ["1"])[0])
        parts = url.path.strip("/").split("/")
        if self.drop_from_page and page >= self.drop_from_page:
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.write(b'[{"url": ')  # then the connection goes away
            h.close_connection = True
            return
        if self.primary_limit_once:
            self.primary_limit_once = False
            return _send(h, 403, {"message": "API rate limit exceeded for user ID 1."},
                         {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 2)})
        if self.secondary_limit_once:
            self.secondary_limit_once = False
            return _send(h, 403, {"message": "You have exceeded a secondary rate limit."}, {"Retry-After": "1"})
        if parts[:3] != ["repos", self.owner, self.repo]:
            return _send(h, 404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
        rest = parts[3:]
        if not rest:
            return _send(h, 200, _repo(self.base, f"{self.owner}/{self.repo}"))
        if rest == ["pulls"]:
            ordered = sorted(self.pulls, key=lambda p: p["updated_at"], reverse=True)
            return self._page(h, url.path, ordered, page)
        if len(rest) == 3 and rest[0] in ("pulls", "issues"):
            kind = {"files": "files", "reviews": "reviews", "comments": "review_comments"}[rest[2]]
            if rest[0] == "issues":
                kind = "comments"
            return self._page(h, url.path, self.extras[int(rest[1])][kind], page)
        return _send(h, 404, {"message": "Not Found"})

    def _page(self, h: BaseHTTPRequestHandler, path: str, items: list[Any], page: int) -> None:
        last = max(1, -(-len(items) // PER_PAGE))
        links = []
        if page < last:
            links.append(f'<{self.base}{path}?page={page + 1}>; rel="next"')
            links.append(f'<{self.base}{path}?page={last}>; rel="last"')
        headers = {"Link": ", ".join(links)} if links else {}
        _send(h, 200, items[(page - 1) * PER_PAGE : page * PER_PAGE], headers)


def _send(h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json; charset=utf-8")
    h.send_header("Content-Length", str(len(data)))
    h.send_header("X-RateLimit-Limit", "5000")
    h.send_header("X-RateLimit-Remaining", (headers or {}).get("X-RateLimit-Remaining", "4999"))
    h.send_header("X-RateLimit-Reset", (headers or {}).get("X-RateLimit-Reset", str(int(time.time()) + 3600)))
    for k, v in (headers or {}).items():
        if not k.startswith("X-RateLimit"):
            h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def _user(login: str) -> dict[str, Any]:
    return {"login": login, "id": abs(hash(login)) % 10_000, "type": "User", "site_admin": False}


def _repo(base: str, full_name: str) -> dict[str, Any]:
    owner, name = full_name.split("/")
    return {"id": abs(hash(full_name)) % 100_000, "name": name, "full_name": full_name, "owner": _user(owner),
            "private": False, "url": f"{base}/repos/{full_name}", "default_branch": "main"}


def review(id: int, author: str, state: str, body: str, at: str = "2026-01-02T00:00:00Z") -> dict[str, Any]:
    return {"id": id, "user": _user(author), "body": body, "state": state, "submitted_at": at}


def review_comment(id: int, author: str, path: str, body: str) -> dict[str, Any]:
    return {"id": id, "user": _user(author), "body": body, "path": path, "created_at": "2026-01-02T00:00:00Z"}


def comment(id: int, author: str, body: str) -> dict[str, Any]:
    return {"id": id, "user": _user(author), "body": body, "created_at": "2026-01-02T00:00:00Z"}


def changed(path: str, patch: str, additions: int = 1, deletions: int = 0) -> dict[str, Any]:
    return {"sha": "1" * 40, "filename": path, "status": "modified", "additions": additions,
            "deletions": deletions, "changes": additions + deletions, "patch": patch}
