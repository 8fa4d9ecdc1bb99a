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


def test_the_speed_a_budget_is_planned_at_is_the_median_of_the_last_three_runs() -> None:
    """One run made while a server kept the cores busy (a few tokens a second) does not cut the next plan."""
    from types import SimpleNamespace

    from tuner.train.speed import recent

    def run(speed: float, backend: str = "trl", fingerprint: str = "abc") -> SimpleNamespace:
        training = SimpleNamespace(tokens_per_s=speed, backend=backend)
        return SimpleNamespace(manifest=SimpleNamespace(training=training), base_fingerprint=fingerprint)

    versions = [run(1.0), run(90.0), run(80.0, "unsloth"), run(85.0, fingerprint="other"), run(86.0), run(4.0)]
    assert recent(versions, "trl", "abc") == 86.0  # 4, 86 and 90: the newest three of this base and backend
    assert recent(versions[:2], "trl", "abc") == 45.5
    assert recent([], "trl", "abc") == 0.0 and recent(versions, "trl", "new") == 0.0


def test_a_kept_trial_speed_is_read_back_and_a_file_that_does_not_read_counts_as_none(tmp_path) -> None:
    """A trial is remembered for a run taken up again; a cut or hand-edited file means measuring again."""
    from tuner.train import speed

    assert speed.known(tmp_path, "trl:abc") == 0.0  # nothing kept yet
    speed.remember(tmp_path, "trl:abc", 82.94)
    speed.remember(tmp_path, "trl:def", 5.0)
    assert speed.known(tmp_path, "trl:abc") == 82.9 and speed.known(tmp_path, "trl:def") == 5.0
    (tmp_path / speed.FILE).write_text('{"trl:abc": 82.9')  # cut off mid-write by hand
    assert speed.known(tmp_path, "trl:abc") == 0.0
    (tmp_path / speed.FILE).write_text('["not", "a", "mapping"]')
    assert speed.known(tmp_path, "trl:abc") == 0.0
    speed.remember(tmp_path, "trl:abc", 80.0)  # a new trial writes a good file over it
    assert speed.known(tmp_path, "trl:abc") == 80.0


def test_a_trial_that_timed_nothing_is_not_kept_as_the_speed(tmp_path, monkeypatch) -> None:
    """A trial that measured 0 tokens a second says so to the run and leaves nothing that the next run
    would read back as a speed (it measures again)."""
    from types import SimpleNamespace

    from repotune.config import TrainSection
    from tuner.train import speed

    trials: list[float] = []
    monkeypatch.setattr(speed, "measure", lambda *a: trials.append(0.0) or 0.0)
    backend, base = SimpleNamespace(name="trl"), SimpleNamespace(fingerprint="abc", path=tmp_path)
    for _ in range(2):
        assert speed.for_budget([], backend, base, [], TrainSection(), tmp_path) == (0.0, True)
    assert len(trials) == 2 and not (tmp_path / speed.FILE).exists()


OLDER_AND_LARGER = (
    [_row("file", {"path": "big.py@2222"}, "2026-01-01")] * 8
    + [_row("commit", {"commit": "c" * 40}, "2026-02-01")] * 2
    + [_row("general", {})] * 4
)


def test_the_room_a_fact_too_large_leaves_goes_to_more_passes_over_the_kept_ones() -> None:
    # 140 tokens a pass; 100 hold the newest commit (20) and 2 of the 4 general rows: 40 a pass, room for 2.5
    # passes, capped at twice the planned one.
    planned = budget.plan(OLDER_AND_LARGER, ten_each, budget=100, times=1)
    assert {budget.fact(r) for r in planned.rows} - {None} == {"commit:" + "c" * 40}
    assert planned.more == budget.MAX_PASSES
    # 70 tokens for 1 pass: 20 + 1 general row (30 a pass), room for 2.33; planned at 2 passes: 1.17 of them.
    planned = budget.plan(OLDER_AND_LARGER, ten_each, budget=70, times=2)
    assert planned.rows == [OLDER_AND_LARGER[8], OLDER_AND_LARGER[9], OLDER_AND_LARGER[10]]
    assert planned.more == round(70 / 60, 3)


def test_no_more_passes_when_the_kept_facts_fill_the_budget_or_overrun_it() -> None:
    assert budget.plan(ROWS, ten_each, budget=180, times=2).more == 1.0  # 180 spent of 180
    assert budget.plan(ROWS, ten_each, budget=1, times=1).more == 1.0  # the newest fact alone is over it
    assert budget.plan(ROWS, ten_each, budget=120 * 3, times=3).more == 1.0  # everything fits: as configured
