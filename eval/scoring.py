"""Scoring an answer against a question's canonical answer and accepted aliases.

Normalized match: both sides are lower-cased, Unicode-normalized, stripped of
punctuation and articles, and split into tokens; the answer matches when its tokens
appear as a contiguous run in the reply's tokens. So "The capital of France is Paris."
matches "Paris", while "120" does not match "12". Decimal points and minus signs inside
numbers are kept ("-12" is not "12", "2.5" is not "25"), thousands separators are not
("300,000" is "300000"), and "×", "^" and brackets survive, so "3 × 10^5" is not
"3 10 5" and "[0, 1, 2, 3]" does not contain "[0, 1, 2]".
"""

from __future__ import annotations

import re
import unicodedata

_ARTICLES = frozenset({"a", "an", "the"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TOKEN = re.compile(r"-?\d+(?:\.\d+)?|[^\W_]+|[×^%°()\[\]{}]")


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("−", "-").replace("–", "-")
    text = _THOUSANDS.sub("", text)
    found = _TOKEN.findall(text)
    # Articles are noise ("the Pacific" is "Pacific"), unless they are the whole answer.
    return [t for t in found if t not in _ARTICLES] or found


def normalize(text: str) -> str:
    return " ".join(tokens(text))


def matches(reply: str, answers: list[str]) -> bool:
    """Whether any accepted answer occurs, token for token, in the reply."""
    have = tokens(reply)
    for answer in answers:
        want = tokens(answer)
        if want and any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1)):
            return True
    return False
