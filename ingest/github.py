"""Pull requests: through GitHub's REST API (PyGithub), or recovered from history.

With `ingest.github = "owner/name"` and a token in `GITHUB_TOKEN`, pull requests are
listed newest-updated first and read until the cursor's `updated_at`, so a run with
nothing new costs one request; each new or updated one is then read whole — changed
files with patches, reviews, review comments and conversation comments — oldest first,
in batches that move the cursor as they are committed. PyGithub follows GitHub's `Link`
paging, waits for the rate limit's reset and backs off on secondary limits (its
`GithubRetry`); a wait is reported on the progress line. It makes no conditional
requests for lists, which is why the listing stops at the cursor instead.

Without a token or a configured repository, pull requests are recovered from the
stored history: merge commits ("Merge pull request #N from …") and squash commits
("Title (#N)").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ingest.git import GitError

BACKOFF_S = 2.0  # GithubRetry's back-off factor: waits of 2, 4, 8 … seconds between tries
MERGE_TITLE = re.compile(r"^Merge pull request #(\d+) from (\S+)")


@dataclass
class Comment:
    id: str  # kind and GitHub's id: review-1, review_comment-2, comment-3
    kind: str  # review, review_comment, comment
    author: str | None
    body: str
    state: str | None = None
    path: str | None = None
    created_at: str | None = None


@dataclass
class PullRequest:
    number: int
    title: str
    body: str
    state: str  # open, closed, merged
    author: str | None
    base: str | None
    head: str | None
    from_fork: bool
    labels: list[str]
    created_at: str | None
    updated_at: str | None
    merged_at: str | None
    merge_sha: str | None
    source: str  # api, history
    files: list[dict[str, Any]] = field(default_factory=list)  # path, status, additions, deletions, patch
    comments: list[Comment] = field(default_factory=list)

    @property
    def merged(self) -> bool:
        return self.merged_at is not None


class GitHubError(GitError):
    """GitHub could not be read; the message says why and what to do."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class GitHubReader:
    """Reads one repository's pull requests through PyGithub."""

    def __init__(self, repo: str, token: str, api: str, on_wait: Callable[[str], None] = lambda note: None):
        from github import Auth, Github, GithubRetry

        self.name = repo
        self._gh = Github(
            auth=Auth.Token(token), base_url=api.rstrip("/"), per_page=100, timeout=30,
            # rate limits: up to 8 tries, waiting for the reset; a dropped network: 2 more tries
            retry=GithubRetry(total=8, connect=2, read=2, backoff_factor=BACKOFF_S), seconds_between_requests=None,
        )
        self._waits = _WaitReporter(on_wait)

    def updated_since(self, cursor: str | None, seen: set[int]) -> list[Any]:
        """Pull requests updated after `cursor` (all without one), oldest first; of those
        updated at `cursor` itself, the ones not in `seen` (read already)."""
        with self._waits, _errors(self.name):
            repo = self._gh.get_repo(self.name)
            found = []
            for pr in repo.get_pulls(state="all", sort="updated", direction="desc"):
                updated = _iso(pr.updated_at) or ""
                if cursor and updated < cursor:
                    break
                if not (updated == cursor and pr.number in seen):
                    found.append(pr)
            return found[::-1]

    def read(self, pr: Any) -> PullRequest:
        """One pull request, whole: files with patches, reviews and both kinds of comments."""
        with self._waits, _errors(self.name):
            head_repo = pr.head.repo.full_name if pr.head and pr.head.repo else None
            base_repo = pr.base.repo.full_name if pr.base and pr.base.repo else self.name
            out = PullRequest(
                number=pr.number, title=pr.title or "", body=pr.body or "",
                state="merged" if pr.merged_at else pr.state, author=pr.user.login if pr.user else None,
                base=pr.base.ref if pr.base else None, head=pr.head.ref if pr.head else None,
                from_fork=head_repo != base_repo, labels=[label.name for label in pr.labels],
                created_at=_iso(pr.created_at), updated_at=_iso(pr.updated_at), merged_at=_iso(pr.merged_at),
                merge_sha=pr.merge_commit_sha, source="api",
            )
            out.files = [
                {"path": f.filename, "status": f.status, "additions": f.additions, "deletions": f.deletions,
                 "previous_path": f.previous_filename, "patch": f.patch or ""}
                for f in pr.get_files()
            ]
            out.comments += [
                Comment(f"review-{r.id}", "review", r.user.login if r.user else None, r.body or "", r.state,
                        None, _iso(r.submitted_at))
                for r in pr.get_reviews()
            ]
            out.comments += [
                Comment(f"review_comment-{c.id}", "review_comment", c.user.login if c.user else None, c.body or "",
                        None, c.path, _iso(c.created_at))
                for c in pr.get_review_comments()
            ]
            out.comments += [
                Comment(f"comment-{c.id}", "comment", c.user.login if c.user else None, c.body or "", None, None,
                        _iso(c.created_at))
                for c in pr.get_issue_comments()
            ]
            return out


def from_history(db: Any, repo: str) -> Iterator[PullRequest]:
    """Pull requests as merge and squash commits on the default branch record them."""
    where = "where repo = ? and pr_number is not null and on_default_branch = 1"
    files: dict[str, list[dict[str, Any]]] = {}
    for f in db.query(f"select sha, path, status, insertions, deletions, old_path from commit_files where repo = ? "
                      f"and sha in (select sha from commits {where}) order by path", [repo, repo]):
        files.setdefault(f["sha"], []).append(
            {"path": f["path"], "status": f["status"], "additions": f["insertions"], "deletions": f["deletions"],
             "previous_path": f["old_path"], "patch": ""})
    rows = db.query(f"select sha, message, author_name, committed_at, parents from commits {where} "
                    "order by committed_at", [repo])
    for row in rows:
        first, _, rest = row["message"].partition("\n")
        merge = MERGE_TITLE.match(first)
        number = int(merge.group(1)) if merge else int(re.search(r"\(#(\d+)\)\s*$", first).group(1))  # type: ignore[union-attr]
        title = (rest.strip().split("\n", 1)[0] or first) if merge else re.sub(r"\s*\(#\d+\)\s*$", "", first)
        yield PullRequest(
            number=number, title=title, body=rest.strip(), state="merged", author=row["author_name"],
            base=None, head=merge.group(2) if merge else None, from_fork=False, labels=[],
            created_at=None, updated_at=row["committed_at"], merged_at=row["committed_at"], merge_sha=row["sha"],
            source="history", files=files.get(row["sha"], []),
        )


@contextmanager
def _errors(repo: str) -> Iterator[None]:
    """GitHub's failures as one clear line each."""
    from github import BadCredentialsException, GithubException, UnknownObjectException
    from requests import RequestException

    try:
        yield
    except BadCredentialsException as e:
        raise GitHubError("GitHub refused the token (401 Bad credentials): set a valid GITHUB_TOKEN") from e
    except UnknownObjectException as e:
        raise GitHubError(f"GitHub has no repository {repo} (404), or the token cannot see it") from e
    except GithubException as e:
        message = e.data.get("message") if isinstance(e.data, dict) else e.data
        raise GitHubError(f"GitHub answered {e.status}: {message}") from e
    except RequestException as e:
        raise GitHubError(f"GitHub's API could not be reached: {type(e).__name__}: {e}") from e


class _WaitReporter(logging.Handler):
    """Turns PyGithub's retry log lines (rate limits, back-off) into progress notes."""

    def __init__(self, on_wait: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.on_wait = on_wait

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        wait = re.search(r"backoff to ([0-9.]+)s|Retrying after ([0-9.]+) seconds", message)
        if wait:
            seconds = float(wait.group(1) or wait.group(2))
            self.on_wait(f"GitHub rate limit or error: waiting {seconds:.0f} s, then trying again")
        elif message.strip():
            self.on_wait(f"GitHub: {message[:100]}")

    def __enter__(self) -> _WaitReporter:
        logger = logging.getLogger("github.GithubRetry")
        logger.addHandler(self)
        logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("github.GithubRetry").removeHandler(self)
