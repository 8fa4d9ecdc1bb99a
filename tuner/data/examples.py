"""One training example: a chat, what it was made from, and by which generator."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


@dataclass
class Example:
    """A chat example in the `{"messages": [...]}` format, with its provenance.

    `sources` names what it was made from (commit sha, pull request number, path@sha,
    chunk ids) and when that changed last (`date`: a commit's date, a pull request's merge,
    the newest commit that touched a file; "" when unknown); `new` marks what came from
    sources ingested since the promoted adapter's data; `replay` marks earlier examples
    sampled to be trained on again with the new.
    """

    messages: list[dict[str, str]]
    generator: str  # templates, refusals, replay, raw
    kind: str  # commit, pull_request, file, definition, doc, section, refusal, alarming, general, raw
    sources: dict[str, Any] = field(default_factory=dict)
    new: bool = True
    replay: bool = False
    key_facts: dict[str, Any] | None = None  # held-out questions: what a right answer holds (eval.facts)

    @cached_property
    def id(self) -> str:
        """A hash of the messages and the generator: the same example built again has the same id."""
        key = json.dumps([self.generator, self.kind, self.messages], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    def row(self) -> dict[str, Any]:
        row = {"messages": self.messages, "id": self.id, "generator": self.generator, "kind": self.kind,
               "sources": self.sources, "new": self.new, "replay": self.replay}
        return row | ({"key_facts": self.key_facts} if self.key_facts is not None else {})

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Example:
        return cls(messages=row["messages"], generator=row["generator"], kind=row["kind"],
                   sources=row.get("sources", {}), new=bool(row.get("new")), replay=bool(row.get("replay")),
                   key_facts=row.get("key_facts"))


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def pick(options: tuple[str, ...] | list[str], seed: int, *key: object) -> str:
    """One of `options`, chosen by a hash of the seed and `key`: the same every build."""
    return options[stable_hash(seed, *key) % len(options)]


def stable_hash(*key: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")


def fraction(*key: object) -> float:
    """A number in [0, 1) fixed by `key`: for deterministic sampling and splits."""
    return stable_hash(*key) / 2**64
