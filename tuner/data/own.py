"""The base model's own answers to general questions, replayed so an adapter keeps its voice.

Replaying the general set's gold answers ("Au", "Paris") teaches their terse style, and a
model that learns it forgets how it answered before: the general score falls with the
style. Replaying what the base itself says to the same questions (self-distillation)
asks the adapter to keep both what the base knew and how it said it.

The answers are greedy, made once per base model (by its fingerprint) and cached in
`data_dir/cache/answers/<fingerprint>.json` batch by batch, so a dataset built again is the
same and a build killed halfway keeps what was answered (a cache file that does not read is
made again). Where a server runs this same base (`repotune up` starts the first cycle beside
it), its engine answers them, many at a time; else, or if it stops answering, they are made
in-process. An answer cut by the token limit is trimmed to its last
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

from eval.endpoint import EndpointError
from eval.questions import Question
from repotune import models

MAX_TOKENS = 96
BATCH = 16
SERVED_BATCH = 64  # questions sent to a server between two saves of the cache
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")

Progress = Callable[[str, int, int | None, str], None]
Generate = Callable[[list[str], int], list[tuple[str, bool]]]  # (questions, max tokens) -> (reply, ended) each


def cache_path(data_dir: Path, base: models.Base) -> Path:
    return data_dir / "cache" / "answers" / f"{base.fingerprint}.json"


def answers(base: models.Base, questions: Sequence[Question], data_dir: Path,
            progress: Progress | None = None, served: Generate | None = None) -> dict[str, str]:
    """The base's own answer to each question that it answered in whole sentences, by question id;
    `served`: a running server's `base` (`eval.endpoint.Endpoint.generate`), asked first."""
    progress = progress or (lambda *a: None)
    if any(q.split != "train" for q in questions):
        raise ValueError("only train-split questions are replayed")
    path = cache_path(data_dir, base)
    cached = _load(path)
    missing = [q for q in questions if q.id not in cached]
    label = "the base's own answers"
    done = 0
    if missing and served is not None:
        try:
            for i in range(0, len(missing), SERVED_BATCH):
                batch = missing[i: i + SERVED_BATCH]
                for q, (reply, ended) in zip(batch, served([q.question for q in batch], MAX_TOKENS), strict=True):
                    cached[q.id] = whole(reply, ended)
                _save(path, cached)
                done += len(batch)
                progress(label, done, len(missing), "from the server")
        except EndpointError as e:
            progress(label, done, len(missing), f"the server stopped answering ({e}); the rest in-process")
    rest = [q for q in missing if q.id not in cached]
    if rest:
        from eval.local import LocalModel

        model = LocalModel(base.path, batch_size=BATCH)
        for i in range(0, len(rest), BATCH):
            batch = rest[i: i + BATCH]
            for q, (reply, ended) in zip(batch, model.generate([q.question for q in batch], MAX_TOKENS), strict=True):
                cached[q.id] = whole(reply, ended)
            _save(path, cached)  # after each batch: a build killed halfway keeps what was answered
            done += len(batch)
            progress(label, done, len(missing), "")
    return {q.id: text for q in questions if (text := cached[q.id])}


def cached_all(base: models.Base, questions: Sequence[Question], data_dir: Path) -> bool:
    """Whether every question's answer is in the cache already (nothing to ask anyone)."""
    cached = _load(cache_path(data_dir, base))
    return all(q.id in cached for q in questions)


def served_base(url: str, key: str | None, base: models.Base, concurrency: int, wait_s: float) -> Generate | None:
    """The `base` of the server at `url` when it is this base (by its fingerprint, which `/v1/models`
    lists), asked with the admin `key` (the domain policy scores no admin request); None when no server
    answers there, it runs another base, or there is no key."""
    import httpx

    from eval.endpoint import Endpoint

    if not key:
        return None
    try:
        listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5.0)
        models_ = listed.json().get("data", []) if listed.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return None
    if not any(m.get("id") == "base" and m.get("base_fingerprint") == base.fingerprint for m in models_):
        return None
    return Endpoint(url, key, "base", concurrency=concurrency, wait_s=wait_s).generate


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
