"""Retrieval as a reference: the model asked with the best-ranked chunks put before the question.

What full-text retrieval alone gives (the base with context), beside what an adapter
gives, and both together: the same questions, scored the same way, only the prompt
differs. The scorer still sees the question as asked, so words of the context are
credited only when the answer says them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from eval.domain import Answerer
from repotune import retrieval

if TYPE_CHECKING:
    import sqlite_utils  # loaded at run time by repotune.db (see there)

CHARS = 1200  # of each chunk: three fit a small model's context with the question


class WithContext:
    def __init__(self, answerer: Answerer, db: sqlite_utils.Database, repo: str, k: int = 3):
        self.answerer, self.db, self.repo, self.k = answerer, db, repo, k

    def prompt(self, question: str) -> str:
        hits = retrieval.search(self.db, self.repo, question, self.k)
        if not hits:
            return question
        context = "\n\n---\n\n".join(f"{h.title}\n{h.text[:CHARS]}" for h in hits)
        return f"Context from the repository:\n\n{context}\n\n---\n\nQuestion: {question}"

    def answer(self, questions: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        return self.answerer.answer([self.prompt(q) for q in questions], max_new_tokens=max_new_tokens)
