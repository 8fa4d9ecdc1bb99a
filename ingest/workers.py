"""The CPU-heavy part of ingest, in worker processes: redacting secrets and cutting chunks.

git streams commits and files to the parent, which hands them to a pool of processes
(`ingest.workers`, one per core by default) and writes what comes back in batches. Each
worker sets up detect-secrets and the tokenizer once. Work items and results are plain
picklable data; a row leaves a worker only after redaction, so nothing unredacted is
ever written.
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import multiprocessing.pool
import os
import queue
import re
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ingest.chunks import Chunker, Tokens, Unit, file_units, section_units
from ingest.git import SPAWNING, Caps, Commit, parse_block
from ingest.github import PullRequest
from ingest.secrets import Redacted, Scanner

if TYPE_CHECKING:
    from repotune.config import Settings

T = TypeVar("T")
R = TypeVar("R")

_MERGE_PR = re.compile(r"^Merge pull request #(\d+) from (\S+)")
_SQUASH_PR = re.compile(r"\(#(\d+)\)\s*$")


@dataclass
class Document:
    kind: str  # file, doc, wiki
    path: str
    sha: str
    text: str
    at_commit: str


@dataclass
class Done:
    """One item's rows, ready to write, and what was redacted in them."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    redactions: Counter[str] = field(default_factory=Counter)
    # A commit's diff is its chunks' text from this offset on (sent once, not twice, from
    # the worker: diffs are most of a history's bytes); `complete` puts it back.
    diff_at: int | None = None

    def complete(self) -> Done:
        if self.diff_at is not None:
            self.rows["commits"][0]["diff"] = "".join(c["text"] for c in self.rows["chunks"])[self.diff_at :]
            self.diff_at = None
        return self


@dataclass
class Context:
    repo: str
    now: str = ""
    caps: Caps = field(default_factory=Caps)
    trust_all: bool = False  # ingest.include_untrusted


_scanner: Scanner | None = None
_chunker: Chunker | None = None


class SetupError(Exception):
    """The workers could not set themselves up (detect-secrets, the base model's tokenizer)."""


_setup_error: str | None = None


def setup(tokenizer: Path, max_tokens: int) -> None:
    """Build the scanner and the chunker. A failure is kept and raised (as `SetupError`)
    with the first item, in the parent: a pool restarts a worker whose set-up raises,
    forever."""
    global _scanner, _chunker, _setup_error
    _setup_error = None
    try:
        scanner = Scanner()
    except Exception as e:
        _setup_error = f"{type(e).__name__}: {e}"
        return
    try:
        _chunker = Chunker(Tokens(tokenizer), max_tokens)
    except Exception as e:  # tokenizers raises a bare Exception for a file it cannot read
        scanner.close()
        _setup_error = f"{type(e).__name__}: {e}"
        return
    _scanner = scanner


# The workers yield the processor to the parent, which reads git for them and writes what
# they return (they all wait on it: measured, full ingests of the benchmark history 0.24 s
# faster, median of 16 pairs), and to anything else on the machine, a server first.
WORKER_NICENESS = 10


def _worker_setup(tokenizer: Path, max_tokens: int) -> None:
    # A forked worker inherits its parent's signal handlers. The cycle's process turns SIGTERM
    # into SystemExit, and with that handler a worker was seen to outlive the SIGTERM of the
    # pool's `terminate`, whose join then waited for ever (the first cycle of `repotune up`
    # stuck after its ingest, one run in three). A worker ends when its pool ends it, and
    # Ctrl-C is the parent's to handle: it closes the pool.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    setup(tokenizer, max_tokens)
    gc.freeze()  # what setup built lives as long as the worker: its collector need not walk it


def _tools() -> tuple[Scanner, Chunker]:
    if _setup_error is not None:
        raise SetupError(f"the ingest workers could not set up: {_setup_error}")
    assert _scanner is not None and _chunker is not None, "setup() first"
    return _scanner, _chunker


def teardown() -> None:
    global _scanner, _chunker, _setup_error
    if _scanner is not None:
        _scanner.close()
    _scanner = _chunker = _setup_error = None


def pr_number(message: str) -> int | None:
    """The pull request a merge ("Merge pull request #N from …") or squash ("Title (#N)") commit closed."""
    first = message.split("\n", 1)[0]
    m = _MERGE_PR.match(first) or _SQUASH_PR.search(first)
    return int(m.group(1)) if m else None


def commits(batch: list[tuple[Commit | tuple[bytes, bool], Context, bool]]) -> list[Done]:
    """Rows and chunks of a batch of commits, given parsed or as `git log` bytes (parsed
    here, in the worker), each with whether it is on the default branch; secrets are
    scanned for the batch at once."""
    scanner, _ = _tools()
    parsed = [(c if isinstance(c, Commit) else parse_block(*c, ctx.caps), ctx, on) for c, ctx, on in batch]
    messages = scanner.redact_many([(c.message, "COMMIT_EDITMSG", False) for c, _, _ in parsed])
    diffs = scanner.redact_diffs([c.blocks for c, _, _ in parsed])
    return [_commit(c, ctx, on, m, d) for (c, ctx, on), m, d in zip(parsed, messages, diffs, strict=True)]


def _commit(c: Commit, ctx: Context, on_default: bool, message: Redacted, diff: Redacted) -> Done:
    assert _chunker is not None
    trusted = on_default or ctx.trust_all
    number = pr_number(message.text)
    out = Done(redactions=message.counts + diff.counts if message.counts or diff.counts else Counter())
    out.rows["commits"] = [{
        "repo": ctx.repo, "sha": c.sha, "parents": " ".join(c.parents), "author_name": c.author_name,
        "author_email": c.author_email, "authored_at": c.authored_at, "committer_name": c.committer_name,
        "committed_at": c.committed_at, "message": message.text, "diff": diff.text,
        "diff_truncated": int(c.diff_truncated), "files_changed": len(c.files),
        "insertions": sum(f.insertions or 0 for f in c.files), "deletions": sum(f.deletions or 0 for f in c.files),
        "on_default_branch": int(on_default), "pr_number": number, "trusted": int(trusted),
        "redactions": _json(out.redactions),
    }]
    out.rows["commit_files"] = [
        {"repo": ctx.repo, "sha": c.sha, "path": f.path, "old_path": f.old_path, "status": f.status,
         "insertions": f.insertions, "deletions": f.deletions, "binary": int(f.binary), "skipped": f.skipped}
        for f in c.files
    ]
    files = "".join(
        f"  {f.path} ({'binary' if f.binary else f'+{f.insertions or 0} -{f.deletions or 0}'})\n" for f in c.files
    )
    head = (f"Commit {c.sha[:12]} by {c.author_name} on {c.committed_at[:10]}\n\n{message.text}\n\n"
            + (f"Files changed:\n{files}\n" if files else ""))
    units = [Unit(head, 1)] + [Unit(block, 1) for block in diff.blocks]
    title = message.text.split("\n", 1)[0][:200]
    chunks = _chunker.cut(units, "commit", sha=c.sha, pr_number=number, title=title)
    out.rows["chunks"] = [ch.row(ctx.repo, trusted, ctx.now) for ch in chunks]
    if sum(len(ch.text) for ch in chunks) == len(head) + len(diff.text):  # no blank piece was left out
        out.rows["commits"][0]["diff"], out.diff_at = None, len(head)
    return out


def documents(batch: list[tuple[Document, Context]]) -> list[Done]:
    """Rows and chunks of a batch of documents (secrets are scanned for the batch at once)."""
    scanner, _ = _tools()
    redacted = scanner.redact_many([(d.text, d.path, False) for d, _ in batch])
    return [_document(d, ctx, r) for (d, ctx), r in zip(batch, redacted, strict=True)]


def _document(d: Document, ctx: Context, redacted: Redacted) -> Done:
    assert _chunker is not None
    out = Done(redactions=redacted.counts)
    out.rows["documents"] = [{
        "repo": ctx.repo, "kind": d.kind, "path": d.path, "sha": d.sha, "text": redacted.text,
        "bytes": len(d.text.encode()), "at_commit": d.at_commit, "stale": 0, "redactions": _json(redacted.counts),
    }]
    units = section_units(redacted.text) if d.kind in ("doc", "wiki") else file_units(d.path, redacted.text)
    chunks = _chunker.cut(units, d.kind, path=d.path, sha=d.sha, title=d.path)
    out.rows["chunks"] = [ch.row(ctx.repo, True, ctx.now) for ch in chunks]
    return out


def pull_requests(batch: list[tuple[PullRequest, Context]]) -> list[Done]:
    """Rows and chunks of a batch of pull requests: title, body, comments and patches redacted."""
    scanner, _ = _tools()
    texts: list[tuple[str, str, bool]] = []
    for pr, _ in batch:
        texts += [(pr.title, "PR_TITLE", False), (pr.body, "PR_BODY.md", False)]
        texts += [(c.body, c.path or "comment.md", False) for c in pr.comments]
        texts += [(f["patch"], f["path"], True) for f in pr.files]
    redacted = iter(scanner.redact_many(texts))
    return [_pull_request(pr, ctx, redacted) for pr, ctx in batch]


def _pull_request(pr: PullRequest, ctx: Context, redacted: Iterator[Redacted]) -> Done:
    assert _chunker is not None
    title, body = next(redacted), next(redacted)
    comments = [(c, next(redacted)) for c in pr.comments]
    files = [(f, next(redacted)) for f in pr.files]
    trusted = ctx.trust_all or (pr.merged and not pr.from_fork)
    out = Done(redactions=sum((r.counts for r in (title, body, *(r for _, r in comments), *(r for _, r in files))),
                              Counter()))
    out.rows["pull_requests"] = [{
        "repo": ctx.repo, "number": pr.number, "title": title.text, "body": body.text, "state": pr.state,
        "author": pr.author, "base": pr.base, "head": pr.head, "from_fork": int(pr.from_fork),
        "labels": json.dumps(pr.labels), "created_at": pr.created_at, "updated_at": pr.updated_at,
        "merged_at": pr.merged_at, "merge_sha": pr.merge_sha,
        "files": json.dumps([{**f, "patch": r.text[: ctx.caps.file_bytes]} for f, r in files]),
        "source": pr.source, "trusted": int(trusted), "redactions": _json(out.redactions),
    }]
    out.rows["pr_comments"] = [
        {"repo": ctx.repo, "pr_number": pr.number, "id": c.id, "kind": c.kind, "author": c.author, "body": r.text,
         "state": c.state, "path": c.path, "created_at": c.created_at, "redactions": _json(r.counts)}
        for c, r in comments
    ]
    by = f" by {pr.author}" if pr.author else ""
    branches = f" ({pr.head} into {pr.base})" if pr.head and pr.base else ""
    head = f"Pull request #{pr.number}: {title.text}\n{pr.state}{by}{branches}\n\n{body.text}\n"
    units = [Unit(head, 1)]
    if files:
        units.append(Unit("Files changed:\n" + "".join(
            f"  {f['path']} (+{f['additions'] or 0} -{f['deletions'] or 0})\n" for f, _ in files), 1))
    for c, r in comments:
        what = {"review": f"Review ({c.state})", "review_comment": f"Review comment on {c.path}"}.get(c.kind, "Comment")
        if r.text.strip():
            units.append(Unit(f"{what} by {c.author}:\n{r.text}\n", 1))
    units += [Unit(f"diff {f['path']}\n{r.text[: ctx.caps.file_bytes]}\n", 1) for f, r in files if r.text]
    chunks = _chunker.cut(units, "pull_request", pr_number=pr.number, title=title.text[:200])
    out.rows["chunks"] = [ch.row(ctx.repo, trusted, ctx.now) for ch in chunks]
    return out


class Pool:
    """`map` over worker processes, started on first use or by `start`."""

    def __init__(self, tokenizer: Callable[[], Path], max_tokens: int, processes: int = 0):
        self.tokenizer = tokenizer  # resolved on first use: building builtin:tiny's takes seconds
        self.max_tokens = max_tokens
        self.processes = processes or os.cpu_count() or 1
        self._pool: Any = None
        self._workers: list[Any] = []  # the processes started, not their replacements (there are none)
        self._set_up = False  # in this process (one process: no pool)
        self._closing = threading.Event()
        self._starting = threading.Lock()

    def start(self) -> None:
        """Start the workers now, so that they set themselves up (detect-secrets, the
        tokenizer: about a third of a second) while the caller goes on reading git."""
        with self._starting:  # two sources may start it at once
            if self._closing.is_set():
                raise SetupError("the ingest workers were stopped")
            if self._pool is not None or self.processes <= 1:
                return
            tokenizer = self.tokenizer()  # once, here: the first time, it may build builtin:tiny's
            # Frozen before the fork, the objects the workers inherit are never walked (and so
            # never copied page by page) by their garbage collector.
            gc.freeze()
            with SPAWNING:
                self._pool = _Pool(self.processes, initializer=_worker_setup, initargs=(tokenizer, self.max_tokens),
                                   context=multiprocessing.get_context("fork"))
            self._workers = list(self._pool._pool)
            _widen(self._pool)

    def map(self, fn: Callable[[T], R], items: Iterable[T], ahead: int = 0) -> Iterator[R]:
        """`fn` over `items`, results in order. The items are read in a thread of their own
        while the caller writes results (reading git's output overlaps with everything
        else), at most `ahead` of them (default: 8 per process) beyond the results taken
        so far. Maps running at once (from several threads) share the workers: each item
        is a task of its own, so neither waits for the other's items to be read."""
        if self.processes <= 1:
            if not self._set_up:
                setup(self.tokenizer(), self.max_tokens)
                self._set_up = True
            yield from map(fn, items)
            return
        self.start()
        pool = self._pool
        sent: queue.Queue[Any] = queue.Queue(ahead or self.processes * 8)
        stop = threading.Event()

        def put(what: Any) -> bool:
            while not (stop.is_set() or self._closing.is_set()):
                try:
                    sent.put(what, timeout=0.2)
                    return True
                except queue.Full:
                    pass
            return False

        def feed() -> None:
            try:
                for item in items:
                    if not put(pool.apply_async(fn, (item,))):
                        return
                put(_END)
            except BaseException as e:  # raised where the caller reaches it, in order
                put(_Raise(e))

        feeder = threading.Thread(target=feed, name=f"feed {getattr(fn, '__name__', fn)}", daemon=True)
        feeder.start()
        try:
            while (task := sent.get()) is not _END:
                if isinstance(task, _Raise):
                    raise task.error
                while True:
                    try:
                        result = task.get(timeout=0.2)
                        break
                    except multiprocessing.TimeoutError:
                        if self._closing.is_set():
                            raise SetupError("the ingest workers were stopped") from None
                        self._check_workers()
                yield result
        finally:
            stop.set()

    def _check_workers(self) -> None:
        """A worker that exited took its tasks with it: their results never come."""
        for w in self._workers:
            if w.exitcode is not None:
                killed = " (killed: out of memory?)" if w.exitcode == -signal.SIGKILL else ""
                raise SetupError(f"an ingest worker stopped with exit code {w.exitcode}{killed}; "
                                 "what was written is kept and the next run resumes from there")

    def close(self) -> None:
        if self._set_up:
            teardown()
            self._set_up = False
        with self._starting:
            self._closing.set()  # for good: a source still running gets no new workers
            if self._pool is not None:
                if self._free_locks_of_the_dead():
                    self._end_bounded(self._pool)
                else:
                    self._pool.terminate()
                    self._pool.join()
                self._pool = None
                gc.unfreeze()

    def _free_locks_of_the_dead(self) -> bool:
        """Where a worker was killed, end the others too and free the queues' locks it may have held;
        says whether one was.

        An idle worker waits for its next task holding the task queue's read lock, and one
        that sends results holds the result queue's write lock. A worker killed there (the
        out-of-memory killer) never releases it, and the pool's `terminate` waits for ever to
        take the read lock (to drain the task queue) or to send its own sentinel. Once no
        worker is left, nobody else can hold them, and a lock that is free refuses a release
        (ValueError). This reaches into `multiprocessing.pool.Pool`'s queues (`_inqueue`,
        `_outqueue`) and their locks (`_rlock`, `_wlock`), unchanged since Python 3.8; if they
        are renamed, the AttributeError says so here, in the tests, before any pool hangs."""
        if all(w.exitcode is None for w in self._workers):
            return False
        for w in self._workers:
            if w.exitcode is None:
                w.kill()
        for w in self._workers:
            w.join()
        for lock in (self._pool._inqueue._rlock, self._pool._outqueue._wlock):
            with contextlib.suppress(ValueError):
                lock.release()
        return True

    @staticmethod
    def _end_bounded(pool: Any, wait_s: float = 30.0) -> None:
        """The pool's `terminate` and `join` once its workers are all gone, given at most `wait_s`.

        A worker killed halfway through sending a result (or reading a task) leaves part of a
        message in a pipe, and the pool's own thread that reads it may then wait for the rest
        for ever. No worker is left to wait for, so the pool's threads (daemons) are left to
        the process's exit rather than holding up `close`."""
        def end() -> None:
            with contextlib.suppress(Exception):
                pool.terminate()
                pool.join()

        ending = threading.Thread(target=end, name="end ingest pool", daemon=True)
        ending.start()
        ending.join(wait_s)


def pool_for(settings: Settings) -> Pool:
    """The workers `ingest.workers` and `ingest.chunk_tokens` ask for, with the base model's tokenizer."""
    from repotune import models

    cfg = settings.config.ingest
    return Pool(lambda: models.tokenizer_path(settings.config.model.base), cfg.chunk_tokens, cfg.workers)


class _Pool(multiprocessing.pool.Pool):
    """multiprocessing's pool, with two changes to the thread that looks after the workers.

    It wakes only when a worker exits or the pool changes state (a drained cache says so
    too). multiprocessing's also wakes whenever a result waits in the pipe from the
    workers, and so spins until the result thread reads it (which waits for the GIL while
    the parent writes): about 11,000 wake-ups per full ingest of the benchmark history,
    0.25-0.3 s of CPU.

    A worker that exits is not replaced: nothing here asks workers to exit, so one that
    did was killed, and the tasks it held are lost (`Pool.map` says so instead of waiting
    for them). A replacement would also be forked outside `SPAWNING`, beside a git start.
    """

    def _get_sentinels(self) -> list[Any]:
        return [self._change_notifier._reader]  # type: ignore[attr-defined]

    @staticmethod
    def _maintain_pool(ctx: Any, process: Any, processes: int, pool: list[Any], *args: Any) -> None:
        multiprocessing.pool.Pool._join_exited_workers(pool)  # type: ignore[attr-defined]


_END = object()  # the last item was sent


@dataclass
class _Raise:
    error: BaseException  # reading the items failed


def _widen(pool: Any) -> None:
    """Pipes of 1 MiB between the parent and the workers instead of 64 KiB: a batch's
    results (about 100 KiB) then go out at once, and a worker does not wait, pipe full,
    for the parent's result thread to get its turn."""
    import fcntl

    for channel in (pool._inqueue, pool._outqueue):
        for end in (channel._reader, channel._writer):
            try:
                fcntl.fcntl(end.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            except (OSError, AttributeError):
                return


def _json(counts: Counter[str]) -> str:
    return json.dumps(dict(counts), sort_keys=True) if counts else "{}"  # (most texts: nothing redacted)
