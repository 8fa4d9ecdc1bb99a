"""The domain suite: does the model know the repository, asked in words training never used?

Each question of a dataset's `eval.jsonl` (held-out phrasings of trained facts) is
answered greedily and scored by its key facts (`eval.facts`). Forward questions (what a
commit did, what a file holds) make the score, per kind and overall; reverse questions
(subject → sha, title → number) are scored apart, as the hardest kind to learn. Every
answer is also scored against the key facts of another question of its kind (the
`control`): a scorer that credits generic answers, or a model that says the same thing
to every question, shows there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from eval.facts import holds
from eval.results import Reported

MAX_NEW_TOKENS = 64


class Answerer(Protocol):
    def answer(self, questions: list[str], max_new_tokens: int = ...) -> list[str]: ...


@dataclass
class Result:
    id: str
    kind: str
    question: str
    expected: str
    reply: str
    correct: bool
    control: bool | None  # whether the reply holds another question's key facts


@dataclass
class Report(Reported):
    model: str
    adapter: str | None
    dataset: str
    n: int
    score: float  # forward questions
    reverse_score: float | None
    control: float  # should be near zero
    by_kind: dict[str, dict[str, float]]  # kind → n, score, control
    context: int = 0  # chunks retrieved into each prompt (eval.retrieval)
    results_path: str | None = None
    results: list[Result] = field(default_factory=list, repr=False)


def reverse(kind: str) -> bool:
    return kind.endswith("_reverse")


def run(answerer: Answerer, rows: list[dict[str, Any]], model: str, dataset: str, adapter: str | None = None,
        progress: Callable[[int, int], None] | None = None, batch: int = 16, context: int = 0) -> Report:
    rows = sorted((r for r in rows if r.get("key_facts")), key=lambda r: (r["kind"], r["id"]))
    others = _controls(rows)
    results: list[Result] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start: start + batch]
        replies = answerer.answer([r["messages"][0]["content"] for r in chunk], max_new_tokens=MAX_NEW_TOKENS)
        for r, reply in zip(chunk, replies, strict=True):
            question = r["messages"][0]["content"]
            other = others.get(r["id"])
            results.append(Result(
                r["id"], r["kind"], question, r["messages"][-1]["content"], reply,
                holds(reply, r["key_facts"], question),
                holds(reply, other, question) if other is not None else None))
        if progress:
            progress(len(results), len(rows))
    report = _report(results, model, adapter, dataset)
    report.context = context
    return report


def _controls(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each question, the key facts of the next question of its kind (none when it is alone)."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    out = {}
    for same in by_kind.values():
        for i, r in enumerate(same):
            if len(same) > 1:
                out[r["id"]] = same[(i + 1) % len(same)]["key_facts"]
    return out


def _share(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def _report(results: list[Result], model: str, adapter: str | None, dataset: str) -> Report:
    per: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        per[r.kind].append(r)
    forward = [r.correct for r in results if not reverse(r.kind)]
    backward = [r.correct for r in results if reverse(r.kind)]
    controls = [bool(r.control) for r in results if r.control is not None]
    return Report(
        model=model, adapter=adapter, dataset=dataset, n=len(results), score=_share(forward),
        reverse_score=_share(backward) if backward else None, control=_share(controls),
        by_kind={k: {"n": len(v), "score": _share([r.correct for r in v]),
                     "control": _share([bool(r.control) for r in v if r.control is not None])}
                 for k, v in sorted(per.items())},
        results=results,
    )
