"""One ingest run: open the repository and the store, run each source, record the run.

A source that fails (a broken repository, a missing object it cannot step over, the
network) is reported with its reason and stops only itself: what it committed before
stays, with its cursor, and the other sources still run. The run's row in
`ingest_runs` records every source's counts, skips, redactions and error.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ingest import workers
from ingest.git import GitError, open_repo
from ingest.sources import SOURCES, Job, Report
from ingest.store import Store
from repotune import db as store_db
from repotune import models
from repotune.config import Settings


class IngestError(Exception):
    """The run cannot start (the repository or the store cannot be opened)."""


@dataclass
class RunResult:
    repo: str
    run_id: int
    reports: dict[str, Report] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

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
        }


Progress = Callable[[str, int, int | None, str], None]


def ingest(
    settings: Settings, full: bool = False, sources: list[str] | None = None, repo: str | None = None,
    progress: Progress | None = None,
) -> RunResult:
    cfg = settings.config.ingest
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
    store = Store(db, spec)
    store.add_repo(str(git.path), default)
    pool = workers.Pool(
        lambda: models.tokenizer_path(settings.config.model.base), cfg.chunk_tokens, cfg.workers
    )
    job = Job(git, store, pool, cfg, default, full, settings.secrets.github_token, settings.data_dir / "repos",
              progress or (lambda *a: None))
    result = RunResult(spec, store.start_run(names))
    try:
        for name in names:
            try:
                result.reports[name] = SOURCES[name].ingest(job)
            except (GitError, models.ModelError, workers.SetupError, OSError, sqlite3.Error) as e:
                result.errors[name] = str(e)
    finally:
        pool.close()
        store.finish_run(
            result.run_id, result.status if not _interrupted(result, names) else "interrupted",
            result.as_dict()["sources"], result.redactions, "; ".join(f"{k}: {v}" for k, v in result.errors.items())
            or None,
        )
    return result


def _interrupted(result: RunResult, names: list[str]) -> bool:
    return len(result.reports) + len(result.errors) < len(names)
