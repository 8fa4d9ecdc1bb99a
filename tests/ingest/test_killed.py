"""A real `repotune ingest` killed with SIGKILL halfway through a long history: nothing it
committed is lost or broken, and the next run finishes the work, storing nothing twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.ingest_history import generate

COMMITS, PRS = 6_000, 300


def _count(db_file: Path, table: str) -> int:
    """Rows committed so far, read as another process would while the ingest writes."""
    if not db_file.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute(f"select count(*) from {table}").fetchone()[0])
    except sqlite3.OperationalError:  # the store is still being made
        return 0


def _group_gone(pgid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_an_ingest_killed_with_sigkill_keeps_what_it_committed_and_a_rerun_finishes(tmp_path, clean_env):
    repo, _ = generate(tmp_path, COMMITS, PRS, secrets=20)
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "state"}"\n[ingest]\nrepo = "{repo}"\n')
    db_file = tmp_path / "state" / "repotune.db"
    cli = [sys.executable, "-m", "repotune.cli", "ingest", "--config", str(config), "--json"]
    # A session of its own: the kill goes to the main process only, as the kernel's OOM killer
    # or `kill -9 PID` would send it, and the group tells whether its workers outlive it.
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and _count(db_file, "commits") < COMMITS // 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the ingest ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        assert _group_gone(proc.pid, 30), "the ingest's workers outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    db = sqlite3.connect(db_file)
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    stored = db.execute("select count(*) from commits").fetchone()[0]
    assert 0 < stored < COMMITS, stored  # killed in the middle of the history
    # The cursor names only commits that are stored, each with its files.
    done = json.loads(db.execute("select value from cursors where source = 'git'").fetchone()[0])["done"]
    assert done and all(db.execute("select 1 from commits where sha = ?", [sha]).fetchone() for sha in done)
    db.close()

    rerun = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["status"] == "ok"
    assert result["sources"]["git"]["items"] == COMMITS - stored  # only what the killed run had not committed

    db = sqlite3.connect(db_file)
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    db.execute("insert into chunks_fts (chunks_fts) values ('integrity-check')")  # raises if index and chunks differ
    one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    assert one("select count(*) from commits") == one("select count(distinct sha) from commits") == COMMITS
    assert one("select count(*) from commits") == int(
        subprocess.run(["git", "-C", str(repo), "rev-list", "--count", "main"], capture_output=True, text=True,
                       check=True).stdout)
    assert one("select count(*) from commits c where not exists (select 1 from commit_files f where f.sha = c.sha)"
               " and c.files_changed > 0") == 0
    assert one("select count(*) from pull_requests") == PRS
    # Every commit's chunks are there once: as many as a store made in one uninterrupted run holds.
    whole = tmp_path / "whole.toml"
    whole.write_text(f'[paths]\ndata_dir = "{tmp_path / "whole"}"\n[ingest]\nrepo = "{repo}"\n')
    subprocess.run([*cli[:-3], "--config", str(whole)], check=True, capture_output=True, timeout=600)
    reference = sqlite3.connect(tmp_path / "whole" / "repotune.db")
    for sql in ("select count(*) from chunks where stale = 0", "select count(*) from commit_files",
                "select count(*) from documents where stale = 0", "select count(*) from chunks_fts"):
        assert one(sql) == reference.execute(sql).fetchone()[0], sql
    heads = json.loads(one("select value from cursors where source = 'git'"))
    assert heads["heads"] == {"main": subprocess.run(["git", "-C", str(repo), "rev-parse", "main"],
                                                     capture_output=True, text=True, check=True).stdout.strip()}
    runs = [r[0] for r in db.execute("select status from ingest_runs order by id")]
    assert runs == ["killed", "ok"]
