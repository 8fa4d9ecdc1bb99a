"""The ingest sources, each a small named implementation: `git` (history), `github` (pull
requests, see `ingest.github`), `snapshot` (the text files at the head of the default
branch) and `docs` (the docs among them, and the wiki's pages).

A source reads what is new since its cursor, hands the texts to the worker pool
(redaction, chunks) and writes the results in batches, each with the cursor that covers
it. `SOURCES` maps the names `repotune ingest --source` accepts to them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import itertools
import json
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ingest import workers
from ingest.git import Caps, Commit, MissingObjects, Repo, open_repo
from ingest.github import GitHubReader, from_history
from ingest.secrets import is_secret_file
from ingest.store import Batch, Store
from repotune.config import IngestSection
from repotune.db import now

T = TypeVar("T")
BATCH = 200  # items per committed batch: short transactions, little lost to an interruption
_SNIFF = 8000  # bytes looked at for a NUL to call a file binary, as git does
_PAGES = (".md", ".markdown", ".mdx", ".rst", ".txt", ".textile", ".org", ".asciidoc", ".adoc")  # a wiki's pages


@dataclass
class Report:
    items: int = 0  # stored by this run
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    redactions: Counter[str] = field(default_factory=Counter)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "skipped": dict(self.skipped), "redactions": dict(self.redactions),
                "note": self.note}


@dataclass
class Job:
    """What a source needs: the repository, the store, the workers, and where to report."""

    repo: Repo
    store: Store
    pool: workers.Pool
    config: IngestSection
    default_branch: str
    full: bool = False
    github_token: str | None = None
    mirrors: Path = Path(".")
    progress: Callable[[str, int, int | None, str], None] = lambda name, done, total, note: None


    @property
    def caps(self) -> Caps:
        return Caps(self.config.max_file_diff_bytes, self.config.max_commit_diff_bytes)


class Source(Protocol):
    name: str

    def ingest(self, job: Job) -> Report: ...


def _write_all(job: Job, name: str, results: Iterable[workers.Done], report: Report,
               total: int | _Later[int] | None = None,
               cursor_after: Callable[[workers.Done], Any] | None = None) -> None:
    """Write results in batches; with `cursor_after`, each batch also moves the source's cursor."""
    source = name if cursor_after else None

    def of(wait: bool = False) -> int | None:
        return total.get(wait) if isinstance(total, _Later) else total

    batch, n = Batch(), 0
    done = workers.Done()
    for done in results:
        done.complete()
        for table, rows in done.rows.items():
            batch.add(table, *rows)
        report.redactions.update(done.redactions)
        n += 1
        if n % BATCH == 0:
            job.store.write(batch, source, cursor_after(done) if cursor_after else None)
            batch = Batch()
            job.progress(name, n, of(), "")
    if len(batch):
        job.store.write(batch, source, cursor_after(done) if cursor_after else None)
    job.progress(name, n, of(wait=True), "")  # the last line shows the total
    report.items += n


class GitSource:
    """The history of the configured branches: commits, their files and their diffs."""

    name = "git"

    def ingest(self, job: Job) -> Report:
        report = Report()
        branches = job.config.branches or [job.default_branch]
        heads = job.repo.heads(branches)
        cursor = (job.store.cursor(self.name) or {}) if not job.full else {}
        done = [sha for sha in cursor.get("done", []) if job.repo.has_commit(sha)]
        # Merges read before their file lists were (from their first-parent diff) keep none
        # until a full read: the cursor says whether every merge stored has its files.
        merge_files = not done or bool(cursor.get("merge_files"))
        final = {"heads": heads, "done": sorted(set(heads.values())), "merge_files": merge_files}
        stale = "" if merge_files else (
            "merges read by an earlier version have no file lists: `repotune ingest --full` fills them")
        if set(heads.values()) <= set(done):  # every head read already: no walk of the history
            if cursor != final:
                job.store.write(Batch(), self.name, final)
            report.note = "; ".join(filter(None, ["nothing new", stale]))
            return report
        job.pool.start()  # the workers set themselves up while the rest is read
        # The count is for the progress bar only: it walks the history beside `log`, not before it.
        total = _Later(lambda: job.repo.count(heads.values(), done))
        if list(heads) == [job.default_branch]:
            on_default = None  # every commit `log` gives is reachable from the default branch
        else:
            on_default = set(job.repo.text("rev-list", heads.get(job.default_branch) or job.repo.text(
                "rev-parse", f"refs/heads/{job.default_branch}"), "--not", *done, "--").split())
        caps = job.caps
        # The set of commits on the default branch stays here: sent with each batch, it would be
        # pickled hundreds of times over a long history.
        ctx = workers.Context(repo=job.store.repo, now=now(), caps=caps, trust_all=job.config.include_untrusted)
        job.progress(self.name, 0, None, "")
        try:
            self._run(job, job.repo.log_blocks(list(heads.values()), done, caps), ctx, done, total, report,
                      on_default, merge_files)
        except MissingObjects as e:
            # Read again without the missing blobs; what was written so far stays (upserts).
            report.note = f"objects missing ({e}); their files were skipped"
            done = [sha for sha in (job.store.cursor(self.name) or {}).get("done", done) if job.repo.has_commit(sha)]
            commits = job.repo.log_without(list(heads.values()), done, caps)
            self._run(job, commits, ctx, done, total, report, on_default, merge_files)
        if not report.items and not report.note:  # a head moved back to a commit already read
            report.note = "nothing new"
        report.note = "; ".join(filter(None, [report.note, stale]))
        job.store.write(Batch(), self.name, final)
        return report

    def _run(self, job: Job, commits: Iterator[Commit | tuple[bytes, bool]], ctx: workers.Context,
             done: list[str], total: _Later[int], report: Report, on_default: set[str] | None,
             merge_files: bool) -> None:
        items = ((c, ctx, on_default is None or _sha(c) in on_default) for c in commits)
        finished = (d for batch in job.pool.map(workers.commits, _batches(items, 48)) for d in batch)
        for_report = (_count_skipped(r, report) for r in finished)
        # Parents come before children, so after commit N every ancestor of it is stored too.
        _write_all(job, self.name, for_report, report, total,
                   lambda last: {"done": sorted({*done, last.rows["commits"][0]["sha"]}), "merge_files": merge_files})


class _Later(Generic[T]):
    """A value computed in a thread of its own; `get` does not wait for it unless asked
    (None until then, or if computing it failed)."""

    def __init__(self, compute: Callable[[], T]):
        self._value: T | None = None

        def run() -> None:
            with contextlib.suppress(Exception):
                self._value = compute()

        self._thread = threading.Thread(target=run, name="later", daemon=True)
        self._thread.start()

    def get(self, wait: bool = False) -> T | None:
        if wait:
            self._thread.join()
        return self._value


def _sha(commit: Commit | tuple[bytes, bool]) -> str:
    """A commit's sha, parsed or not (its `git log` block starts with 0x1e and the sha)."""
    return commit.sha if isinstance(commit, Commit) else commit[0][1:41].decode()


def _count_skipped(done: workers.Done, report: Report) -> workers.Done:
    for row in done.rows.get("commit_files", []):
        if row["skipped"]:
            report.skipped[row["skipped"]] += 1
    return done


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


class _HeadFiles(ABC):
    """What `snapshot` and `docs` share: text files of a repository's head as documents,
    written in batches, with what is gone from the head marked stale at the end. Each
    says which trees it reads and which of their files it wants."""

    name = ""
    kinds: tuple[str, ...] = ()

    @abstractmethod
    def heads(self, job: Job) -> list[tuple[Repo, str, str]]:
        """(repository, head commit, kind) of each tree to read."""

    @abstractmethod
    def wants(self, job: Job, path: str, kind: str) -> bool:
        """Whether `path`, in a tree of `kind`, is this source's."""

    def ingest(self, job: Job) -> Report:
        report = Report()
        trees = self.heads(job)
        settings = hashlib.sha256(json.dumps(
            [job.config.skip, job.config.docs, job.config.max_file_bytes, job.config.chunk_tokens]
        ).encode()).hexdigest()[:16]
        cursor = {"heads": [head for _, head, _ in trees], "settings": settings}
        if not job.full and job.store.cursor(self.name) == cursor:
            report.note = "nothing new"
            return report
        job.pool.start()
        docs: list[workers.Document] = []
        for repo, head, kind in trees:
            wanted = self._select(job, repo.files_at(head), kind, report)
            docs += self._read(repo, wanted, head, kind, report)
        job.progress(self.name, 0, len(docs), "")
        ctx = workers.Context(repo=job.store.repo, now=now())
        kept_chunks: set[str] = set()

        def results() -> Iterator[workers.Done]:
            batches = _batches(((d, ctx) for d in docs), 16)
            for done in (d for batch in job.pool.map(workers.documents, batches) for d in batch):
                kept_chunks.update(r["id"] for r in done.rows.get("chunks", []))
                yield done

        _write_all(job, self.name, results(), report, len(docs))
        job.store.mark_stale(self.kinds, {d.path for d in docs}, kept_chunks)
        job.store.write(Batch(), self.name, cursor)
        return report

    def _select(self, job: Job, files: list[tuple[str, str, int]], kind: str,
                report: Report) -> list[tuple[str, str]]:
        wanted = []
        for path, blob, size in files:
            if not self.wants(job, path, kind):
                continue
            if is_secret_file(path):
                report.skipped["secret file"] += 1
                report.redactions["secret-file"] += 1
            elif _matches(path, job.config.skip):
                report.skipped["skipped by ingest.skip"] += 1
            elif size < 0:
                report.skipped["missing object"] += 1
            elif size > job.config.max_file_bytes:
                report.skipped["larger than ingest.max_file_bytes"] += 1
            else:
                wanted.append((path, blob))
        return wanted

    def _read(self, repo: Repo, wanted: list[tuple[str, str]], head: str, kind: str,
              report: Report) -> Iterator[workers.Document]:
        by_blob: dict[str, list[str]] = {}
        for path, blob in wanted:
            by_blob.setdefault(blob, []).append(path)
        for blob, data in repo.blobs(list(by_blob)):
            for path in by_blob[blob]:
                if data is None:
                    report.skipped["missing object"] += 1
                elif b"\0" in data[:_SNIFF]:
                    report.skipped["binary"] += 1
                else:
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError:
                        report.skipped["not UTF-8 text"] += 1
                        continue
                    yield workers.Document(kind, path, blob, text, head)


class SnapshotSource(_HeadFiles):
    """The text files at the head of the default branch, docs aside."""

    name = "snapshot"
    kinds = ("file",)

    def heads(self, job: Job) -> list[tuple[Repo, str, str]]:
        return [(job.repo, job.repo.heads([job.default_branch])[job.default_branch], "file")]

    def wants(self, job: Job, path: str, kind: str) -> bool:
        return not _matches(path, job.config.docs)


class DocsSource(_HeadFiles):
    """Docs: the files `ingest.docs` names at the head, and the pages of `ingest.wiki`."""

    name = "docs"
    kinds = ("doc", "wiki")

    def heads(self, job: Job) -> list[tuple[Repo, str, str]]:
        trees = [(job.repo, job.repo.heads([job.default_branch])[job.default_branch], "doc")]
        if job.config.wiki:
            wiki = open_repo(job.config.wiki, job.mirrors)
            trees.append((wiki, wiki.heads([wiki.default_branch()])[wiki.default_branch()], "wiki"))
        return trees

    def wants(self, job: Job, path: str, kind: str) -> bool:
        return path.lower().endswith(_PAGES) if kind == "wiki" else _matches(path, job.config.docs)


def _matches(path: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, g) for g in globs)


class GitHubSource:
    """Pull requests with their reviews and comments: the API, or what history records."""

    name = "github"

    def ingest(self, job: Job) -> Report:
        report = Report()
        ctx = workers.Context(repo=job.store.repo, now=now(), trust_all=job.config.include_untrusted, caps=job.caps)
        if job.config.github and job.github_token:
            self._from_api(job, ctx, report)
        else:
            why = "no GITHUB_TOKEN" if job.config.github else "ingest.github not set"
            report.note = f"{why}: recovered from merge and squash commits"
            self._from_history(job, ctx, report)
        return report

    def _from_api(self, job: Job, ctx: workers.Context, report: Report) -> None:
        assert job.config.github and job.github_token
        reader = GitHubReader(job.config.github, job.github_token, job.config.github_api,
                              on_wait=lambda note: job.progress(self.name, report.items, None, note))
        cursor = {} if job.full else (job.store.cursor(self.name) or {})
        listed = reader.updated_since(cursor.get("updated_at"), set(cursor.get("numbers", [])))
        if not listed:
            report.note = "nothing new"
            return
        read = (reader.read(pr) for pr in listed)
        batches = _batches(((pr, ctx) for pr in read), 8)
        results = (d for batch in job.pool.map(workers.pull_requests, batches) for d in batch)
        # Oldest update first: once one is committed, every one updated before it is too.
        at: dict[str, Any] = {"updated_at": cursor.get("updated_at"), "numbers": cursor.get("numbers", [])}

        def remember(done: workers.Done) -> workers.Done:
            row = done.rows["pull_requests"][0]
            if row["updated_at"] != at["updated_at"]:
                at.update(updated_at=row["updated_at"], numbers=[])
            at["numbers"] = [*at["numbers"], row["number"]]
            return done

        # Oldest update first: once one is committed, every one updated before it is too;
        # those updated at the same instant are remembered by number.
        _write_all(job, self.name, (remember(d) for d in results), report, len(listed), lambda last: dict(at))

    def _from_history(self, job: Job, ctx: workers.Context, report: Report) -> None:
        count, last = job.store.db.execute(
            "select count(*), max(committed_at) from commits where repo = ? and pr_number is not null "
            "and on_default_branch = 1", [job.store.repo]).fetchone()
        cursor = {"history": [count, last]}
        if not job.full and job.store.cursor(self.name) == cursor:
            report.note += "; nothing new"
            return
        found = list(from_history(job.store.db, job.store.repo))
        results = (d for batch in job.pool.map(workers.pull_requests, _batches(((p, ctx) for p in found), 16))
                   for d in batch)
        _write_all(job, self.name, results, report, len(found))
        job.store.write(Batch(), self.name, cursor)


SOURCES: dict[str, Source] = {s.name: s for s in (GitSource(), GitHubSource(), SnapshotSource(), DocsSource())}
