"""The continual loop's records: cycle runs, requests for a cycle, and the locks that say who runs.

The kernel owns them because two processes that may not import each other share them:
the server's webhook writes a request (`request`), the tuner takes the pending ones when
a cycle starts (`take_requests`), and `repotune tuner status` reads both.

A cycle run is one row of `cycle_runs`; its statuses are a small state machine
(`TRANSITIONS`): `running` ends `promoted`, `rejected`, `nothing_new`, `failed`, or
`killed` (its process died: the next cycle finds the row `running` while the cycle lock
is free, which only a dead holder leaves). Two locks, both `fcntl.flock` on files under
`data_dir`, which the kernel releases when the holder exits, SIGKILL included:
`cycle.lock` (held for a cycle's length: two cycles never overlap, whichever process
starts them) and `tuner.lock` (held by a running `repotune tuner`, so the webhook can say
whether a request will be taken).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from repotune import db as store

if TYPE_CHECKING:
    import sqlite_utils

STATUSES = ("running", "promoted", "rejected", "nothing_new", "failed", "killed")
TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset({"promoted", "rejected", "nothing_new", "failed", "killed"}),
    **{s: frozenset() for s in STATUSES if s != "running"},
}
CYCLE_LOCK, TUNER_LOCK = "cycle.lock", "tuner.lock"


class Busy(Exception):
    """Another process holds the lock; the message names what it runs."""


@dataclass
class Step:
    name: str  # ingest, data, train, eval
    status: str  # done, failed, skipped
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    id: int
    lineage: str
    trigger: str
    status: str
    step: str | None
    started_at: str
    finished_at: str | None
    steps: list[Step]
    dataset: str | None
    train_config: str | None
    version: int | None
    error: str | None
    pid: int | None

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "steps"},
                "steps": [s.__dict__ for s in self.steps]}


# --- locks -------------------------------------------------------------------------------------


@contextlib.contextmanager
def held(data_dir: Path, name: str, busy: str | Callable[[], str]) -> Iterator[None]:
    """Hold `data_dir/<name>` for the block, or raise Busy(`busy`, or what `busy()` says) at once if
    another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / name).open("a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(busy() if callable(busy) else busy) from None
        yield
    finally:
        handle.close()  # closing the file releases the lock


def is_held(data_dir: Path, name: str) -> bool:
    """Whether a process holds `data_dir/<name>` now (trying it takes and drops it at once)."""
    path = data_dir / name
    if not path.exists():
        return False
    handle: IO[str] = path.open("a")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


# --- runs --------------------------------------------------------------------------------------


def start(db: sqlite_utils.Database, lineage: str, trigger: str) -> int:
    """A new `running` row for this process. Call with the cycle lock held: rows still `running`
    belong to holders that died, and are marked `killed` first."""
    now = store.now()
    with store.transaction(db):
        db.execute("update cycle_runs set status = 'killed', finished_at = ?, "
                   "error = coalesce(error, 'the process running it ended without finishing it') "
                   "where status = 'running'", [now])
        cursor = db.execute("insert into cycle_runs (lineage, trigger, status, started_at, host, pid) "
                            "values (?, ?, 'running', ?, ?, ?)",
                            [lineage, trigger, now, socket.gethostname(), os.getpid()])
    return int(cursor.lastrowid or 0)


def update(db: sqlite_utils.Database, run_id: int, **fields: Any) -> None:
    """Set a running row's step, steps, dataset, train_config or version."""
    unknown = set(fields) - {"step", "steps", "dataset", "train_config", "version"}
    if unknown:
        raise ValueError(f"cycle_runs has no settable {', '.join(sorted(unknown))}")
    if "steps" in fields:
        fields["steps"] = json.dumps([s.__dict__ for s in fields["steps"]], default=str)
    with store.transaction(db):
        db.execute(f"update cycle_runs set {', '.join(f'{k} = ?' for k in fields)} where id = ?",
                   [*fields.values(), run_id])


def finish(db: sqlite_utils.Database, run_id: int, status: str, error: str | None = None) -> None:
    with store.transaction(db):
        row = db.execute("select status from cycle_runs where id = ?", [run_id]).fetchone()
        if row is None or status not in TRANSITIONS[row[0]]:
            raise ValueError(f"cycle run {run_id} cannot go from {row[0] if row else 'nothing'} to {status}")
        db.execute("update cycle_runs set status = ?, error = ?, finished_at = ? where id = ?",
                   [status, error, store.now(), run_id])


def runs(db: sqlite_utils.Database, lineage: str | None = None, limit: int = 10) -> list[Run]:
    where, args = ("where lineage = ?", [lineage]) if lineage else ("", [])
    rows = db.query(f"select * from cycle_runs {where} order by id desc limit ?", [*args, limit])
    return [_run(r) for r in rows]


def last_decided(db: sqlite_utils.Database, lineage: str) -> Run | None:
    """The lineage's last cycle that trained and was judged (promoted or rejected)."""
    rows = list(db.query("select * from cycle_runs where lineage = ? and status in ('promoted', 'rejected') "
                         "order by id desc limit 1", [lineage]))
    return _run(rows[0]) if rows else None


def failures_in_a_row(db: sqlite_utils.Database, lineage: str) -> int:
    count = 0
    for r in db.query("select status from cycle_runs where lineage = ? and status != 'running' order by id desc",
                      [lineage]):
        if r["status"] not in ("failed", "killed"):
            break
        count += 1
    return count


@dataclass
class Health:
    lineage: str
    last_success: str | None  # the end of the last cycle that did not fail
    failures_in_a_row: int
    last_decision: str | None  # promoted or rejected: the last gate decision a cycle reached


def health(db: sqlite_utils.Database) -> list[Health]:
    """Per lineage with cycles: what `/metrics` shows of the loop."""
    out = []
    for (lineage,) in db.execute("select distinct lineage from cycle_runs order by lineage").fetchall():
        success = db.execute("select max(finished_at) from cycle_runs where lineage = ? and status in "
                             "('promoted', 'rejected', 'nothing_new')", [lineage]).fetchone()[0]
        decided = last_decided(db, lineage)
        out.append(Health(lineage, success, failures_in_a_row(db, lineage), decided.status if decided else None))
    return out


def _run(r: dict[str, Any]) -> Run:
    return Run(id=r["id"], lineage=r["lineage"], trigger=r["trigger"], status=r["status"], step=r["step"],
               started_at=r["started_at"], finished_at=r["finished_at"],
               steps=[Step(**s) for s in json.loads(r["steps"] or "[]")], dataset=r["dataset"],
               train_config=r["train_config"], version=r["version"], error=r["error"], pid=r["pid"])


# --- requests ----------------------------------------------------------------------------------


def request(db: sqlite_utils.Database, source: str, detail: dict[str, Any]) -> int:
    """Ask for a cycle (the webhook); the next cycle to start takes it."""
    with store.transaction(db):
        cursor = db.execute("insert into cycle_requests (received_at, source, detail) values (?, ?, ?)",
                            [store.now(), source, json.dumps(detail)])
    return int(cursor.lastrowid or 0)


def pending(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return [{**r, "detail": json.loads(r["detail"])}
            for r in db.query("select * from cycle_requests where run_id is null order by id")]


def take_requests(db: sqlite_utils.Database, run_id: int) -> int:
    """Mark every pending request as taken by `run_id` (the cycle about to ingest covers them)."""
    with store.transaction(db):
        return db.execute("update cycle_requests set run_id = ? where run_id is null", [run_id]).rowcount
