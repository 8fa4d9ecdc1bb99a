"""The base model's own answers to general questions, replayed so an adapter keeps its voice.

Replaying the general set's gold answers ("Au", "Paris") teaches their terse style, and a
model that learns it forgets how it answered before: the general score falls with the
style. Replaying what the base itself says to the same questions (self-distillation)
asks the adapter to keep both what the base knew and how it said it.

The answers are greedy, made in-process once per base model (by its fingerprint) and
cached in `data_dir/cache/answers/<fingerprint>.json` batch by batch, so a dataset built
again is the same and a build killed halfway keeps what was answered (a cache file that
does not read is made again). An answer cut by the token limit is trimmed to its last
whole sentence, or left out when it has none: training on a cut answer would teach the
model to stop mid-sentence.
Only `train`-split questions are ever asked here; the eval split stays unseen.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from eval.questions import Question
from repotune import models

MAX_TOKENS = 96
BATCH = 16
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")

Progress = Callable[[str, int, int | None, str], None]


def cache_path(data_dir: Path, base: models.Base) -> Path:
    return data_dir / "cache" / "answers" / f"{base.fingerprint}.json"


def answers(base: models.Base, questions: Sequence[Question], data_dir: Path,
            progress: Progress | None = None) -> dict[str, str]:
    """The base's own answer to each question that it answered in whole sentences, by question id."""
    progress = progress or (lambda *a: None)
    if any(q.split != "train" for q in questions):
        raise ValueError("only train-split questions are replayed")
    path = cache_path(data_dir, base)
    cached = _load(path)
    missing = [q for q in questions if q.id not in cached]
    if missing:
        from eval.local import LocalModel

        model = LocalModel(base.path, batch_size=BATCH)
        for i in range(0, len(missing), BATCH):
            batch = missing[i: i + BATCH]
            for q, (reply, ended) in zip(batch, model.generate([q.question for q in batch], MAX_TOKENS), strict=True):
                cached[q.id] = whole(reply, ended)
            _save(path, cached)  # after each batch: a build killed halfway keeps what was answered
            progress("the base's own answers", min(i + BATCH, len(missing)), len(missing), "")
    return {q.id: text for q in questions if (text := cached[q.id])}


def whole(reply: str, ended: bool) -> str | None:
    """`reply` as far as it is whole: all of it when it ended by itself, else up to its last
    sentence end (None when there is none, or nothing is left)."""
    if ended:
        return reply or None
    ends = [m.end() for m in _SENTENCE_END.finditer(reply)]
    return reply[: ends[-1]].strip() if ends else None


def _load(path: Path) -> dict[str, str | None]:
    """The cached answers; a file that does not read as them (cut, edited by hand) is made again."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, str | None) for v in data.values()):
        return {}
    return data


def _save(path: Path, cached: dict[str, str | None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(cached, ensure_ascii=False, indent=0, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
