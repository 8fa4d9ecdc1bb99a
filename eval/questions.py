"""The general-knowledge set (`eval/data/general.jsonl`) as typed questions.

One question per line: a short canonical answer with accepted aliases, four options with
the right one marked, a category and a fixed split. `train` questions may be replayed in
training data; `eval` questions never are, and are what the regression eval asks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

Split = Literal["train", "eval"]


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    question: str
    answer: str
    aliases: tuple[str, ...]
    choices: tuple[str, ...]
    correct: int
    split: Split

    @property
    def accepted(self) -> list[str]:
        return [self.answer, *self.aliases]


def general_path() -> Path:
    return Path(str(resources.files("eval") / "data" / "general.jsonl"))


def load(path: Path | None = None, split: Split | None = None) -> list[Question]:
    """Read and check the set; a malformed line is an error naming the file and line."""
    path = path or general_path()
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            q = _parse(json.loads(line))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{number}: {e}") from e
        if split is None or q.split == split:
            questions.append(q)
    return questions


def _parse(raw: dict[str, object]) -> Question:
    q = Question(
        id=str(raw["id"]),
        category=str(raw["category"]),
        question=str(raw["question"]),
        answer=str(raw["answer"]),
        aliases=tuple(map(str, raw["aliases"])),  # type: ignore[call-overload]
        choices=tuple(map(str, raw["choices"])),  # type: ignore[call-overload]
        correct=int(raw["correct"]),  # type: ignore[call-overload]
        split=raw["split"],  # type: ignore[arg-type]
    )
    if q.split not in ("train", "eval"):
        raise ValueError(f"split must be train or eval, not {q.split!r}")
    if len(q.choices) != 4 or len(set(q.choices)) != 4:
        raise ValueError("choices must be four distinct options")
    if not 0 <= q.correct < 4 or q.choices[q.correct] != q.answer:
        raise ValueError("choices[correct] must be the answer")
    return q
