"""The kernel's one migration list: every table of every package, in the order added.

Append only: a migration, once released, is never edited, reordered or removed; a
change to a table is a new migration. Each runs once per store, in its own transaction
(`repotune.db.migrate`), and its name is recorded in `_migrations`. The tables are the
contract between packages, which is why they are all declared here, in the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from repotune.db import Migration

if TYPE_CHECKING:
    import sqlite_utils  # loaded at run time by repotune.db (see there)

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


@migration
def m002_ingest(db: sqlite_utils.Database) -> None:
    """What ingest stores: repositories, commits and their files, pull requests and their
    comments, documents (files at the head, docs and wiki pages), the chunks cut from
    them (with an FTS5 index), one cursor per source, and a row per ingest run.

    `trusted` says whether an item may feed training by default (merged pull requests,
    commits reachable from the default branch); `redactions` counts secrets replaced in
    the row's text, by kind.
    """
    db.execute(
        """create table repos (
            id text primary key,          -- the path or URL as configured
            location text not null,       -- where it is read: the path, or the mirror
            default_branch text,
            added_at text not null
        )"""
    )
    db.execute(
        """create table commits (
            repo text not null references repos(id),
            sha text not null,
            parents text not null,        -- JSON list of shas
            author_name text not null,
            author_email text not null,
            authored_at text not null,
            committer_name text not null,
            committed_at text not null,
            message text not null,
            diff text not null,           -- capped per file and per commit
            diff_truncated integer not null default 0,
            files_changed integer not null,
            insertions integer not null,
            deletions integer not null,
            on_default_branch integer not null,
            pr_number integer,            -- the pull request it merged or squashed, if any
            trusted integer not null,
            redactions text not null default '{}',
            primary key (repo, sha)
        )"""
    )
    db.execute("create index commits_date on commits (repo, committed_at)")
    db.execute(
        """create table commit_files (
            repo text not null,
            sha text not null,
            path text not null,
            old_path text,                -- renames and copies
            status text not null,         -- git's letter: A, M, D, R, C, T
            insertions integer,           -- null for binary files
            deletions integer,
            binary integer not null default 0,
            skipped text,                 -- why its diff is not stored (missing object, too large)
            primary key (repo, sha, path),
            foreign key (repo, sha) references commits(repo, sha)
        )"""
    )
    db.execute(
        """create table pull_requests (
            repo text not null references repos(id),
            number integer not null,
            title text not null,
            body text not null default '',
            state text not null,          -- open, closed, merged
            author text,
            base text,
            head text,
            from_fork integer not null default 0,
            labels text not null default '[]',
            created_at text,
            updated_at text,
            merged_at text,
            merge_sha text,
            files text not null default '[]',   -- JSON: path, status, additions, deletions, patch
            source text not null,         -- api, or history (recovered from merge and squash commits)
            trusted integer not null,
            redactions text not null default '{}',
            primary key (repo, number)
        )"""
    )
    db.execute(
        """create table pr_comments (
            repo text not null,
            pr_number integer not null,
            id text not null,             -- kind and GitHub's id
            kind text not null,           -- review, review_comment, comment
            author text,
            body text not null,
            state text,                   -- a review's verdict
            path text,                    -- a review comment's file
            created_at text,
            redactions text not null default '{}',
            primary key (repo, id),
            foreign key (repo, pr_number) references pull_requests(repo, number)
        )"""
    )
    db.execute(
        """create table documents (
            repo text not null references repos(id),
            kind text not null,           -- file (the head's text files), doc, wiki
            path text not null,
            sha text not null,            -- the blob's id
            text text not null,
            bytes integer not null,
            at_commit text not null,      -- the head it was read at
            stale integer not null default 0,
            redactions text not null default '{}',
            primary key (repo, kind, path)
        )"""
    )
    db.execute(
        """create table chunks (
            id text primary key,          -- hash of the source and the text
            repo text not null,
            kind text not null,           -- file, doc, wiki, commit, pull_request
            path text,
            sha text,
            pr_number integer,
            title text not null default '',
            start_line integer,
            tokens integer not null,
            text text not null,
            trusted integer not null,
            stale integer not null default 0,
            created_at text not null
        )"""
    )
    db.execute("create index chunks_source on chunks (repo, kind, path)")
    db.execute(
        """create table cursors (
            repo text not null,
            source text not null,
            value text not null,
            updated_at text not null,
            primary key (repo, source)
        )"""
    )
    db.execute(
        """create table ingest_runs (
            id integer primary key,
            repo text not null,
            started_at text not null,
            finished_at text,
            status text not null,         -- running, ok, partial, failed
            sources text not null,        -- JSON: per source, counts and any error
            redactions text not null default '{}',
            error text
        )"""
    )


@migration
def m003_chunks_fts(db: sqlite_utils.Database) -> None:
    """Full-text search over chunks (the refusal policy's and retrieval's index), kept in
    step by triggers on update and delete (the update trigger: see m005); new chunks are indexed by ingest's store a
    batch at a time (see `ingest.store`), much faster than a trigger per row. On its own
    because `enable_fts` commits as it goes: replacing the index makes a rerun after an
    interruption safe."""
    db.table("chunks").enable_fts(["title", "text"], create_triggers=True, tokenize="porter", replace=True)
    db.execute("drop trigger chunks_ai")


@migration
def m004_teacher_cache(db: sqlite_utils.Database) -> None:
    """What the teacher LLM answered for each chunk, by prompt version and model, so a
    build over the same data sends no request again (malformed answers included)."""
    db.execute(
        """create table teacher_cache (
            key text primary key,         -- hash of the chunk id, the prompt version and the model
            chunk_id text not null,
            prompt_version text not null,
            model text not null,
            status text not null,         -- ok, malformed
            pairs text not null,          -- JSON: the parsed question/answer pairs (none when malformed)
            raw text not null,            -- the teacher's output as it came
            created_at text not null
        )"""
    )


@migration
def m005_chunks_fts_reindex_on_change(db: sqlite_utils.Database) -> None:
    """The full-text index re-reads a chunk only when its indexed columns change. The
    update trigger fired on every update: marking chunks stale, and upserting the same
    chunks again (every file's chunks on each new head, every chunk on `ingest --full`),
    rewrote their index entries although a chunk's text is hashed into its id."""
    db.execute("drop trigger if exists chunks_au")
    db.execute(
        """create trigger chunks_au after update on chunks
        when old.title is not new.title or old.text is not new.text
        begin
            insert into chunks_fts (chunks_fts, rowid, title, text) values ('delete', old.rowid, old.title, old.text);
            insert into chunks_fts (rowid, title, text) values (new.rowid, new.title, new.text);
        end"""
    )


@migration
def m006_ingest_runs_process(db: sqlite_utils.Database) -> None:
    """Which process runs an ingest (host and pid), so the next run can tell a run that was
    killed (SIGKILL, a lost machine) from one still going, and mark it `killed`."""
    db.execute("alter table ingest_runs add column host text")
    db.execute("alter table ingest_runs add column pid integer")


@migration
def m007_eval(db: sqlite_utils.Database) -> None:
    """Gate runs, every answer of every model they asked, and the answers kept for reuse.

    A run's models are `base`, `base#2` (the base asked again: the noise), the promoted
    version and the candidate. An answer set that cannot change (the same model, question
    set, engine and decoding: the key) is kept in `eval_cache` and reused by later runs."""
    db.execute(
        """create table eval_runs (
            id integer primary key,
            lineage text not null,
            version integer not null,     -- the candidate
            current integer,              -- the promoted version it was compared with
            dataset text,
            status text not null,         -- running, done, failed
            started_at text not null,
            finished_at text,
            scores text not null default '{}',    -- JSON: model → suite scores
            rules text not null default '{}',     -- JSON: [eval.gate] as applied
            verdict text,                 -- JSON: eval.gate.Verdict
            decision text,                -- promote, reject
            report text,                  -- the report's folder
            error text,
            host text,
            pid integer
        )"""
    )
    db.execute("create index eval_runs_lineage on eval_runs (lineage, version, id)")
    db.execute(
        """create table eval_answers (
            run_id integer not null references eval_runs (id),
            model text not null,          -- base, base#2, <lineage>@v<N>
            suite text not null,          -- general, domain
            qid text not null,
            question text not null,
            expected text not null,
            reply text not null,
            correct integer not null,
            mc_correct integer,           -- general: the multiple-choice answer was right
            kind text,                    -- domain: the question's kind
            primary key (run_id, model, suite, qid)
        )"""
    )
    db.execute(
        """create table eval_cache (
            key text primary key,         -- hash of model, suite, questions, engine, dtype, decoding
            model text not null,
            suite text not null,
            created_at text not null,
            summary text not null,        -- JSON: the suite's report without its results
            results text not null         -- JSON: the per-question results
        )"""
    )


@migration
def m008_policy_calibrations(db: sqlite_utils.Database) -> None:
    """Thresholds of the refusal policy, calibrated by `repotune eval refusal --calibrate`, each for
    the domain index (by its hash) it was calibrated on: a rebuilt index needs its own."""
    db.execute(
        """create table policy_calibrations (
            id integer primary key,
            index_hash text not null,
            threshold real not null,
            figures text not null,        -- JSON: both halves' rates at the threshold
            created_at text not null
        )"""
    )
    db.execute("create index policy_calibrations_index on policy_calibrations (index_hash, id)")


@migration
def m009_cycles(db: sqlite_utils.Database) -> None:
    """The continual loop's runs (one row per cycle, its steps and figures as JSON) and the
    requests for a cycle that the server's webhook writes and the tuner takes."""
    db.execute(
        """create table cycle_runs (
            id integer primary key,
            lineage text not null,
            trigger text not null,        -- schedule, now, webhook, up
            status text not null,         -- running, promoted, rejected, nothing_new, failed, killed
            step text,                    -- the step running, or the one that failed
            started_at text not null,
            finished_at text,
            steps text not null default '[]',     -- JSON: [{name, status, seconds, figures}]
            dataset text,                 -- the dataset's hash
            train_config text,            -- hash of what decides a training (train config, base)
            version integer,              -- the adapter it made
            error text,
            host text,
            pid integer
        )"""
    )
    db.execute("create index cycle_runs_lineage on cycle_runs (lineage, id)")
    db.execute(
        """create table cycle_requests (
            id integer primary key,
            received_at text not null,
            source text not null,         -- github:push, github:pull_request
            detail text not null default '{}',    -- JSON: ref, sha, delivery, PR number
            run_id integer references cycle_runs (id)  -- the cycle that took it; null while pending
        )"""
    )
