"""The store: one SQLite database, opened through sqlite-utils, and its migrations.

Every package keeps its tables here (`paths.data_dir/repotune.db`), and the tables are
the contract between packages: one may read another's tables through this module without
importing that package. The schema grows by an append-only list of named migration
functions (`repotune.migrations`), as in simonw/llm: the names applied are recorded in
`_migrations`, so each runs once, in order, and a database written by a newer repotune
(a name this code does not know) is refused rather than misread.

The database runs in WAL mode, so readers (the server) never wait for a writer, and a
busy timeout makes a second writer wait for the first instead of failing. Writers of
many rows commit in small batches (`write_batches`; ingest batches its writes to several
tables the same way), so a long ingest holds the write lock for a moment at a time and a
promotion can slip in between.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any


def _import_sqlite_utils() -> Any:
    """sqlite-utils imports pandas and numpy, when installed (datasets brings them), only
    to map their values' types; repotune never stores such values, and those imports cost
    every command that opens the store over half a second. It is imported here with both
    hidden; anything that wants them later imports them as usual. The kernel's
    other modules import sqlite-utils for type hints only, so this is where it loads."""
    import sys

    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import sqlite_utils as module
    finally:
        for name in hidden:
            del sys.modules[name]
    return module


if TYPE_CHECKING:
    import sqlite_utils
else:
    sqlite_utils = _import_sqlite_utils()

DB_NAME = "repotune.db"
BUSY_TIMEOUT_S = 30.0  # a writer waits this long for another writer's batch to commit

Migration = Callable[[sqlite_utils.Database], None]


class StoreError(Exception):
    """The store cannot be opened or migrated."""


@dataclass(frozen=True)
class MigrationResult:
    applied: list[str]  # applied by this call
    already: list[str]  # applied before


PAGE_SIZE = 8192


def db_path(data_dir: Path) -> Path:
    return data_dir / DB_NAME


def open_db(path: Path, migrations: list[Migration] | None = None) -> sqlite_utils.Database:
    """Open (creating if needed) the store at `path` and bring its schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        db = sqlite_utils.Database(conn)
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # Set before the first write (a store made earlier keeps its own). The store holds
        # text of a few kilobytes a row (diffs, chunks): replaying a full ingest's writes
        # took 5% less CPU with pages of 8 KiB than of 4 KiB.
        db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        db.enable_wal()
        db.execute("PRAGMA foreign_keys = ON")
        migrate(db, _kernel_migrations() if migrations is None else migrations)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: cannot open the store: {e}") from e
    return db


def migrate(db: sqlite_utils.Database, migrations: list[Migration]) -> MigrationResult:
    """Apply the migrations not yet recorded, each in its own transaction."""
    names = [m.__name__ for m in migrations]
    if len(set(names)) != len(names):
        raise StoreError(f"duplicate migration names: {names}")
    if "_migrations" not in db.table_names():
        db.table("_migrations").create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
    done = applied_migrations(db)
    unknown = [n for n in done if n not in names]
    if unknown:
        raise StoreError(
            f"the store has migrations this version of repotune does not know ({', '.join(unknown)}); "
            "it was written by a newer repotune"
        )
    applied: list[str] = []
    for fn in migrations:
        if fn.__name__ in done:
            continue
        with transaction(db):
            fn(db)
            db.table("_migrations").insert({"name": fn.__name__, "applied_at": now()})
        applied.append(fn.__name__)
    return MigrationResult(applied=applied, already=done)


def applied_migrations(db: sqlite_utils.Database) -> list[str]:
    if "_migrations" not in db.table_names():
        return []
    return [r["name"] for r in db.query("select name from _migrations order by rowid")]


class transaction:
    """`with transaction(db):` — BEGIN IMMEDIATE … COMMIT, ROLLBACK on error.

    IMMEDIATE takes the write lock at the start, so two writers that read-then-write
    (two admins promoting at once) serialize instead of one failing at commit.
    """

    def __init__(self, db: sqlite_utils.Database):
        self.conn = db.conn

    def __enter__(self) -> None:
        if self.conn.in_transaction:
            self.conn.commit()
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.conn.in_transaction:
            return
        if exc_type is None:
            self.conn.commit()
        else:
            self.conn.rollback()


def write_batches(
    db: sqlite_utils.Database,
    table: str,
    rows: Iterable[dict[str, Any]],
    pk: str | tuple[str, ...],
    batch_size: int = 200,
) -> int:
    """Upsert `rows` into `table`, committing every `batch_size` rows; return the count.

    Each batch is its own transaction, so other writers wait at most one batch.
    """
    total = 0
    for batch in _chunks(rows, batch_size):
        with transaction(db):
            db.table(table).upsert_all(batch, pk=pk, alter=True)
        total += len(batch)
    return total


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def now() -> str:
    """UTC time as ISO 8601, the one timestamp format in the store."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def status(db: sqlite_utils.Database, migrations: list[Migration] | None = None) -> dict[str, Any]:
    """What is in the store: file, journal mode, migrations, tables and row counts."""
    names = [m.__name__ for m in (_kernel_migrations() if migrations is None else migrations)]
    done = applied_migrations(db)
    path = Path(db.conn.execute("PRAGMA database_list").fetchone()[2])
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size if path.exists() else 0,
        "journal_mode": db.execute("PRAGMA journal_mode").fetchone()[0],
        "migrations": {"applied": done, "pending": [n for n in names if n not in done]},
        "tables": {t: db.table(t).count for t in db.table_names() if t != "_migrations"},
    }


def _kernel_migrations() -> list[Migration]:
    from repotune.migrations import MIGRATIONS

    return MIGRATIONS
