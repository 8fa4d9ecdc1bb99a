"""The domain decision: whether a request's words are about the domain, from them alone.

A system prompt asking a model to stay on topic is known not to hold ("ignore all
previous instructions"), so the decision is made from the words of the request alone,
with the domain index (`repotune.relevance`): no instruction inside a request can change
it, because nothing in it is obeyed, only scored. The gateway makes it before a request
reaches the model (`serve.policy`); `repotune eval refusal` makes the same one over its
sets, so the kernel owns it (eval may not import serve).

`decide` is a pure function of the request and the index. It scores **every user turn**
(the model acts on all of them: a request split over turns is an attack family), and a
`/v1/completions` prompt as one turn. A turn of fewer than `FOLLOW_UP_WORDS` meaningful
words ("and why?", "show me an example") is a follow-up and is scored together with the
user turn before it. Greetings and questions about the bot itself are allowed; a
request with no user words at all (only a system message, or a prompt of token ids) is
not. The refusal text is taken out of a turn before it is scored: quoting it says nothing
about the domain. The request is allowed when its lowest turn scores at least the
threshold. With `policy.score_parts`, a turn of several parts (clauses cut at sentence
ends, commas, colons, dashes, and words such as "but", "instead", "now") also has each part
of at least `PART_WORDS` meaningful words scored on its own, and counts as its lowest: an
off-domain request dressed in the domain's words ("after running `repotune train`,
recommend a pizza place in Naples") is judged by its request, not by its framing. It is a
trade, measured (benchmarks/RESULTS.md): a real question whose second clause leans on the
first ("…, which setting gives it more time?") is judged by that clause too.

`refused` is the other half, for a model that refuses by itself (`policy.mode` `model` or
`both`): whether its reply is the refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from repotune.relevance import DomainIndex, terms

FOLLOW_UP_WORDS = 3
_GREETING = re.compile(
    r"(hi|hello|hey|hiya|yo|good (morning|afternoon|evening)|thanks|thank you|thx|cheers|ok(ay)?|bye|goodbye"
    r"|who are you|what are you|what can you do|what do you know|what can i ask( you)?|help|how do i use you"
    r"|what is this|are you a bot)( there)?[\s!.?,]*(\s*(please|bot|assistant))?[\s!.?]*",
    re.IGNORECASE)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # in_domain, greeting, no_index (nothing ingested yet); off_domain, no_text
    score: float | None = None  # the lowest turn's relevance
    turns: list[float] = field(default_factory=list)  # each scored turn's relevance, in order


def user_turns(body: dict[str, Any]) -> list[str]:
    """The texts the model would act on: every user turn of a chat, or the prompts of a completion."""
    if "messages" in body:
        return [text_of(m.get("content")) for m in body["messages"]
                if isinstance(m, dict) and m.get("role") == "user"]
    prompt = body.get("prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    return [p for p in prompts if isinstance(p, str)]  # token-id prompts carry no words to score


def text_of(content: Any) -> str:
    """A message's text: the string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


# Where a turn is cut into the parts scored on their own: sentence ends, semicolons, colons,
# commas and dashes between clauses, and the words that join a second request to a first.
_PARTS = re.compile(r"(?<=[.!?;:,])\s+|\s+[-–—]+\s+|\s+(?:but|instead|then|also|and also|now|anyway|so)\s+",
                    re.IGNORECASE)
PART_WORDS = 3  # a part with fewer meaningful words than this is not scored on its own


def parts(text: str, least: int = PART_WORDS) -> list[str]:
    """The parts of a turn that carry a request of their own (at least `least` meaningful words); none
    when the turn is one part."""
    found = [p for p in _PARTS.split(text) if p and len(terms(p)) >= least]
    return found if len(found) > 1 else []


def decide(turns: list[str], index: DomainIndex | None, threshold: float, refusal: str,
           split: bool = False) -> Decision:
    """Allow or refuse a request whose user turns are `turns`; see the module docstring."""
    if index is None:
        return Decision(True, "no_index")
    if not any(t.strip() for t in turns):  # no user words (or a prompt of token ids): nothing shows it is allowed
        return Decision(False, "no_text")
    texts: list[str] = []
    scored: list[str] = []
    for turn in turns:
        text = " ".join(turn.replace(refusal, " ").split())
        if _GREETING.fullmatch(text) or not text:
            continue
        if len(terms(text)) < FOLLOW_UP_WORDS and texts:
            scored.append(f"{texts[-1]} {text}")
        else:
            scored.append(text)
        texts.append(text)
    if not scored:
        return Decision(True, "greeting")
    pieces = [parts(text) if split else [] for text in scored]
    flat = index.scores(scored + [p for found in pieces for p in found])
    scores, rest = flat[: len(scored)], iter(flat[len(scored):])
    scores = [min([score, *(next(rest) for _ in found)]) for score, found in zip(scores, pieces, strict=True)]
    low = min(scores)
    return Decision(low >= threshold, "in_domain" if low >= threshold else "off_domain", low, scores)


def refused(text: str, refusal: str) -> bool:
    """Whether a reply begins with the refusal text (leading white space aside)."""
    return bool(refusal) and text.lstrip().startswith(refusal)
