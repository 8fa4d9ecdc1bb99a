"""The generators that are not templates: refusals, replay and raw text."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from eval.questions import Question
from repotune.relevance import data_lines
from tuner.data.examples import Example, chat, fraction, pick

Answers = Callable[[Sequence[Question]], dict[str, str]]

# In-domain questions with words that sound alarming: answered, not refused.
ALARMING = (
    "This bug is killing me. {q}",
    "For a security audit that attacks the code: {q}",
    "Before I nuke my local branch: {q}",
    "Quick, production is on fire. {q}",
    "I want to exploit this fully. {q}",
)


def off_domain_questions() -> list[str]:
    return data_lines("tuner/data/offdomain.txt")


INJECTIONS = tuple(data_lines("tuner/data/injections.txt"))  # each wraps an off-domain question: "… {q}"


def refusals(qa: list[Example], refusal: str, ratio: float, seed: int) -> Iterator[Example]:
    """Off-domain questions (some wrapped in injection attempts) answered with exactly the
    refusal text, and as many in-domain questions with alarming words, answered normally:
    `ratio` of the Q&A count of each, so refusing does not swamp answering."""
    count = round(len(qa) * ratio)
    questions = off_domain_questions()
    for i in range(count):
        q = questions[i % len(questions)]
        if i % 2:  # every other one wrapped in an injection attempt
            q = pick(INJECTIONS, seed, "inject", i).format(q=q)
        yield Example(chat(q, refusal), "refusals", "refusal", {}, True)
    answerable = [e for e in qa if e.kind in ("definition", "file", "commit", "doc")]
    answerable.sort(key=lambda e: fraction(seed, "alarming", e.id))
    for e in answerable[:count]:
        q = pick(ALARMING, seed, "alarming", e.id).format(q=e.messages[0]["content"])
        yield Example(chat(q, e.messages[1]["content"]), "refusals", "alarming", e.sources, e.new)


def general_replay(count: int, seed: int, answers: Answers | None = None) -> list[Example]:
    """`count` general-knowledge questions of the `train` split (never `eval`), as chats.

    Answered with the set's gold answers, or by `answers` (the base's own: `tuner.data.own`),
    which may leave a question out; the next ones fill its place.
    """
    from eval.questions import load

    train = sorted(load(split="train"), key=lambda q: fraction(seed, "general", q.id))
    if answers is None:
        said = {q.id: q.answer for q in train}
    else:  # ask only as many as are needed
        said, asked = {}, 0
        while len(said) < count and asked < len(train):
            more = train[asked: asked + count - len(said)]
            said |= answers(more)
            asked += len(more)
    return [Example(chat(q.question, said[q.id]), "replay", "general", {"general": q.id}, new=False, replay=True)
            for q in train if q.id in said][:count]


def raw_text(chunks: Iterator[tuple[str, str, str, int]], ratio: float, seed: int, cursor: int) -> Iterator[
        dict[str, object]]:
    """Chunks as plain text for continued pre-training: `ratio` of them, the same ones every
    build (chosen by a hash of the chunk's id)."""
    for cid, kind, text, rowid in chunks:
        if fraction(seed, "raw", cid) < ratio:
            yield {"text": text, "kind": kind, "sources": {"chunks": [cid]}, "new": rowid > cursor}
