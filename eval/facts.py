"""Key facts: whether an answer about the repository holds what it had to hold.

Every held-out domain question (`eval.jsonl`) carries its `key_facts`: the words a right
answer must contain (`words`, of which at least `share` are needed) and the strings it
must contain whole (`exact`, e.g. a path), or a sha or number given back (`sha`, `number`
for the reverse questions). Words the question itself already says never count: an answer
that repeats the question is not credited for it.

Kinds and what they key on (made by `tuner.data.templates`):
commit — two thirds of its subject's content words (the first 8 when longer);
pull request — two thirds of its title's content words; file — half of its top-level
names; definition — its path, and half of the content words of its doc comment (a name several
files define is asked with its path, and keys on the doc's words alone); doc and
section — two thirds of the heading's words; reverse questions — the commit's sha (any
prefix of 7 characters or more) or the pull request's number.

A scorer that credits generic answers would look good for nothing, so the same answers
are also scored against *another* item's key facts of the same kind (`control`): it
should stay near zero.
"""

from __future__ import annotations

import math
import re
from typing import Any

from eval.scoring import tokens
from repotune.relevance import stem

_STOP_WORDS = """a an the and or but if then else of to in on at by for with from into onto over under as is are
was were be been being it its this that these those there here what which who whom whose when where why how do does
did done have has had not no yes so than too very can could should would will shall may might must i you he she we
they me him her us them my your his our their about after before up down out off again once all any both each few
more most other some such only own same just also now use uses used add adds added make makes made new via per"""
STOP = frozenset(_STOP_WORDS.split())
_HEX = re.compile(r"\b[0-9a-f]{7,40}\b")
_NUMBER = re.compile(r"(?<![\w.])#?(\d+)\b")


def content_words(text: str, most: int | None = None) -> list[str]:
    """The text's words that carry meaning (no stop words, no one-letter words), in order, once each."""
    seen: list[str] = []
    for t in tokens(text):
        if len(t) > 1 and t not in STOP and not t.isdigit() and t not in seen:
            seen.append(t)
    return seen[:most] if most else seen


def holds(answer: str, facts: dict[str, Any], question: str) -> bool:
    """Whether `answer` holds `facts`, not counting what `question` already says."""
    said = {stem(t) for t in tokens(question)}
    have = {stem(t) for t in tokens(answer)}
    if "sha" in facts:
        sha = str(facts["sha"])
        return any(sha.startswith(h) for h in _HEX.findall(answer.lower()))
    if "number" in facts:
        return str(facts["number"]) in set(_NUMBER.findall(answer))
    for text in facts.get("exact", []):
        if text.lower() not in answer.lower():
            return False
    wanted = [w for w in {stem(w) for w in facts.get("words", [])} if w not in said]
    if not wanted:
        return bool(facts.get("exact"))  # nothing left to ask of the words: the exact strings decide
    needed = max(1, math.ceil(float(facts.get("share", 2 / 3)) * len(wanted) - 1e-9))
    return sum(w in have for w in wanted) >= needed
