"""Searching what was ingested: the chunks most about a question, by the store's full-text index.

`chunks_fts` (SQLite FTS5, porter stemming) ranks chunks by BM25. A question is turned
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
    """The `k` chunks of `repo` that rank best for `text` (fewer when fewer match)."""
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
