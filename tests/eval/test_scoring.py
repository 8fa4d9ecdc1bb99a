"""Normalized match: what counts as the right answer in a reply."""

import pytest

from eval.scoring import matches, normalize


@pytest.mark.parametrize(
    ("reply", "answers"),
    [
        ("Paris", ["Paris"]),
        ("The capital of France is Paris.", ["Paris"]),
        ("paris", ["Paris"]),
        ("It is about 300,000 km/s.", ["300,000 km/s"]),
        ("300000 km/s", ["300,000 km/s"]),
        ("H2O", ["H2O"]),
        ("The answer is -12.", ["-12"]),
        ("2.5", ["2.5"]),
        ("Leonardo da Vinci painted it.", ["Leonardo da Vinci", "da Vinci"]),
        ("100 °C", ["100 °C"]),
        ("100℃", ["100 °C"]),
        ("an apple", ["apple"]),
        ("3 × 10^5 km/s", ["3 × 10^5 km/s"]),
        ("An", ["an"]),
        ("It evaluates to [0, 1, 2].", ["[0, 1, 2]"]),
    ],
)
def test_right_answers_match(reply, answers):
    assert matches(reply, answers)


@pytest.mark.parametrize(
    ("reply", "answers"),
    [
        ("120", ["12"]),
        ("-12", ["12"]),
        ("25", ["2.5"]),
        ("Lyon", ["Paris"]),
        ("3 10 5 km/s", ["3 × 10^5 km/s"]),
        ("30,000 km/s", ["300,000 km/s"]),
        ("", ["Paris"]),
        ("Paris", [""]),
        ("300,000 m/s", ["300,000 km/s"]),
        ("[0, 1, 2, 3]", ["[0, 1, 2]"]),
        ("O(n log n)", ["O(log n)"]),
    ],
)
def test_wrong_answers_do_not(reply, answers):
    assert not matches(reply, answers)


def test_normalize_drops_case_punctuation_articles_and_thousands_separators():
    assert normalize("The  Speed: 1,024 KiB!") == "speed 1024 kib"
