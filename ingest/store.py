"""Ingest's writes and reads of the store: batches, cursors, runs and status.

Each batch of a source (its rows, its chunks and its cursor) is one short transaction,
so a long ingest never holds the write lock for long, and a cursor only ever says what
has been committed: a run that is killed resumes after its last batch, and a rerun with
nothing new reads the cursors and stops. Upserts key on the natural ids (repo and sha,
number, path; a chunk on the hash of its source and text), so running twice stores
nothing twice.
"""

from __future__ import annotations

import json
import operator
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repotune.db import now, transaction

if TYPE_CHECKING:
    import sqlite_utils  # loaded at run time by repotune.db (see there)

# table -> primary key
KEYS: dict[str, tuple[str, ...]] = {
    "commits": ("repo", "sha"),
    "commit_files": ("repo", "sha", "path"),
    "pull_requests": ("repo", "number"),
    "pr_comments": ("repo", "id"),
    "documents": ("repo", "kind", "path"),
    "chunks": ("id",),
}


@dataclass
class Batch:
    """Rows for several tables, written together with the cursor that covers them."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, table: str, *rows: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).extend(rows)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


class Store:
    """One connection's reads and writes. Stores of one run that write from several threads
    (sources running side by side, each on its own connection) share `writing`: the
    one that waits is woken as soon as the other commits, instead of SQLite's busy
    handler retrying after growing sleeps."""

    def __init__(self, db: sqlite_utils.Database, repo: str, writing: threading.Lock | None = None):
        self.db = db
        self.repo = repo
        self.writing = writing or threading.Lock()
        # Ingest commits many batches. In WAL mode, NORMAL skips the fsync at each commit:
        # a crash of the process loses nothing, a power cut can roll back the last batches
        # (with their cursor, so the next run reads them again), and never corrupts the file.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA cache_size = -65536")  # 64 MiB: chunk ids are hashes, so inserts land all over the index

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self.writing, transaction(self.db):
            yield

    def add_repo(self, location: str, default_branch: str | None) -> None:
        with self._transaction():
            existing = self.db.table("repos").count_where("id = ?", [self.repo])
            row = {"id": self.repo, "location": location, "default_branch": default_branch}
            if existing:
                self.db.table("repos").update(self.repo, row)
            else:
                self.db.table("repos").insert({**row, "added_at": now()})

    def cursor(self, source: str) -> Any:
        rows = list(self.db.query("select value from cursors where repo = ? and source = ?", [self.repo, source]))
        return json.loads(rows[0]["value"]) if rows else None

    def write(self, batch: Batch, source: str | None = None, cursor: Any = None) -> None:
        """Upsert `batch` and, in the same transaction, move `source`'s cursor."""
        with self._transaction():
            for table, rows in batch.rows.items():
                if rows and table == "chunks":
                    self._upsert_chunks(rows)
                elif rows:
                    self._upsert(table, rows)
            if source is not None:
                self._set_cursor(source, cursor)

    def _upsert(self, table: str, rows: list[dict[str, Any]]) -> None:
        # One INSERT … ON CONFLICT DO UPDATE per row through executemany: the rows are flat
        # and typed already, and sqlite-utils' upsert_all (two statements per row, each
        # value inspected for JSON) cost more than the writing itself on long histories.
        columns = list(rows[0])
        keys = KEYS[table]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        sql = (f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' * len(columns))}) "
               f"on conflict ({', '.join(keys)}) do " + (f"update set {updates}" if updates else "nothing"))
        values = operator.itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
        self.db.conn.executemany(sql, map(values, rows))

    def _upsert_chunks(self, rows: list[dict[str, Any]]) -> None:
        # New chunks enter the full-text index in one statement per batch, not by a trigger
        # per row: FTS5 flushes its pending terms at the end of every statement, so a row
        # trigger writes one tiny segment per chunk (measured: 2.4x the time for the chunks'
        # writes). Chunks already there keep their rowid; the update trigger re-indexes them.
        # A chunk twice in one batch (the same text twice in a diff) would update a row the
        # index has not seen yet, and the update trigger's delete would corrupt the index.
        rows = list({row["id"]: row for row in rows}.values())
        last = self.db.execute("select coalesce(max(rowid), 0) from chunks").fetchone()[0]
        self._upsert("chunks", rows)
        self.db.execute("insert into chunks_fts (rowid, title, text) select rowid, title, text from chunks "
                        "where rowid > ?", [last])

    def _set_cursor(self, source: str, value: Any) -> None:
        self.db.table("cursors").upsert(
            {"repo": self.repo, "source": source, "value": json.dumps(value), "updated_at": now()},
            pk=("repo", "source"),
        )

    def mark_stale(self, kinds: tuple[str, ...], keep_paths: set[str], keep_chunks: set[str]) -> int:
        """Documents and chunks of `kinds` not in the new head: stale, kept for provenance."""
        marks = ",".join("?" * len(kinds))
        with self._transaction():
            self.db.execute("create temp table if not exists keep_paths (path text primary key)")
            self.db.execute("create temp table if not exists keep_chunks (id text primary key)")
            self.db.execute("delete from keep_paths")
            self.db.execute("delete from keep_chunks")
            # Straight into the temp tables: sqlite-utils' table() looks in the main schema only,
            # and would create an empty permanent twin of each.
            self.db.conn.executemany("insert or ignore into temp.keep_paths values (?)", ((p,) for p in keep_paths))
            self.db.conn.executemany("insert or ignore into temp.keep_chunks values (?)", ((c,) for c in keep_chunks))
            args = [self.repo, *kinds]
            self.db.execute(
                f"update documents set stale = 1 where repo = ? and kind in ({marks}) and stale = 0 "
                "and path not in (select path from keep_paths)", args,
            )
            cur = self.db.execute(
                f"update chunks set stale = 1 where repo = ? and kind in ({marks}) and stale = 0 "
                "and id not in (select id from keep_chunks)", args,
            )
            return int(cur.rowcount)

    # --- runs -----------------------------------------------------------------------

    def start_run(self, sources: list[str]) -> int:
        """Record a run as `running`; earlier runs of this host whose process is gone (killed
        before they could say how they ended) are marked `killed`."""
        host = socket.gethostname()
        with self._transaction():
            for row in self.db.query("select id, pid from ingest_runs where status = 'running' and host = ?", [host]):
                if not _alive(row["pid"]):
                    self.db.execute(
                        "update ingest_runs set status = 'killed', error = ? where id = ?",
                        ["the process ended without finishing (killed); what it committed is kept", row["id"]])
            table = self.db.table("ingest_runs")
            table.insert(
                {"repo": self.repo, "started_at": now(), "status": "running",
                 "sources": json.dumps({s: {} for s in sources}), "redactions": "{}", "host": host,
                 "pid": os.getpid()}
            )
            return int(table.last_pk or 0)

    def finish_run(self, run_id: int, status: str, sources: dict[str, Any], redactions: Counter[str],
                   error: str | None = None) -> None:
        with self._transaction():
            self.db.table("ingest_runs").update(
                run_id,
                {"finished_at": now(), "status": status, "sources": json.dumps(sources),
                 "redactions": json.dumps(dict(redactions)), "error": error},
            )


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def status(db: sqlite_utils.Database) -> dict[str, Any]:
    """What `repotune ingest status` shows: counts, cursors, the last run, redactions."""

    def count(table: str, where: str = "1") -> int:
        return int(next(db.query(f"select count(*) as n from {table} where {where}"))["n"])

    redactions: Counter[str] = Counter()
    for table in ("commits", "pull_requests", "pr_comments", "documents"):
        for row in db.query(f"select redactions from {table} where redactions != '{{}}'"):
            redactions.update(json.loads(row["redactions"]))
    last = list(db.query("select * from ingest_runs order by id desc limit 1"))
    run = None
    if last:
        run = {**last[0], "sources": json.loads(last[0]["sources"]), "redactions": json.loads(last[0]["redactions"])}
    return {
        "repos": [dict(r) for r in db.query("select id, location, default_branch, added_at from repos")],
        "counts": {
            "commits": count("commits"),
            "pull_requests": count("pull_requests"),
            "documents": count("documents", "stale = 0"),
            "chunks": count("chunks", "stale = 0"),
            "stale_chunks": count("chunks", "stale = 1"),
            "redactions": sum(redactions.values()),
        },
        "redactions": dict(redactions),
        "cursors": [
            {**r, "value": json.loads(r["value"])}
            for r in db.query("select repo, source, value, updated_at from cursors order by repo, source")
        ],
        "last_run": run,
    }
