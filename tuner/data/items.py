"""What ingest stored, read back as the items training data is made from.

Only trusted items (commits on the default branch, merged pull requests not from forks,
unless `ingest.include_untrusted`), only what is not stale (files and docs at the
current head), each with the ids of its chunks and the newest chunk's rowid: an item is
new when that rowid is past the ingest cursor the promoted adapter was trained to.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite_utils


@dataclass
class Chunks:
    ids: list[str] = field(default_factory=list)
    lines: list[int | None] = field(default_factory=list)  # each one's first line in its source
    newest: int = 0  # the highest rowid among them

    def at(self, line: int) -> list[str]:
        """The chunk holding `line` of the source (all of them when lines are not known)."""
        known = sorted((start, cid) for cid, start in zip(self.ids, self.lines, strict=True) if start is not None)
        before = [cid for start, cid in known if start <= line]
        return before[-1:] or list(self.ids)


@dataclass
class FileStat:
    path: str
    status: str
    insertions: int | None
    deletions: int | None


@dataclass
class CommitItem:
    sha: str
    author: str
    date: str
    message: str
    files: list[FileStat]
    insertions: int
    deletions: int
    pr_number: int | None
    chunks: Chunks

    @property
    def title(self) -> str:
        return self.message.split("\n", 1)[0].strip()

    @property
    def body(self) -> str:
        return self.message.split("\n", 1)[1].strip() if "\n" in self.message else ""


@dataclass
class Comment:
    kind: str  # review, review_comment, comment
    author: str | None
    body: str
    state: str | None
    path: str | None
    created_at: str | None


@dataclass
class BranchCommit:
    sha: str
    date: str
    title: str
    files: int


@dataclass
class PullItem:
    number: int
    title: str
    body: str
    state: str
    author: str | None
    base: str | None
    head: str | None
    merged_at: str | None
    files: list[dict[str, Any]]
    comments: list[Comment]
    chunks: Chunks
    branch: list[BranchCommit] | None = None  # the merged branch's commits, oldest first; None: not known


@dataclass
class DocItem:
    kind: str  # file, doc, wiki
    path: str
    sha: str
    text: str
    date: str  # of the head commit it was read at ("" when that commit is not stored)
    chunks: Chunks
    changed: str = ""  # when a stored commit last changed it ("" when none did)


class Items:
    """The trusted, current items of one repository in the store."""

    def __init__(self, db: sqlite_utils.Database, repo: str):
        self.db = db
        self.repo = repo
        self._chunks: dict[tuple[Any, ...], Chunks] = {}
        self._parents: dict[str, tuple[tuple[str, ...], str, str, int]] | None = None
        for kind, sha, number, path, cid, start, rowid in db.execute(
            "select kind, sha, pr_number, path, id, start_line, rowid from chunks "
            "where repo = ? and stale = 0 and trusted = 1 order by rowid", [repo],
        ):
            key = ("commit", sha) if kind == "commit" else ("pull_request", number) if kind == "pull_request" \
                else (kind, path, sha)
            entry = self._chunks.setdefault(key, Chunks())
            entry.ids.append(cid)
            entry.lines.append(start)
            entry.newest = rowid

    def cursor(self) -> int:
        """The ingest cursor of this data: the newest chunk's rowid."""
        return int(self.db.execute("select coalesce(max(rowid), 0) from chunks where repo = ?", [self.repo])
                   .fetchone()[0])

    def commits(self) -> Iterator[CommitItem]:
        files: dict[str, list[FileStat]] = {}
        for sha, path, status, ins, dels in self.db.execute(
            "select sha, path, status, insertions, deletions from commit_files where repo = ? order by sha, path",
            [self.repo],
        ):
            files.setdefault(sha, []).append(FileStat(path, status, ins, dels))
        for sha, author, date, message, ins, dels, number in self.db.execute(
            "select sha, author_name, committed_at, message, insertions, deletions, pr_number from commits "
            "where repo = ? and trusted = 1 order by committed_at, sha", [self.repo],
        ):
            chunks = self._chunks.get(("commit", sha))
            if chunks:
                yield CommitItem(sha, author, date, message, files.get(sha, []), ins, dels, number, chunks)

    def pull_requests(self) -> Iterator[PullItem]:
        comments: dict[int, list[Comment]] = {}
        for number, kind, author, body, state, path, created in self.db.execute(
            "select pr_number, kind, author, body, state, path, created_at from pr_comments where repo = ? "
            "order by created_at, id", [self.repo],
        ):
            comments.setdefault(number, []).append(Comment(kind, author, body, state, path, created))
        for row in self.db.execute(
            "select number, title, body, state, author, base, head, merged_at, files, merge_sha from pull_requests "
            "where repo = ? and trusted = 1 order by number", [self.repo],
        ):
            number, title, body, state, author, base, head, merged_at, files, merge_sha = row
            chunks = self._chunks.get(("pull_request", number))
            if chunks:
                yield PullItem(number, title, body, state, author, base, head, merged_at, json.loads(files or "[]"),
                               comments.get(number, []), chunks, self.branch(merge_sha) if merge_sha else None)

    def branch(self, merge_sha: str, mainline: int = 2000, most: int = 250) -> list[BranchCommit] | None:
        """The commits a merge commit brought in (reachable from its second parent, not from
        its first, looked for among the first parent's `mainline` nearest ancestors), oldest
        first; None for a commit that is not a stored two-parent merge, or a branch longer
        than `most` commits."""
        graph = self._graph()
        parents = graph.get(merge_sha, ((), "", "", 0))[0]
        if len(parents) != 2:
            return None
        seen = _ancestors(graph, parents[0], mainline)
        out: dict[str, BranchCommit] = {}
        todo = [parents[1]]
        while todo:
            sha = todo.pop()
            if sha in seen or sha in out or sha not in graph:
                continue
            if len(out) >= most:
                return None
            parents_of, date, title, files = graph[sha]
            out[sha] = BranchCommit(sha, date, title, files)
            todo.extend(parents_of)
        return sorted(out.values(), key=lambda c: (c.date, c.sha))

    def _graph(self) -> dict[str, tuple[tuple[str, ...], str, str, int]]:
        if self._parents is None:
            self._parents = {
                sha: (tuple(parents.split()), date, message.split("\n", 1)[0], files)
                for sha, parents, date, message, files in self.db.execute(
                    "select sha, parents, committed_at, message, files_changed from commits where repo = ?",
                    [self.repo])
            }
        return self._parents

    def documents(self) -> Iterator[DocItem]:
        changed = dict(self.db.execute(
            "select f.path, max(c.committed_at) from commit_files f "
            "join commits c on c.repo = f.repo and c.sha = f.sha where f.repo = ? group by f.path",
            [self.repo]).fetchall())
        for kind, path, sha, text, date in self.db.execute(
            "select d.kind, d.path, d.sha, d.text, coalesce(c.committed_at, '') from documents d "
            "left join commits c on c.repo = d.repo and c.sha = d.at_commit "
            "where d.repo = ? and d.stale = 0 order by d.kind, d.path", [self.repo],
        ):
            chunks = self._chunks.get((kind, path, sha))
            if chunks:
                yield DocItem(kind, path, sha, text, date, chunks, changed.get(path) or "")

    def raw_chunks(self) -> Iterator[tuple[str, str, str, int]]:
        """(id, kind, text, rowid) of every current, trusted chunk."""
        yield from self.db.execute(
            "select id, kind, text, rowid from chunks where repo = ? and stale = 0 and trusted = 1 order by rowid",
            [self.repo],
        )


def _ancestors(graph: dict[str, tuple[tuple[str, ...], str, str, int]], start: str, most: int) -> set[str]:
    seen: set[str] = set()
    todo = deque([start])
    while todo and len(seen) < most:
        sha = todo.popleft()
        if sha in seen or sha not in graph:
            continue
        seen.add(sha)
        todo.extend(graph[sha][0])
    return seen
