"""The store: WAL, busy timeout, named append-only migrations, batched writes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest
import sqlite_utils
from typer.testing import CliRunner

from repotune import db as store
from repotune.cli import app
from repotune.migrations import MIGRATIONS


def m001_things(db: sqlite_utils.Database) -> None:
    db.execute("create table things (id integer primary key, name text)")


def m002_things_size(db: sqlite_utils.Database) -> None:
    db.execute("alter table things add column size integer")


def m003_broken(db: sqlite_utils.Database) -> None:
    db.execute("create table half_done (id integer)")
    db.execute("this is not sql")


def test_open_creates_a_wal_database_with_a_busy_timeout(tmp_path):
    db = store.open_db(tmp_path / "data" / "repotune.db", migrations=[])
    assert (tmp_path / "data" / "repotune.db").exists()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_S * 1000


def test_a_store_made_with_other_pages_opens_as_it_was(tmp_path):
    """New stores get `PAGE_SIZE` pages; one made before (SQLite's 4 KiB) keeps its own and its rows."""
    path = tmp_path / "repotune.db"
    old = sqlite_utils.Database(sqlite3.connect(path))
    old.execute("PRAGMA page_size = 4096")
    old.enable_wal()
    store.migrate(old, [m001_things])
    old["things"].insert({"id": 1, "name": "kept"})
    old.close()
    db = store.open_db(path, migrations=[m001_things, m002_things_size])
    assert db.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert list(db["things"].rows) == [{"id": 1, "name": "kept", "size": None}]
    new = store.open_db(tmp_path / "new.db", migrations=[])
    assert new.execute("PRAGMA page_size").fetchone()[0] == store.PAGE_SIZE != 4096


def test_migrations_run_once_in_order_and_later_ones_are_appended(tmp_path):
    path = tmp_path / "repotune.db"
    db = store.open_db(path, migrations=[m001_things])
    db["things"].insert({"id": 1, "name": "kept"})
    assert store.applied_migrations(db) == ["m001_things"]

    # Reopening with one more migration applies only the new one; data survives.
    db = store.open_db(path, migrations=[m001_things, m002_things_size])
    assert store.applied_migrations(db) == ["m001_things", "m002_things_size"]
    assert list(db["things"].rows) == [{"id": 1, "name": "kept", "size": None}]
    again = store.migrate(db, [m001_things, m002_things_size])
    assert again.applied == [] and again.already == ["m001_things", "m002_things_size"]


def test_a_failing_migration_is_rolled_back_and_not_recorded(tmp_path):
    path = tmp_path / "repotune.db"
    with pytest.raises(store.StoreError, match="cannot open the store"):
        store.open_db(path, migrations=[m001_things, m003_broken])
    db = sqlite_utils.Database(path)
    assert store.applied_migrations(db) == ["m001_things"]
    assert "half_done" not in db.table_names()


def test_a_store_from_a_newer_repotune_is_refused(tmp_path):
    path = tmp_path / "repotune.db"
    store.open_db(path, migrations=[m001_things, m002_things_size])
    with pytest.raises(store.StoreError, match=r"m002_things_size.*newer repotune"):
        store.open_db(path, migrations=[m001_things])


def test_a_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "repotune.db"
    path.write_bytes(b"this is not a database, just bytes " * 100)
    with pytest.raises(store.StoreError, match=str(path)):
        store.open_db(path, migrations=[])


def test_batched_writes_let_another_writer_in_between_batches(tmp_path):
    path = tmp_path / "repotune.db"
    writer = store.open_db(path, migrations=[m001_things])
    # A second writer with a short timeout: it would fail if the first held the lock for
    # the whole run instead of one batch at a time.
    other = sqlite3.connect(path, timeout=0.2)
    seen: list[int] = []

    def rows() -> Iterator[dict]:
        for i in range(1, 501):
            if i == 250:  # mid-run, between the first and second batch of 200
                seen.append(other.execute("select count(*) from things").fetchone()[0])
                with other:
                    other.execute("insert into things (id, name) values (10000, 'promotion')")
            yield {"id": i, "name": f"row {i}"}

    assert store.write_batches(writer, "things", rows(), pk="id", batch_size=200) == 500
    assert seen == [200]  # the first batch was committed and visible to other readers
    assert writer["things"].count == 501
    # Upserts are idempotent: writing the same rows again stores nothing twice.
    store.write_batches(writer, "things", ({"id": i, "name": f"row {i}"} for i in range(1, 501)), pk="id")
    assert writer["things"].count == 501


def test_transaction_rolls_back_on_error(tmp_path):
    db = store.open_db(tmp_path / "repotune.db", migrations=[m001_things])
    with pytest.raises(RuntimeError), store.transaction(db):
        db.execute("insert into things (id, name) values (1, 'lost')")
        raise RuntimeError("boom")
    assert db["things"].count == 0


def test_db_status_command_reports_the_store(tmp_path, write_config):
    path = write_config('[paths]\ndata_dir = "state"\n')
    result = CliRunner().invoke(app, ["db", "status", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["path"] == str(tmp_path / "state" / "repotune.db")
    assert info["journal_mode"] == "wal"
    assert info["migrations"]["pending"] == []
    assert info["migrations"]["applied"] == [m.__name__ for m in MIGRATIONS] != []
    assert "adapters" in info["tables"] and "events" in info["tables"]
