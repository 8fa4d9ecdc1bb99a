"""Planning a run under a budget: the newest facts first, the rest in proportion."""

from __future__ import annotations

from tuner.train import budget


def _row(kind: str, source: dict, date: str = "") -> dict:
    return {"kind": kind, "sources": {**source, "date": date} if source else {}, "messages": []}


ROWS = (
    [_row("commit", {"commit": "a" * 40}, "2026-01-01")] * 2
    + [_row("commit", {"commit": "b" * 40}, "2026-02-01")] * 2
    + [_row("file", {"path": "x.py@1111"}, "2026-03-01")] * 2
    + [_row("definition", {"path": "x.py@1111"}, "2026-03-01")] * 2
    + [_row("general", {})] * 4
)


def ten_each(rows):
    return [10] * len(rows)


def test_a_budget_that_holds_everything_changes_nothing() -> None:
    planned = budget.plan(ROWS, ten_each, budget=120 * 3, times=3)
    assert planned.rows == ROWS and planned.covers is None
    assert budget.plan(ROWS, ten_each, budget=0, times=3).covers is None  # no budget


def test_the_newest_facts_are_kept_and_the_others_cut_in_proportion() -> None:
    # 120 tokens a pass, 2 passes: 240 planned; 180 hold three quarters of each part.
    planned = budget.plan(ROWS, ten_each, budget=180, times=2)
    facts = {budget.fact(r) for r in planned.rows} - {None}
    assert facts == {"path:x.py", "commit:" + "b" * 40}  # the file (all 4 of its rows) and the newer commit
    assert sum(r["kind"] == "general" for r in planned.rows) == 3
    c = planned.covers
    assert c is not None and (c.facts, c.of, c.since, c.until) == (2, 3, "2026-02-01", "2026-03-01")


def test_at_least_the_newest_fact_is_trained() -> None:
    planned = budget.plan(ROWS, ten_each, budget=1, times=1)
    assert {budget.fact(r) for r in planned.rows} == {"path:x.py"}
    assert planned.covers is not None and planned.covers.facts == 1


def test_passes_count_steps_when_they_are_fixed() -> None:
    assert budget.passes(examples=10, epochs=3, max_steps=0, batch=4) == 3
    assert budget.passes(examples=10, epochs=3, max_steps=5, batch=4) == 2.0


def test_a_file_is_one_fact_whatever_its_path_holds() -> None:
    assert budget.fact({"sources": {"path": "docs/a@b.md@1111"}}) == "path:docs/a@b.md"
    assert budget.fact({"sources": {"pr": 7}}) == "pr:7" and budget.fact({"sources": {}}) is None
