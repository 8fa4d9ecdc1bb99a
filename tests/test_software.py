"""The made-up software histories builtin:tiny is pre-trained on: drawn from a seed, in
phrasings of their own, so that no domain question is one the base has seen."""

from __future__ import annotations

from repotune import builtin, software
from tuner.data.templates import PHRASINGS


def test_pretraining_never_uses_a_phrasing_of_the_data_build():
    ours = (software.COMMIT_QUESTIONS + software.COMMIT_REVERSE + software.PULL_QUESTIONS + software.PULL_REVERSE
            + software.DEF_QUESTIONS)
    theirs = {p.lower() for train, held_out in PHRASINGS.values() for p in train + held_out}
    assert not {q.lower() for q in ours} & theirs


def test_a_history_is_the_same_for_the_same_seed_and_differs_for_another():
    a, b, c = software.history(1, 30, 5, 10), software.history(1, 30, 5, 10), software.history(2, 30, 5, 10)
    assert a == b and a != c
    assert len(a.commits) == 30 and len(a.pulls) == 5 and len(a.definitions) == 10
    assert all(len(x.sha) == 40 and int(x.sha, 16) >= 0 for x in a.commits)
    assert len({x.sha for x in a.commits}) == 30


def test_each_fact_is_asked_in_several_phrasings_with_its_answer():
    h = software.history(3, 10, 3, 4)
    pairs = list(software.questions(h, 3, per_fact=4))
    commit = h.commits[0]
    about = [(q, a) for q, a in pairs if commit.title in a and "commit" in a.lower() or commit.sha[:7] in a]
    assert len({q for q, _ in about}) >= 4
    assert all(commit.title in a or commit.sha[:7] in a for _, a in about)
    log = "\n".join(software.log_text(h))
    assert f"commit {commit.sha}\nAuthor: {commit.author}" in log and commit.files[0] in log
    assert all(d.name in log and d.doc in log for d in h.definitions)


def test_the_tokenizer_keeps_each_digit_a_token_of_its_own(tmp_path, inputs):
    from transformers import AutoTokenizer

    from .conftest import micro_recipe

    tok = AutoTokenizer.from_pretrained(builtin.build_tokenizer(micro_recipe(), inputs, cache=tmp_path).path)
    pieces = [tok.decode([i]) for i in tok("commit 3f9a2c17 in 2024")["input_ids"]]
    assert all(not any(ch.isdigit() for ch in p) or len(p.strip()) == 1 for p in pieces), pieces
