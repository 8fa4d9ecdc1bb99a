"""The general-knowledge suite: does the model still know what any base model knows?

Each `eval`-split question is answered greedily and scored by normalized match against
its answer and aliases (`eval.scoring`); with `mc`, each is also scored as multiple
choice, by which of the four options the model finds most likely as its whole reply.
Every answer is kept beside the totals, so a drop can be read question by question.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from eval.questions import Question
from eval.results import Reported
from eval.scoring import matches


class Answerer(Protocol):
    def answer(self, questions: list[str]) -> list[str]: ...

    def option_logprobs(self, question: str, options: list[str]) -> list[float]: ...


@dataclass
class Result:
    id: str
    category: str
    question: str
    expected: str
    reply: str
    correct: bool
    mc_choice: str | None = None
    mc_correct: bool | None = None


@dataclass
class Report(Reported):
    model: str
    adapter: str | None
    n: int
    correct: int
    score: float
    by_category: dict[str, float]
    mc_score: float | None = None
    results_path: str | None = None
    results: list[Result] = field(default_factory=list, repr=False)


def run(
    answerer: Answerer,
    questions: list[Question],
    model: str,
    adapter: str | None = None,
    mc: bool = False,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 32,
) -> Report:
    results: list[Result] = []
    for start in range(0, len(questions), batch):
        chunk = questions[start : start + batch]
        replies = answerer.answer([q.question for q in chunk])
        for q, reply in zip(chunk, replies, strict=True):
            result = Result(q.id, q.category, q.question, q.answer, reply, matches(reply, q.accepted))
            if mc:
                scores = answerer.option_logprobs(q.question, list(q.choices))
                best = max(range(len(scores)), key=scores.__getitem__)
                result.mc_choice, result.mc_correct = q.choices[best], best == q.correct
            results.append(result)
        if progress:
            progress(len(results), len(questions))
    return _report(results, model, adapter, mc)


def _report(results: list[Result], model: str, adapter: str | None, mc: bool) -> Report:
    per: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        per[r.category].append(r.correct)
    n = len(results)
    correct = sum(r.correct for r in results)
    return Report(
        model=model,
        adapter=adapter,
        n=n,
        correct=correct,
        score=round(correct / n, 4) if n else 0.0,
        by_category={c: round(sum(v) / len(v), 4) for c, v in sorted(per.items())},
        mc_score=round(sum(bool(r.mc_correct) for r in results) / n, 4) if mc and n else None,
        results=results,
    )
