"""The kernel's one migration list: every table of every package, in the order added.

Append only: a migration, once released, is never edited, reordered or removed; a
change to a table is a new migration. Each runs once per store, in its own transaction
(`repotune.db.migrate`), and its name is recorded in `_migrations`. The tables are the
contract between packages, which is why they are all declared here, in the kernel.
"""

from __future__ import annotations

import sqlite_utils

from repotune.db import Migration

MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_registry(db: sqlite_utils.Database) -> None:
    """Adapters (one row per lineage and version) and the events of their transitions."""
    db.execute(
        """create table adapters (
            lineage text not null,
            version integer not null,
            path text not null,
            base_model text not null,
            base_fingerprint text not null,
            status text not null,
            created_at text not null,
            updated_at text not null,
            promoted_at text,
            manifest text not null default '{}',
            primary key (lineage, version)
        )"""
    )
    db.execute("create unique index adapters_one_promoted on adapters (lineage) where status = 'promoted'")
    db.execute(
        """create table events (
            id integer primary key,
            at text not null,
            lineage text not null,
            version integer,
            action text not null,
            from_status text,
            to_status text,
            actor text not null,
            reason text not null default ''
        )"""
    )
    db.execute("create index events_lineage on events (lineage, id)")
