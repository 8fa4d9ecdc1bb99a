"""Retrieval as the reference beside an adapter: full-text search over the ingested chunks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eval import domain
from eval.retrieval import WithContext
from repotune import datasets, retrieval
from repotune import db as store
from tests import training


class Echo:
    """Says back the prompt it was given: what the context holds, the answer holds."""

    def answer(self, questions, max_new_tokens=64):
        return list(questions)


@pytest.fixture
def prepared(tmp_path, tiny):
    settings = training.prepared(tmp_path)
    return settings, store.open_db(store.db_path(settings.data_dir))


def test_a_pasted_short_sha_finds_its_commit_first(prepared) -> None:
    settings, db = prepared
    for sha, subject in db.execute("select sha, message from commits").fetchall():
        for asked in (sha[:7], sha[:10], sha):
            hits = retrieval.search(db, settings.repo, f"What did commit {asked} change?")
            assert hits and hits[0].kind == "commit" and subject.splitlines()[0] in hits[0].text, asked
    # An id is looked up as an id, however many words of the question match other chunks better.
    sha = db.execute("select sha from commits order by committed_at").fetchone()[0]
    crowded = f"What did commit {sha[:8]} change in parse words lines text words count parse?"
    first = retrieval.search(db, settings.repo, crowded)[0]
    assert first.kind == "commit" and sha[:12] in first.text and first.text.startswith("Commit ")
    # Words the full-text syntax would read as operators, quotes and stars are searched as words.
    assert retrieval.search(db, settings.repo, 'parse" AND (lines OR NEAR*) -') is not None
    assert retrieval.search(db, settings.repo, "?! ...") == []
    assert retrieval.search(db, "another/repo", "parse") == []


def test_the_context_brings_the_facts_and_the_scorer_credits_only_what_is_said(prepared) -> None:
    settings, db = prepared
    rows = [r for r in datasets.read(datasets.find(settings.data_dir, "proj"), "eval") if r["kind"] == "commit"]
    assert rows
    bare = domain.run(Echo(), rows, "echo", "d")
    assert bare.score == 0.0  # saying the question back holds no fact
    found = domain.run(WithContext(Echo(), db, settings.repo, k=3), rows, "echo", "d", context=3)
    assert found.score == 1.0 and found.context == 3


def test_the_cli_asks_with_retrieved_context(tmp_path, tiny) -> None:
    training.prepared(tmp_path)
    config = training.write_config(tmp_path, tmp_path / "project")
    done = subprocess.run([sys.executable, "-m", "repotune.cli", "eval", "domain", "--context", "3", "--json",
                           "--config", str(config)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["context"] == 3 and report["n"] > 0
