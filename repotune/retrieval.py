"""Searching what was ingested: the chunks most about a question.

A commit or pull request the question names by id (a sha or a prefix of one; #N, PR N)
is looked up by that id first: its first chunk holds its message. The rest comes from
`chunks_fts` (SQLite FTS5, porter stemming), which ranks chunks by BM25. A question is turned
into a query of its meaningful words, any of which may match; a word that looks like a
sha (seven or more hex characters) matches as a prefix, since people paste short shas and
commit chunks hold twelve characters of theirs (a longer one is cut to those twelve).
Ids are what such a search is best at and what an adapter learns worst, so retrieval is
the reference an adapter is measured beside.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils  # loaded at run time by repotune.db (see there)


SHA_CHARS = 12  # of a commit's sha in its chunk (ingest.workers): a longer one is searched by these
_WORD = re.compile(r"[A-Za-z0-9_]+")
_HEX = re.compile(r"[0-9a-f]{7,40}")
_PR = re.compile(r"(?:#|\bPR\s*#?|\bpull request\s*#?)(\d+)\b", re.IGNORECASE)
_STOP_WORDS = """a an the and or of to in on at by for with from is are was were be it its this that what which
who when where why how do does did done have has had not no can could should would will about after before me you i
tell say said explain show give"""
_STOP = frozenset(_STOP_WORDS.split())


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    kind: str
    title: str
    text: str


def query(text: str) -> str | None:
    """An FTS5 query for `text`: its meaningful words, any of them; None when it has none."""
    terms = []
    for word in _WORD.findall(text):
        low = word.lower()
        if low in _STOP or len(low) < 2:
            continue
        term = f'"{low[:SHA_CHARS]}"*' if _HEX.fullmatch(low) else f'"{low}"'
        if term not in terms:
            terms.append(term)
    return " OR ".join(terms) or None


def search(db: sqlite_utils.Database, repo: str, text: str, k: int = 3) -> list[Hit]:
    """The `k` chunks of `repo` most about `text` (fewer when fewer match): first the commits and
    pull requests it names by id, then the best-ranked by its words."""
    found = _by_id(db, repo, text)[:k]
    seen = {h.chunk_id for h in found}
    return found + [h for h in _by_words(db, repo, text, k + len(found)) if h.chunk_id not in seen][: k - len(found)]


def _by_id(db: sqlite_utils.Database, repo: str, text: str) -> list[Hit]:
    """The first chunk (its message or description) of each commit named by a sha (or a prefix of
    one, seven characters or more) and each pull request named as #N or PR N."""
    hits: list[Hit] = []
    for word in dict.fromkeys(w.lower() for w in _WORD.findall(text)):
        if _HEX.fullmatch(word):
            hits += _first(db, "kind = 'commit' and sha like ?", [repo, word + "%"])
    for number in dict.fromkeys(int(n) for n in _PR.findall(text)):
        hits += _first(db, "kind = 'pull_request' and pr_number = ?", [repo, number])
    return hits


def _first(db: sqlite_utils.Database, where: str, args: list[object]) -> list[Hit]:
    row = db.execute(f"select id, kind, title, text from chunks where repo = ? and stale = 0 and {where} "
                     "order by rowid limit 1", args).fetchone()  # the first cut: the message
    return [Hit(*row)] if row else []


def _by_words(db: sqlite_utils.Database, repo: str, text: str, k: int) -> list[Hit]:
    q = query(text)
    if q is None:
        return []
    try:
        rows = db.execute(
            "select c.id, c.kind, c.title, c.text from chunks_fts f join chunks c on c.rowid = f.rowid "
            "where chunks_fts match ? and c.repo = ? and c.stale = 0 order by f.rank limit ?", [q, repo, k]).fetchall()
    except sqlite3.OperationalError as e:  # a query FTS5 cannot parse: nothing found rather than a crash
        if "fts5" in str(e).lower() or "syntax" in str(e).lower():
            return []
        raise
    return [Hit(*row) for row in rows]
