"""What the gate runs left in the store, read back: a version's last judgement, two versions compared."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Judgement:
    run: int
    status: str  # running, done, failed
    decision: str | None
    scores: dict[str, Any]
    verdict: dict[str, Any] | None
    report: str | None
    error: str | None
    finished_at: str | None


@dataclass
class Change:
    suite: str
    qid: str
    question: str
    before: str  # the first version's reply
    after: str
    right_before: bool
    right_after: bool


@dataclass
class Diff:
    lineage: str
    first: int
    second: int
    compared: int  # questions both answered
    changes: list[Change] = field(default_factory=list)

    @property
    def right_to_wrong(self) -> list[Change]:
        return [c for c in self.changes if c.right_before and not c.right_after]

    @property
    def wrong_to_right(self) -> list[Change]:
        return [c for c in self.changes if c.right_after and not c.right_before]


def last_judgement(db: Any, lineage: str, version: int) -> Judgement | None:
    """The newest gate run that judged `version` (None if none did)."""
    rows = list(db.query("select * from eval_runs where lineage = ? and version = ? order by id desc limit 1",
                         [lineage, version]))
    if not rows:
        return None
    r = rows[0]
    return Judgement(r["id"], r["status"], r["decision"], json.loads(r["scores"] or "{}"),
                     json.loads(r["verdict"]) if r["verdict"] else None, r["report"], r["error"], r["finished_at"])


def answers(db: Any, lineage: str, version: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest stored answer of `version` to each question, as candidate or as the promoted version."""
    rows = db.query(
        """select a.suite, a.qid, a.question, a.reply, a.correct from eval_answers a
           join eval_runs r on r.id = a.run_id
           where r.lineage = ? and r.status = 'done'
             and ((a.model = 'candidate' and r.version = ?) or (a.model = 'current' and r.current = ?))
           order by a.run_id""", [lineage, version, version])
    return {(r["suite"], r["qid"]): dict(r) for r in rows}  # later runs overwrite earlier ones


def diff(db: Any, lineage: str, first: int, second: int) -> Diff:
    """Every question both versions answered whose correctness changed between them."""
    a, b = answers(db, lineage, first), answers(db, lineage, second)
    both = sorted(set(a) & set(b))
    out = Diff(lineage, first, second, len(both))
    for key in both:
        x, y = a[key], b[key]
        if bool(x["correct"]) != bool(y["correct"]):
            out.changes.append(Change(key[0], key[1], x["question"], x["reply"], y["reply"], bool(x["correct"]),
                                      bool(y["correct"])))
    return out
