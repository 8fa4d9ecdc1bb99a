"""The gate's rules: what a candidate must keep and gain to be promoted."""

from __future__ import annotations

import math

import pytest

from eval.gate import Rules, Scores, decide
from repotune.config import ConfigError, parse

BASE = Scores(general=0.50, general_mc=0.48, domain=0.00)
RULES = Rules()


def test_a_first_version_that_keeps_general_and_learns_the_domain_passes() -> None:
    verdict = decide(RULES, BASE, Scores(general=0.49, general_mc=0.48, domain=0.60), current=None)
    assert verdict.promote and verdict.reasons == []
    assert [c.name for c in verdict.checks] == ["general", "general_mc", "domain"]


@pytest.mark.parametrize(("candidate", "failed"), [
    (Scores(general=0.47, general_mc=0.48, domain=0.60), ["general"]),  # lost 3 points greedy
    (Scores(general=0.50, general_mc=0.40, domain=0.60), ["general_mc"]),
    (Scores(general=0.50, general_mc=0.48, domain=0.05), ["domain"]),  # learned too little over the base
    (Scores(general=0.20, general_mc=0.30, domain=0.90), ["general", "general_mc"]),  # learned by forgetting
])
def test_a_candidate_that_forgets_or_learns_too_little_is_rejected_with_its_reasons(candidate, failed) -> None:
    verdict = decide(RULES, BASE, candidate, current=None)
    assert not verdict.promote
    assert [c.name for c in verdict.checks if not c.passed] == failed
    assert len(verdict.reasons) == len(failed) and all("against the base" in r for r in verdict.reasons)


def test_a_later_version_is_judged_against_the_current_one_on_the_domain() -> None:
    current = Scores(general=0.50, general_mc=0.48, domain=0.70)
    assert decide(RULES, BASE, Scores(0.50, 0.48, 0.69), current).promote
    worse = decide(RULES, BASE, Scores(0.50, 0.48, 0.60), current)
    assert not worse.promote and "current version's 0.700" in worse.reasons[0]


def test_a_margin_is_never_below_the_noise_of_the_measurement() -> None:
    candidate = Scores(general=0.46, general_mc=0.48, domain=0.60)
    assert not decide(RULES, BASE, candidate, None).promote
    noisy = decide(RULES, BASE, candidate, None, noise=0.04)  # the base scored 0.04 apart twice
    assert noisy.promote and "noise" in noisy.checks[0].rule and noisy.checks[0].threshold == 0.46


def test_with_refusals_trained_in_only_multiple_choice_judges_general_knowledge() -> None:
    verdict = decide(Rules(mc_only=True), BASE, Scores(general=0.10, general_mc=0.48, domain=0.60), None)
    assert verdict.promote and [c.name for c in verdict.checks] == ["general_mc", "domain"]


def test_the_rules_come_from_the_config() -> None:
    gate = parse({"eval": {"gate": {"general_margin": 0.05, "domain_floor": 0.3}}}).eval.gate
    assert (gate.general_margin, gate.domain_margin, gate.domain_floor) == (0.05, 0.02, 0.3)
    with pytest.raises(ConfigError, match=r"eval\.gate\.general_margin"):
        parse({"eval": {"gate": {"general_margin": -1}}})


def test_eval_run_with_no_candidate_says_so_and_records_no_run(tmp_path, clean_env) -> None:
    from eval import judge
    from repotune import config as cfg
    from repotune import db as store

    settings = cfg.Settings(config=parse({"paths": {"data_dir": str(tmp_path / "state")}, "tuner": {"lineage": "p"}}),
                            source=None, root=tmp_path, secrets=cfg.Secrets())
    with pytest.raises(judge.EvalRunError, match="p has no candidate version to judge"):
        judge.judge(settings)
    with pytest.raises(judge.EvalRunError, match="p has no version v3"):
        judge.judge(settings, version=3)
    assert not list(store.open_db(store.db_path(settings.data_dir)).query("select * from eval_runs"))


def test_a_candidate_trained_under_a_budget_is_asked_about_the_facts_it_covers() -> None:
    """A budget trained only the newest facts: the gate asks about those (every model the same questions), not the
    whole history, which even a perfect adapter would fail for facts it never saw."""
    from types import SimpleNamespace

    from eval.judge import covered
    from repotune.manifests import Coverage

    rows = [{"id": d, "sources": {"commit": d, "date": f"2026-12-0{d}T10:00:00+00:00"}, "key_facts": {}}
            for d in "1234"]
    budgeted = SimpleNamespace(version=3, manifest=SimpleNamespace(training=SimpleNamespace(
        covers=Coverage(facts=2, of=4, since="2026-12-03T10:00:00+00:00", until="2026-12-04T10:00:00+00:00"))))
    kept, scope = covered(rows, budgeted)  # type: ignore[arg-type]
    assert [r["id"] for r in kept] == ["3", "4"]
    assert "2 of 4 held-out questions" in scope and "newest 2 of 4 facts, 2026-12-03 to 2026-12-04" in scope
    whole = SimpleNamespace(version=1, manifest=SimpleNamespace(training=SimpleNamespace(covers=None)))
    assert covered(rows, whole) == (rows, "all 4 held-out questions")  # type: ignore[arg-type]


def test_with_trained_refusals_more_real_questions_refused_or_more_attacks_answered_is_rejected() -> None:
    rules = Rules(mc_only=True, refusal_margin=0.02, max_false_refusal=0.05)
    base = Scores(0.5, 0.48, 0.0, false_refusal=0.0, attack_success=1.0)
    current = Scores(0.5, 0.48, 0.6, false_refusal=0.04, attack_success=0.10)
    good = Scores(0.5, 0.48, 0.6, false_refusal=0.05, attack_success=0.11)
    assert decide(rules, base, good, current).promote
    refuses = Scores(0.5, 0.48, 0.6, false_refusal=0.20, attack_success=0.05)  # safer by refusing real questions
    verdict = decide(rules, base, refuses, current)
    assert [c.name for c in verdict.checks if not c.passed] == ["false_refusal"]
    assert "against the current version's 0.040 + 0.020" in verdict.reasons[0]
    leaks = Scores(0.5, 0.48, 0.6, false_refusal=0.04, attack_success=0.30)
    assert [c.name for c in decide(rules, base, leaks, current).checks if not c.passed] == ["attack_success"]
    # a first version: at most max_false_refusal more real questions refused than the base, attacks not held
    first = decide(rules, base, Scores(0.5, 0.48, 0.6, false_refusal=0.04, attack_success=0.5), None)
    assert first.promote and [c.name for c in first.checks][-1] == "false_refusal"
    assert not decide(rules, base, Scores(0.5, 0.48, 0.6, false_refusal=0.08, attack_success=0.5), None).promote
    # without trained refusals there are no refusal scores and no such checks
    assert all(c.name not in ("false_refusal", "attack_success") for c in decide(RULES, BASE, BASE, None).checks)


def test_the_flow_of_general_answers_gives_the_standard_error_of_the_net_change() -> None:
    """18 answers turned wrong and 15 right of 125: a net −3 whose standard error is that of a paired
    difference, sqrt(b + c − (b − c)² / n) / n, about 4.6 points; answers that move neither way add none."""
    from eval.judge import Flow

    pairs = ([("a", True, "b", False)] * 18 + [("a", False, "b", True)] * 15 + [("a", True, "a", True)] * 80
             + [("a", False, "c", False)] * 12)
    flow = Flow.of(pairs)
    assert (flow.n, flow.turned_wrong, flow.turned_right, flow.reworded) == (125, 18, 15, 45)
    assert flow.standard_error == round(math.sqrt(33 - 9 / 125) / 125, 4) == 0.0459
    assert Flow.of([("a", True, "a", True)] * 10).standard_error == 0.0 and Flow.of([]).n == 0
