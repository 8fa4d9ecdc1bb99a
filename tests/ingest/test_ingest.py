"""Ingest on real git repositories: what is stored, what is redacted, reruns and resumes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest import sources as sources_mod
from ingest.run import ingest
from ingest.store import Store, status
from repotune import db as store_db
from repotune.config import PathsSection
from tests.ingest.conftest import PLANTED, GitRepo


def _db(settings):
    return store_db.open_db(store_db.db_path(settings.data_dir))


def _all_text(db) -> str:
    """Every text column of every ingest table, concatenated."""
    parts = []
    for table in ("commits", "commit_files", "pull_requests", "pr_comments", "documents", "chunks"):
        for row in db.query(f"select * from {table}"):
            parts += [str(v) for v in row.values()]
    return "\n".join(parts)


def test_history_is_stored_as_git_reports_it(history: GitRepo, settings_for) -> None:
    settings = settings_for(history.path, workers=1, branches=["main", "wip"])
    result = ingest(settings, sources=["git"])
    assert result.status == "ok", result.errors
    db = _db(settings)
    shas = history.git("rev-list", "--all").split()
    assert {r["sha"] for r in db.query("select sha from commits")} == set(shas)
    # line stats as git counts them, file by file
    numstat = history.git("log", "--all", "--numstat", "--format=%H", "-M").splitlines()
    sha, expected = None, {}
    for line in numstat:
        if len(line) == 40 and "\t" not in line:
            sha = line
        elif line:
            added, _deleted, _ = line.split("\t", 2)
            expected.setdefault(sha, []).append(None if added == "-" else int(added))
    for sha, adds in expected.items():
        stored = [r["insertions"] for r in db.query("select insertions from commit_files where sha = ?", [sha])]
        assert sorted(stored, key=str) == sorted(adds, key=str), sha
    # the diff as git prints it (these are under the caps and hold no secret), and in the chunks too
    for row in db.query("select sha, diff from commits where parents not like '% %' and redactions = '{}'"):
        shown = history.git("show", "--format=", "-M", "--no-color", row["sha"])
        assert row["diff"].strip() == shown.strip(), row["sha"]
        chunks = "".join(r["text"] for r in db.query(
            "select text from chunks where sha = ? and kind = 'commit' order by rowid", [row["sha"]]))
        assert chunks.endswith(row["diff"]), row["sha"]
    rename = next(db.query("select * from commit_files where status = 'R'"))
    assert (rename["old_path"], rename["path"]) == ("calc.py", "calculator.py")
    logo = next(db.query("select * from commit_files where path = 'logo.png'"))
    assert logo["binary"] == 1 and logo["insertions"] is None
    merge = next(db.query("select * from commits where message like 'Merge pull request%'"))
    assert merge["pr_number"] == 7 and len(merge["parents"].split()) == 2
    squash = next(db.query("select * from commits where message like 'Document subtraction%'"))
    assert squash["pr_number"] == 9
    # trust: the unmerged branch's commit is kept but not trusted; merged work is
    wip = next(db.query("select * from commits where message = 'Unmerged experiment'"))
    assert (wip["on_default_branch"], wip["trusted"]) == (0, 0)
    mul = next(db.query("select * from commits where message = 'Add multiply'"))
    assert mul["trusted"] == 1
    assert "def mul(a, b):" in mul["diff"]


def test_planted_secrets_are_redacted_everywhere_and_counted(history: GitRepo, settings_for) -> None:
    settings = settings_for(history.path, workers=2)
    result = ingest(settings)
    assert result.status == "ok", result.errors
    db = _db(settings)
    stored = _all_text(db)
    for secret in PLANTED:
        assert secret not in stored
    kinds = result.redactions
    for kind in ("aws-key", "github-token", "private-key", "password-in-url", "secret-file"):
        assert kinds[kind] >= 1, kinds
    assert "[REDACTED:aws-key]" in stored and "[REDACTED:private-key]" in stored
    # the .env file and the key file are not stored at all, at the head or in history
    paths = {r["path"] for r in db.query("select path from documents")}
    assert ".env" not in paths and "deploy/id_rsa" not in paths
    assert status(db)["counts"]["redactions"] >= 5


def test_a_rerun_stores_nothing_twice_and_a_new_commit_is_all_it_reads(history: GitRepo, settings_for) -> None:
    settings = settings_for(history.path, workers=1)
    ingest(settings)
    db = _db(settings)
    before = status(db)["counts"]
    again = ingest(settings)
    assert {k: r.items for k, r in again.reports.items()} == {"git": 0, "github": 0, "snapshot": 0, "docs": 0}
    assert status(db)["counts"] == before
    history.commit(
        "Add divide",
        {"calculator.py": (history.path / "calculator.py").read_text() + "\n\ndef div(a, b):\n    return a / b\n"},
    )
    third = ingest(settings)
    assert third.reports["git"].items == 1
    code = [p for p in history.git("ls-files").split() if p not in ("README.md", "docs/usage.md")]
    assert third.reports["snapshot"].items == len(code) - 3  # not .env, the key file, the png
    after = status(db)["counts"]
    assert after["commits"] == before["commits"] + 1
    # the old version of calculator.py's chunks are stale, not deleted
    assert after["stale_chunks"] >= 1
    full = ingest(settings, full=True)
    assert full.reports["git"].items == after["commits"]
    assert status(db)["counts"]["commits"] == after["commits"]
    # the full-text index holds every chunk once, as stored (FTS5 checks it against the table)
    db.execute("insert into chunks_fts (chunks_fts, rank) values ('integrity-check', 1)")
    assert db.execute("select count(*) from chunks_fts").fetchone()[0] == status(db)["counts"]["chunks"] + after[
        "stale_chunks"]


def test_a_run_killed_halfway_resumes_after_its_last_batch(tmp_path, settings_for, monkeypatch) -> None:
    repo = GitRepo(tmp_path / "long")
    for i in range(30):
        repo.commit(f"Change {i}", {"notes.txt": f"line {i}\n" * (i + 1)})
    settings = settings_for(repo.path, workers=1)
    monkeypatch.setattr(sources_mod, "BATCH", 10)
    writes = []
    real_write = Store.write

    def dying_write(self, batch, source=None, cursor=None):
        if source == "git" and len(writes) == 2:
            raise KeyboardInterrupt  # killed while the third batch is being written
        writes.append(len(batch))
        real_write(self, batch, source, cursor)

    monkeypatch.setattr(Store, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        ingest(settings, sources=["git"])
    db = _db(settings)
    assert db.execute("select count(*) from commits").fetchone()[0] == 20
    run = next(db.query("select * from ingest_runs order by id desc limit 1"))
    assert run["status"] == "interrupted"
    monkeypatch.setattr(Store, "write", real_write)
    resumed = ingest(settings, sources=["git"])
    assert resumed.reports["git"].items == 10  # only what the killed run had not committed
    assert db.execute("select count(*) from commits").fetchone()[0] == 30


def test_chunks_fit_the_token_budget_and_keep_definitions_whole(history: GitRepo, settings_for) -> None:
    settings = settings_for(history.path, workers=1, chunk_tokens=64)
    ingest(settings, sources=["snapshot", "docs"])
    db = _db(settings)
    chunks = list(db.query("select * from chunks where stale = 0"))
    assert chunks and all(c["tokens"] <= 64 for c in chunks)
    calc = [c for c in chunks if c["path"] == "calculator.py"]
    assert any(c["text"].startswith("class Calculator:") or "\nclass Calculator:" in c["text"] for c in calc)
    assert not any("def add" in c["text"] and not c["text"].count("return a + b") for c in calc)
    readme = [c for c in chunks if c["path"] == "README.md"]
    assert readme[0]["kind"] == "doc" and readme[0]["title"] == "Calculator"
    # the policy's full-text index finds chunks by their words
    hits = list(
        db.query(
            "select chunks.path from chunks_fts join chunks on chunks.rowid = chunks_fts.rowid "
            "where chunks_fts match 'multiply OR mul'"
        )
    )
    assert any(h["path"] == "calculator.py" for h in hits)
    ids = {c["id"] for c in chunks}
    ingest(settings, sources=["snapshot", "docs"], full=True)
    assert {c["id"] for c in db.query("select id from chunks where stale = 0")} == ids


def test_the_cli_runs_ingest_and_reports_status_as_json(history: GitRepo, tmp_path, clean_env) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "cli-state"}"\n[ingest]\nrepo = "{history.path}"\n')
    run = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "ingest", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    on_main = len(history.git("rev-list", "main").split())
    assert result["status"] == "ok" and result["sources"]["git"]["items"] == on_main
    shown = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "ingest", "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
    )
    counts = json.loads(shown.stdout)["counts"]
    assert set(counts) >= {"commits", "pull_requests", "documents", "chunks", "redactions"}
    assert counts["commits"] == on_main and counts["chunks"] > 0 and counts["redactions"] > 0


def test_docs_are_the_docs_folders_and_the_wiki_one_document_per_page(history: GitRepo, tmp_path, settings_for):
    wiki = GitRepo(tmp_path / "project.wiki", branch="master")
    wiki.commit("Pages", {"Home.md": "# Home\n\nWelcome.\n\n## Install\n\npip install calculator\n",
                          "Release-process.md": "# Releasing\n\nTag, then push.\n", "logo.png": b"\x89PNG\0"})
    settings = settings_for(history.path, workers=1, wiki=str(wiki.path))
    result = ingest(settings, sources=["docs"])
    assert result.status == "ok", result.errors
    db = _db(settings)
    docs = {(r["kind"], r["path"]) for r in db.query("select kind, path from documents")}
    assert docs == {("doc", "README.md"), ("doc", "docs/usage.md"), ("wiki", "Home.md"), ("wiki", "Release-process.md")}
    titles = {r["title"] for r in db.query("select title from chunks where kind = 'wiki'")}
    assert "Home" in titles
    wiki.commit("Drop a page", {})
    wiki.git("rm", "-q", "Release-process.md")
    wiki.commit("Remove the release page")
    ingest(settings, sources=["docs"])
    stale = {r["path"] for r in db.query("select path from documents where stale = 1")}
    assert stale == {"Release-process.md"}


def test_the_full_text_index_is_rewritten_only_for_what_it_indexes(history: GitRepo, settings_for) -> None:
    settings = settings_for(history.path, workers=1)
    ingest(settings, sources=["snapshot", "docs"])
    db = _db(settings)

    def segments() -> int:
        return int(db.execute("select count(*) from chunks_fts_data").fetchone()[0])

    before = segments()
    db.execute("update chunks set stale = 1")
    ingest(settings, sources=["snapshot", "docs"], full=True)  # the same chunks again: upserted, not stale
    assert segments() == before  # neither touched the index
    assert db.execute("select count(*) from chunks where stale = 1").fetchone()[0] == 0
    rowid = db.execute("select rowid from chunks where path = 'calculator.py' limit 1").fetchone()[0]
    with db.conn:
        db.execute("update chunks set title = 'abacus' where rowid = ?", [rowid])
    hits = [r[0] for r in db.execute("select rowid from chunks_fts where chunks_fts match 'abacus'")]
    assert hits == [rowid]
    db.execute("insert into chunks_fts (chunks_fts, rank) values ('integrity-check', 1)")


def _contents(db) -> dict[str, set]:
    """What the sources stored, without the run's times."""
    queries = {
        "commits": "select repo, sha, message, diff, trusted from commits",
        "pull_requests": "select number, title, body, trusted from pull_requests",
        "documents": "select kind, path, text, stale from documents",
        "chunks": "select id, kind, path, tokens, text, stale from chunks",
    }
    return {table: {tuple(r.values()) for r in db.query(sql)} for table, sql in queries.items()}


def test_sources_side_by_side_store_what_they_store_one_after_the_other(history: GitRepo, tmp_path,
                                                                         settings_for) -> None:
    # Two workers: the head's files (snapshot, docs) are read beside the history (git, then
    # github); one worker: every source in turn, in this process.
    side = settings_for(history.path, workers=2, docs=["docs/**"])
    together = ingest(side)
    assert together.status == "ok", together.errors
    assert list(together.reports) == ["git", "github", "snapshot", "docs"]  # the order the sources are named in
    alone = settings_for(history.path, workers=1, docs=["docs/**"])
    alone = alone.model_copy(update={"config": alone.config.model_copy(
        update={"paths": PathsSection(data_dir=tmp_path / "alone")})})
    assert ingest(alone).status == "ok"
    stored, expected = _contents(_db(side)), _contents(_db(alone))
    assert stored == expected
    assert all(stored.values())
    again = ingest(side)
    assert {n: r.items for n, r in again.reports.items()} == {"git": 0, "github": 0, "snapshot": 0, "docs": 0}


def test_a_run_killed_in_the_history_stops_the_sources_beside_it(tmp_path, settings_for, monkeypatch) -> None:
    repo = GitRepo(tmp_path / "long")
    for i in range(30):
        repo.commit(f"Change {i}", {f"pkg/mod{i}.py": f"def f{i}():\n    return {i}\n"})
    settings = settings_for(repo.path, workers=2)
    monkeypatch.setattr(sources_mod, "BATCH", 10)
    real_write = Store.write
    git_writes = []

    def dying_write(self, batch, source=None, cursor=None):
        if source == "git" and len(git_writes) == 1:
            raise KeyboardInterrupt
        if source == "git":
            git_writes.append(len(batch))
        real_write(self, batch, source, cursor)

    monkeypatch.setattr(Store, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        ingest(settings)
    db = _db(settings)
    run = next(db.query("select * from ingest_runs order by id desc limit 1"))
    assert run["status"] == "interrupted" and run["finished_at"]
    assert db.execute("select count(*) from commits").fetchone()[0] == 10
    monkeypatch.setattr(Store, "write", real_write)
    resumed = ingest(settings)
    assert resumed.status == "ok", resumed.errors
    assert db.execute("select count(*) from commits").fetchone()[0] == 30
    assert db.execute("select count(*) from documents where stale = 0").fetchone()[0] == 30


def _open_files_under(folder) -> list[str]:
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(folder)):
                held.append(target)
    return held


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_runs_in_one_long_lived_process_leave_no_store_open(history: GitRepo, settings_for, monkeypatch) -> None:
    settings = settings_for(history.path, workers=2)
    for full in (True, False):  # the sources side by side, then a rerun with nothing new
        assert ingest(settings, full=full).status == "ok"
        assert _open_files_under(settings.data_dir) == []

    def interrupted(self, batch, source=None, cursor=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(settings, full=True)
    assert _open_files_under(settings.data_dir) == []


def test_the_history_s_progress_ends_at_its_total(history: GitRepo, settings_for) -> None:
    seen: list[tuple[int, int | None]] = []
    settings = settings_for(history.path, workers=1)
    ingest(settings, sources=["git"], progress=lambda name, done, total, note: seen.append((done, total)))
    commits = len(history.git("rev-list", "main").split())
    assert seen[-1] == (commits, commits)  # the total is counted beside `git log`, and shown by the end
