"""Building a dataset: every generator over what was ingested, split, hashed and written.

A dataset is a folder named by its content hash under `data_dir/datasets/<lineage>/`:
`train.jsonl` and `val.jsonl` (chats, `{"messages": [...]}`, each with its id, generator,
kind, sources and whether it is new), `eval.jsonl` (the held-out domain questions, in
phrasings training never uses), `raw.jsonl` (chunks as plain text) and `manifest.json`
(counts and tokens per generator and kind, the ingest cursor, the config, the base model
and its fingerprint, the hash). `LATEST` in the lineage's folder names the newest.

A dataset holds every Q&A to date, the new ones marked: new is relative to the ingest
cursor recorded in the manifest of the lineage's promoted adapter (everything, when
there is none), so the sources of a rejected cycle are tried again. A full retrain reads
it all; an incremental one trains on the new examples and those marked `replay`.
Building the same data again gives the same hash and reuses the folder. With nothing
new, there is nothing to train on: `NothingToTrain`, never an empty dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from repotune import datasets, manifests, models, registry, relevance
from repotune import db as store
from repotune.config import Settings
from repotune.manifests import DatasetManifest
from tuner.data import others, own, templates
from tuner.data.examples import Example, fraction
from tuner.data.items import Items

LATEST = datasets.LATEST


class DataError(Exception):
    pass


class NothingToTrain(DataError):
    """Nothing new since the promoted adapter's data: no dataset is written."""


@dataclass
class Built:
    path: Path
    manifest: DatasetManifest
    reused: bool  # the same data was built before: its folder is returned
    warnings: list[str] = field(default_factory=list)
    index: relevance.Refreshed | None = None  # the refusal policy's domain index, rebuilt with its questions

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "reused": self.reused, "warnings": self.warnings,
                "index": self.index.as_dict() if self.index else None, **self.manifest.dump()}


Progress = Callable[[str, int, int | None, str], None]


def datasets_dir(settings: Settings) -> Path:
    return datasets.root(settings.data_dir, settings.lineage)


def build(settings: Settings, progress: Progress | None = None) -> Built:
    progress = progress or (lambda *a: None)
    cfg = settings.config.tuner.data
    try:
        db = store.open_db(store.db_path(settings.data_dir))
        items = Items(db, settings.repo)
        cursor = items.cursor()
    except (store.StoreError, sqlite3.Error) as e:
        raise DataError(str(e)) from e
    if cursor == 0:
        raise DataError(f"nothing ingested from {settings.repo} yet: run `repotune ingest` first")
    base = _base(settings)
    promoted = registry.promoted(db, settings.lineage)
    since = (promoted.manifest.ingest_cursor or 0) if promoted else 0
    adapter = f"{promoted.lineage}@v{promoted.version}" if promoted else None

    qa: list[Example] = []
    held_out: list[Example] = []
    val_candidates: list[Example] = []  # trained facts in other words
    long_forms: list[dict[str, Any]] = []
    if "templates" in cfg.generators:
        for n, made in enumerate(templates.generate(items, cfg.seed, since, cfg.paraphrases, cfg.paraphrases_by_kind),
                                 start=1):
            qa += made.train
            held_out += made.eval
            val_candidates += made.val
            long_forms += made.raw
            if n % 200 == 0:
                progress("templates", n, None, "")
        progress("templates", len(qa), len(qa), "")
    teacher_report = None
    if "teacher" in cfg.generators:
        from tuner.data.teacher import Teacher, chunks

        teacher = Teacher(settings.config.tuner.teacher, settings.secrets.teacher_api_key, db, settings.repo)
        qa += teacher.generate(chunks(db, settings.repo), since, progress)
        teacher_report = teacher.report
    quotes = Measured.load()
    qa, val_candidates = quotes.keep(qa), quotes.keep(val_candidates)
    if quotes.left_out:  # a fact whose examples all quoted one is not trained, so not asked in the eval either
        trained = {_fact(e) for e in qa}
        held_out = [e for e in held_out if _fact(e) in trained]
    new = [e for e in qa if e.new]
    if not new:
        if promoted:
            raise NothingToTrain(f"nothing new since the data of {adapter}, the promoted adapter (ingest cursor "
                                 f"{since}): nothing to train on")
        raise NothingToTrain(f"the generators ({', '.join(cfg.generators) or 'none'}) made no Q&A from what was "
                             "ingested: nothing to train on")
    extra: list[Example] = []
    if settings.config.policy.train_refusals:
        extra += others.refusals(new, settings.config.policy.refusal, cfg.refusal_ratio, cfg.seed)
    if "replay" in cfg.generators:
        earlier = sorted((e for e in qa if not e.new), key=lambda e: fraction(cfg.seed, "replay", e.id))
        for old in earlier[: round(len(new) * cfg.replay_earlier)]:
            old.replay = True
        count = round(len(new) * cfg.replay_general)
        if cfg.replay_answers in ("base", "both"):
            extra += others.general_replay(count, cfg.seed, _own_answers(settings, base, progress))
        if cfg.replay_answers in ("gold", "both"):
            extra += others.general_replay(count, cfg.seed)
    raw = long_forms + list(others.raw_text(items.raw_chunks(), cfg.raw_ratio, cfg.seed, since)) \
        if "raw" in cfg.generators else []
    progress("replay and raw", 1, 1, "")
    extra, raw = quotes.keep(extra), quotes.keep(raw)
    left_out = quotes.left_out

    train = _unique(qa + extra)
    val = _val(train, val_candidates, cfg.val_fraction, cfg.seed)
    chats = train + val
    evals = _eval_sample(_unique(held_out), cfg.eval_max, cfg.seed)
    files = {
        "train.jsonl": _jsonl(e.row() for e in train),
        "val.jsonl": _jsonl(e.row() for e in val),
        "eval.jsonl": _jsonl(e.row() for e in evals),
        "raw.jsonl": _jsonl(raw),
    }
    digest = hashlib.sha256()
    for file, data in sorted(files.items()):
        digest.update(f"{file}\0".encode() + hashlib.sha256(data).digest())
    digest.update(json.dumps([cfg.model_dump(), base.fingerprint, cursor], sort_keys=True).encode())
    key = digest.hexdigest()[:16]
    folder = datasets_dir(settings) / key
    warnings = [f"the teacher stopped early ({teacher_report.stopped}); built with what it had answered"] \
        if teacher_report and teacher_report.stopped else []
    if left_out:
        warnings.append(f"{left_out} examples and raw texts quote a question the evals ask (the general set's "
                        "eval split, the refusal sets) and were left out")
    if (folder / manifests.FILE).is_file():
        _point_latest(folder)
        manifest = manifest_of(folder)
        if teacher_report:
            manifest.teacher = teacher_report.as_dict()  # this build's requests (none, when all were cached)
        return Built(folder, manifest, reused=True, warnings=warnings, index=relevance.refresh(settings, db))

    progress("tokens", 0, None, "")
    manifest = DatasetManifest(
        hash=key, lineage=settings.lineage, repo=settings.repo, created_at=store.now(),
        base_model=base.spec, base_fingerprint=base.fingerprint,
        ingest_cursor=cursor, new_since={"ingest_cursor": since, "adapter": adapter},
        counts={"train": len(train), "val": len(val), "eval": len(evals), "raw": len(raw), "quoting_evals": left_out,
                "new": sum(e.new for e in chats), "replay": sum(e.replay for e in chats)},
        generators=_tally(settings, chats, raw),
        config=cfg.model_dump(),
        refusals=settings.config.policy.train_refusals,
        teacher=teacher_report.as_dict() if teacher_report else None,
    )
    progress("tokens", 1, 1, "")
    _write(folder, files, manifest)
    _point_latest(folder)
    return Built(folder, manifest, reused=False, warnings=warnings, index=relevance.refresh(settings, db))


def _fact(e: Example) -> str:
    """What an example is about: its item (commit, pull request, path) and the question's family."""
    item = {k: v for k, v in e.sources.items() if k != "chunks"}
    return json.dumps([e.kind.removesuffix("_reverse"), e.kind.endswith("_reverse"), item], sort_keys=True,
                      default=str)


_Kept = TypeVar("_Kept", Example, dict[str, Any])


class Measured:
    """The questions that measure a model: the general set's eval split and the shipped refusal sets. No
    training example or raw text may quote one, or a score on it would say what was trained, not what was
    known or kept. They get in when the repository holds them (this project's own data files, tests that
    ask them, the commits that added either). Matched as lower-cased words with white space collapsed;
    questions of fewer than `LEAST_WORDS` words (a split request's "and why?") are not looked for. `left_out`
    counts what `keep` left out."""

    LEAST_WORDS = 4

    def __init__(self, questions: list[str]) -> None:
        import ahocorasick

        self._automaton = ahocorasick.Automaton()
        for q in {self._norm(q) for q in questions}:
            if len(q.split()) >= self.LEAST_WORDS:
                self._automaton.add_word(q, q)
        self._empty = len(self._automaton) == 0
        self.left_out = 0
        if not self._empty:
            self._automaton.make_automaton()

    @classmethod
    def load(cls) -> Measured:
        from eval import questions, refusal

        asked = [q.question for q in questions.load(split="eval")]
        for name in ("indomain", "offdomain", "attacks"):
            asked += [t for r in refusal.shipped(name) for t in (r.get("turns") or [r["question"]])]
        return cls(asked)

    @staticmethod
    def _norm(text: str) -> str:
        return " ".join(text.lower().split())

    def found(self, text: str) -> bool:
        """Whether `text` quotes one of the questions."""
        if self._empty:
            return False
        return next(self._automaton.iter(self._norm(text)), None) is not None

    def keep(self, examples: list[_Kept]) -> list[_Kept]:
        """The examples (chats, or raw texts) that quote none of the questions."""
        kept = [e for e in examples if not self.found(
            " ".join(m["content"] for m in e.messages) if isinstance(e, Example) else str(e.get("text", "")))]
        self.left_out += len(examples) - len(kept)
        return kept


def _val(train: list[Example], candidates: list[Example], share: float, seed: int) -> list[Example]:
    """Validation: other phrasings of trained facts, never a fact training does not see (early
    stopping on a fact never trained would fight memorising the facts)."""
    trained = {e.id for e in train}
    asked = {e.messages[0]["content"] for e in train}
    fresh = [e for e in _unique(candidates) if e.id not in trained and e.messages[0]["content"] not in asked]
    want = max(1, round(share * len(train))) if share > 0 and fresh else 0
    return sorted(fresh, key=lambda e: fraction(seed, "val", e.id))[:want]


def _eval_sample(held_out: list[Example], most: int, seed: int) -> list[Example]:
    """At most `most` held-out questions: half of them about the newest facts (by their source's date: what a
    budgeted run trains first, and what users ask about most), the other half drawn at random from the rest
    (so a regression on older facts still shows)."""
    if len(held_out) <= most:
        return sorted(held_out, key=lambda e: fraction(seed, "eval", e.id))
    newest = sorted(held_out, key=lambda e: (str(e.sources.get("date") or ""), fraction(seed, "eval", e.id)),
                    reverse=True)[: most // 2]
    taken = {e.id for e in newest}
    rest = sorted((e for e in held_out if e.id not in taken), key=lambda e: fraction(seed, "eval", e.id))
    return sorted(newest + rest[: most - len(newest)], key=lambda e: fraction(seed, "eval", e.id))


def _unique(examples: list[Example]) -> list[Example]:
    """One of each id (two items can give the same question and answer), in order."""
    seen: dict[str, Example] = {}
    for e in examples:
        seen.setdefault(e.id, e)
    return list(seen.values())


def _jsonl(rows: Any) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()


def _own_answers(settings: Settings, base: models.Base, progress: Progress) -> others.Answers:
    """The base's own answers to replayed general questions: by the running server when it serves this
    base (looked for only when some are not cached yet), else in-process."""
    from repotune import promotion

    def server() -> own.Generate | None:
        return own.served_base(promotion.server_url(settings), settings.secrets.admin_key, base,
                               settings.config.eval.concurrency, settings.config.eval.wait_s)

    return lambda questions: own.answers(base, questions, settings.data_dir, progress, server)


def _base(settings: Settings) -> models.Base:
    try:
        return models.resolve(settings.config.model.base)
    except models.ModelError as e:
        raise DataError(str(e)) from e


def _tally(settings: Settings, chats: list[Example], raw: list[dict[str, Any]]) -> dict[str, Any]:
    """Examples and tokens (of the base model's tokenizer, over the messages' text) per generator and kind."""
    from ingest.chunks import Tokens

    tokens = Tokens(models.tokenizer_path(settings.config.model.base))
    texts = ["".join(m["content"] for m in e.messages) for e in chats] + [str(r["text"]) for r in raw]
    counts = tokens.count(texts)
    out: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for e, n in zip(chats, counts[: len(chats)], strict=True):
        out[e.generator][e.kind].update({"examples": 1, "tokens": n, "new": int(e.new)})
    for r, n in zip(raw, counts[len(chats):], strict=True):
        out["raw"][str(r["kind"])].update({"examples": 1, "tokens": n, "new": int(bool(r["new"]))})
    return {g: {k: dict(c) for k, c in sorted(kinds.items())} for g, kinds in sorted(out.items())}


def _write(folder: Path, files: dict[str, bytes], manifest: DatasetManifest) -> None:
    """All files into a temporary folder, renamed into place: a killed build leaves no half dataset."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        manifests.write(tmp, manifest)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _point_latest(folder: Path) -> None:
    tmp = folder.parent / f".{LATEST}.{os.getpid()}"
    tmp.write_text(folder.name + "\n")
    os.replace(tmp, folder.parent / LATEST)


def latest(settings: Settings, name: str | None = None) -> Path:
    """The dataset `name` (a hash or its start), or the newest built."""
    try:
        return datasets.find(settings.data_dir, settings.lineage, name)
    except datasets.DatasetError as e:
        raise DataError(str(e)) from None


def manifest_of(folder: Path) -> DatasetManifest:
    try:
        return manifests.read_dataset(folder)
    except manifests.ManifestError as e:
        raise DataError(str(e)) from None


def read(folder: Path, split: str) -> list[dict[str, Any]]:
    try:
        return datasets.read(folder, split)
    except datasets.DatasetError as e:
        raise DataError(str(e)) from None
