"""The shipped general-knowledge set: enough questions, well formed, a fixed eval split."""

from collections import Counter

import pytest

from eval import questions
from eval.scoring import matches, normalize


@pytest.fixture(scope="module")
def general():
    return questions.load()


def test_the_set_is_large_and_has_a_held_out_split(general):
    assert len(general) >= 300
    splits = Counter(q.split for q in general)
    assert splits["eval"] >= 100 and splits["train"] >= 200
    assert set(Counter(q.category for q in general)) == {
        "science", "geography", "history", "arithmetic", "language", "programming"
    }
    for category in {q.category for q in general}:
        assert sum(q.split == "eval" and q.category == category for q in general) >= 15


def test_ids_and_questions_are_unique(general):
    assert len({q.id for q in general}) == len(general)
    assert len({normalize(q.question) for q in general}) == len(general)


def test_no_wrong_option_is_accepted_as_right(general):
    for q in general:
        for i, choice in enumerate(q.choices):
            if i != q.correct:
                assert not matches(choice, q.accepted), f"{q.id}: option {choice!r} would score as right"
        assert matches(q.answer, q.accepted)


def test_units_questions_are_there(general):
    with_units = [q for q in general if any(u in q.answer for u in ("km/s", "°C", "°F", " K", "m/s²", "km"))]
    assert len(with_units) >= 10
    light = [q for q in general if "speed of light" in q.question.lower()]
    assert light and matches("299,792 km/s", light[0].accepted) and not matches("300,000 m/s", light[0].accepted)


def test_a_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = questions.general_path().read_text().splitlines()[0]
    path.write_text(good + "\n" + good.replace('"correct": ', '"correct": 9, "x": ') + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: "):
        questions.load(path)
