"""The key-fact scorer: right answers hold their facts; echoes, generic and other items' answers do not."""

from __future__ import annotations

import pytest

from eval.facts import content_words, holds

SUBJECT = {"words": content_words("Teach the parser to skip blank lines", most=8), "share": 2 / 3}


def test_stems_join_a_words_forms():
    from eval.facts import stem

    assert {stem(w) for w in ("skip", "skips", "skipped", "skipping")} == {"skip"}
    assert stem("lines") == stem("line") and stem("teaches") == stem("teach") and stem("parses") == stem("parse")
    assert stem("class") == "class" and stem("taught") != stem("teach")


def test_content_words_drop_stop_words_and_repeats():
    assert content_words("Add the parser, and the parser's tests to CI") == ["parser", "tests", "ci"]
    assert content_words("one two three four five six seven eight nine ten", most=8)[-1] == "eight"


@pytest.mark.parametrize(("answer", "right"), [
    ("Commit 1a2b3c4: Teach the parser to skip blank lines.", True),
    ("It taught the parser to skip lines that are blank.", True),
    ("It teaches the parser to skip blank lines.", True),  # "teaches" counts as "teach"
    ("The parser skipped blank lines.", True),  # 4 of its 5 words: parser, skip, blank, lines
    ("The parser skips lines.", False),  # 3 of 5
    ("It changed the parser.", False),  # 1 of 5
    ("Fix the typo in the README.", False),  # another commit's answer
    ("", False),
])
def test_a_commit_answer_holds_two_thirds_of_its_subjects_words(answer, right):
    assert holds(answer, SUBJECT, "What did commit 1a2b3c4 do?") is right


def test_words_the_question_already_says_do_not_count():
    question = "Why does the parser skip blank lines in commit 1a2b3c4?"
    assert not holds("Because the parser must skip blank lines.", SUBJECT, question)
    # With the question's words left out, nothing is left to ask of a subject it states whole.
    assert not holds("Teach the parser to skip blank lines.", SUBJECT, "Teach the parser to skip blank lines?")


def test_reverse_questions_want_the_sha_or_the_number():
    sha = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"
    for answer in ("Commit 1a2b3c4.", f"That is {sha[:12]}.", sha):
        assert holds(answer, {"sha": sha}, 'Which commit is "Teach the parser"?'), answer
    assert not holds("Commit 1a2b3c5.", {"sha": sha}, "?") and not holds("Commit 1a2b3c.", {"sha": sha}, "?")
    assert holds("Pull request #12.", {"number": 12}, "?") and holds("PR 12: the parser.", {"number": 12}, "?")
    assert not holds("Pull request #123.", {"number": 12}, "?") and not holds("Version 1.12", {"number": 12}, "?")


def test_a_definition_needs_its_path_and_half_of_what_it_does():
    facts = {"words": content_words("Split text into lines, dropping the blank ones."), "share": 0.5,
             "exact": ["src/parse.py"]}
    question = "Where is `parse` defined, and what does it do?"
    assert holds("In src/parse.py: it splits text into lines and drops blank ones.", facts, question)
    assert not holds("It splits text into lines and drops blank ones.", facts, question)  # no path
    assert not holds("In src/parse.py.", facts, question)  # not what it does
