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
from typing import Any

from eval.endpoint import Endpoint, EndpointError
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
            progress: Progress | None = None, server: Callable[[], Generate | None] | None = None) -> dict[str, str]:
    """The base's own answer to each question that it answered in whole sentences, by question id.
    `server` finds a running server's `base` (`served_base`); it is called only when some answers are not
    cached yet, and what it finds is asked before the model is loaded in-process."""
    progress = progress or (lambda *a: None)
    if any(q.split != "train" for q in questions):
        raise ValueError("only train-split questions are replayed")
    path = cache_path(data_dir, base)
    cached = _load(path)
    missing = [q for q in questions if q.id not in cached]
    if not missing:
        return _known(questions, cached)
    served = server() if server else None
    ways = ([(served, SERVED_BATCH, "from the server")] if served else []) + [(_in_process(base), BATCH, "")]
    done = 0
    for generate, size, how in ways:
        todo = [q for q in missing if q.id not in cached]
        try:
            for i in range(0, len(todo), size):
                batch = todo[i: i + size]
                for q, (reply, ended) in zip(batch, generate([q.question for q in batch], MAX_TOKENS), strict=True):
                    cached[q.id] = whole(reply, ended)
                _save(path, cached)  # after each batch: a build killed halfway keeps what was answered
                done += len(batch)
                progress("the base's own answers", done, len(missing), how)
        except EndpointError as e:
            progress("the base's own answers", done, len(missing),
                     f"the server stopped answering ({e}); the rest in-process")
    return _known(questions, cached)


def _known(questions: Sequence[Question], cached: dict[str, str | None]) -> dict[str, str]:
    return {q.id: text for q in questions if (text := cached[q.id])}


def _in_process(base: models.Base) -> Generate:
    """Greedy answers from the model loaded in-process, loaded at the first question."""
    loaded: list[Any] = []

    def generate(texts: list[str], max_tokens: int) -> list[tuple[str, bool]]:
        if not loaded:
            from eval.local import LocalModel

            loaded.append(LocalModel(base.path, batch_size=BATCH))
        result: list[tuple[str, bool]] = loaded[0].generate(texts, max_tokens)
        return result

    return generate


def served_base(url: str, key: str | None, base: models.Base, concurrency: int, wait_s: float) -> Generate | None:
    """The `base` of the server at `url` when it is this base (by its fingerprint, which `/v1/models`
    lists), asked with the admin `key` (the domain policy scores no admin request); None when no server
    answers there, it runs another base, the key is not accepted, or there is none."""
    import httpx

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
