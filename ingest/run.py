"""One ingest run: open the repository and the store, run each source, record the run.

A source that fails (a broken repository, a missing object it cannot step over, the
network) is reported with its reason and stops only itself: what it committed before
stays, with its cursor, and the other sources still run. The run's row in
`ingest_runs` records every source's counts, skips, redactions and error.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ingest import workers
from ingest.git import GitError, Repo, open_repo
from ingest.sources import SOURCES, Job, Report
from ingest.store import Store
from repotune import db as store_db
from repotune import models, relevance
from repotune.config import Settings

if TYPE_CHECKING:
    import sqlite_utils


class IngestError(Exception):
    """The run cannot start (the repository or the store cannot be opened)."""


@dataclass
class RunResult:
    repo: str
    run_id: int
    reports: dict[str, Report] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    index: relevance.Refreshed | None = None  # the refusal policy's domain index, rebuilt after the run

    @property
    def status(self) -> str:
        if not self.errors:
            return "ok"
        return "partial" if self.reports else "failed"

    @property
    def redactions(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.reports.values():
            total.update(r.redactions)
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo, "run_id": self.run_id, "status": self.status,
            "sources": {**{k: v.as_dict() for k, v in self.reports.items()},
                        **{k: {"error": e} for k, e in self.errors.items()}},
            "redactions": dict(self.redactions),
            "index": self.index.as_dict() if self.index else None,
        }


Progress = Callable[[str, int, int | None, str], None]


def ingest(
    settings: Settings, full: bool = False, sources: list[str] | None = None, repo: str | None = None,
    progress: Progress | None = None, pool: workers.Pool | None = None,
) -> RunResult:
    """One run of `sources` (default: all). `pool`: workers started already (the command
    line starts them before it imports the rest of ingest); the run closes it."""
    with contextlib.closing(pool or workers.pool_for(settings)) as running:
        names = sources or list(SOURCES)
        unknown = [n for n in names if n not in SOURCES]
        if unknown:
            raise IngestError(f"unknown source {', '.join(unknown)}; sources: {', '.join(SOURCES)}")
        spec = repo or settings.repo
        try:
            git = open_repo(spec, settings.data_dir / "repos")
            default = git.default_branch()
            db = store_db.open_db(store_db.db_path(settings.data_dir))
        except (GitError, store_db.StoreError, sqlite3.Error) as e:
            raise IngestError(str(e)) from e
        # The connection is closed, not left to the collector: a long-lived process (the
        # nightly cycle) runs many.
        with contextlib.closing(db):
            result = _run(settings, names, spec, git, default, db, full, progress, running)
            result.index = relevance.refresh(settings, db)
            return result


def _run(settings: Settings, names: list[str], spec: str, git: Repo, default: str, db: sqlite_utils.Database,
         full: bool, progress: Progress | None, pool: workers.Pool) -> RunResult:
    cfg = settings.config.ingest
    store = Store(db, spec)
    store.add_repo(str(git.path), default)
    job = Job(git, store, pool, cfg, default, full, settings.secrets.github_token, settings.data_dir / "repos",
              progress or (lambda *a: None))
    result = RunResult(spec, store.start_run(names))
    main = [n for n in names if n not in SIDE_BY_SIDE]
    beside = [n for n in names if n in SIDE_BY_SIDE]
    side: _Lane | None = None
    try:
        if main and beside and pool.processes > 1:
            # The head's files do not wait for the history: their work fills the gaps in the
            # history's (and the other way round), on a connection of their own.
            side_store = Store(store_db.open_db(store_db.db_path(settings.data_dir)), spec, store.writing)
            side = _Lane(beside, replace(job, store=side_store), result)
            side.start()
        else:
            main = names
        _Lane(main, job, result).run()
        if side is not None:
            side.join()
            side.raise_failure()
    finally:
        pool.close()  # (a side lane still running stops at its next result)
        if side is not None:
            side.join(timeout=30)
            if not side.is_alive():
                side.job.store.db.close()
        result.reports = {n: result.reports[n] for n in names if n in result.reports}
        store.finish_run(
            result.run_id, result.status if not _interrupted(result, names) else "interrupted",
            result.as_dict()["sources"], result.redactions, "; ".join(f"{k}: {v}" for k, v in result.errors.items())
            or None,
        )
    return result


# Sources that run beside the others (in a thread, one after the other): they read the
# head's files, and nothing of theirs is read by the others (`github` recovers pull
# requests from the commits `git` stored, so those two run in order).
SIDE_BY_SIDE = ("snapshot", "docs")


class _Lane(threading.Thread):
    """Sources run one after the other; a source's failure is its own (the next still runs)."""

    def __init__(self, names: list[str], job: Job, result: RunResult):
        super().__init__(name=f"ingest {', '.join(names)}", daemon=True)
        self.names, self.job, self.result = names, job, result
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            for name in self.names:
                try:
                    self.result.reports[name] = SOURCES[name].ingest(self.job)
                except (GitError, models.ModelError, workers.SetupError, OSError, sqlite3.Error) as e:
                    self.result.errors[name] = str(e)
        except BaseException as e:  # a bug: raised again in the caller's thread
            if threading.current_thread() is not self:
                raise
            self.failure = e

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


def _interrupted(result: RunResult, names: list[str]) -> bool:
    return len(result.reports) + len(result.errors) < len(names)
