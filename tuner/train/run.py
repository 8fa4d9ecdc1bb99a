"""One training run, from a dataset to a registered candidate: `train(settings)`.

The CLI (`repotune train`), the nightly cycle and the tests all call `train`. It picks
the dataset (the latest, or one named), checks it was built for the configured base,
selects the examples by strategy (`full`: all of them, from the base; `incremental`: the
new and the replayed ones, from the promoted adapter's weights), trains with a backend,
and registers the adapter as the lineage's next version, status `candidate`.

Nothing half-made is ever visible. A run trains in `data_dir/work/<lineage>-<key>/`,
where the key hashes everything that decides the result (dataset, base, strategy, the
adapter it starts from, the backend and every hyper-parameter), so a checkpoint is
resumed only by the run it belongs to, and a killed run is taken up again by running the
same command. The adapter is saved there whole, then registered (the registry copies it
and renames it into place); the manifest records the run's key, so a run killed after
registering and before clearing its folder is recognised and not registered twice. One
run per lineage at a time (a lock the kernel drops when the process dies, SIGKILL
included); folders of the lineage's other runs are abandoned and removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from repotune import db as store
from repotune import manifests, models, registry
from repotune.config import Settings, TrainSection
from repotune.manifests import AdapterManifest, DatasetManifest, TrainingRecord
from tuner.data import build as dataset_build
from tuner.train import budget, speed
from tuner.train.backends import Backend, BackendError, pick
from tuner.train.sft import Job, Progress, Trained, part_size

TRAINED = "trained.json"  # the run's figures, beside the adapter until it is registered
_UNKEYED = {"backend", "niceness", "resume", "keep_checkpoints"}  # settings that do not change what is trained


class TrainError(Exception):
    """A run that cannot start: no dataset, another base, a backend that cannot run here."""


@dataclass
class TrainResult:
    adapter: registry.Adapter
    record: TrainingRecord
    notes: list[str] = field(default_factory=list)  # which backend and why, what the strategy fell back to
    reused: bool = False  # the run had been registered already (it was killed before clearing its folder)

    def as_dict(self) -> dict[str, Any]:
        return {"lineage": self.adapter.lineage, "version": self.adapter.version, "path": str(self.adapter.path),
                "status": self.adapter.status, "reused": self.reused, "notes": self.notes,
                "ingest_cursor": self.adapter.manifest.ingest_cursor, "dataset": self.adapter.manifest.dataset,
                "training": self.record.model_dump(mode="json")}


def train(settings: Settings, dataset: str | None = None, backend: str | None = None, strategy: str | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Train an adapter on a dataset and register it as a candidate; see the module docstring."""
    cfg = settings.config.train
    strategy = strategy or cfg.strategy
    if strategy not in ("full", "incremental"):
        raise TrainError(f"unknown strategy {strategy!r}; strategies: full, incremental")
    base = _base(settings)
    folder, data = _dataset(settings, dataset, base)
    chosen, note = _backend(backend or cfg.backend)
    with closing(store.open_db(store.db_path(settings.data_dir))) as db:
        rows, val, start, notes = _examples(settings, db, strategy, base, folder)
        if not rows:
            raise TrainError(f"dataset {data.hash} has no examples to train on with strategy {strategy}")
        planned = _plan(settings, db, base, chosen, rows, notes)
        rows = planned.rows
        cfg = _with_passes(cfg, planned)
        if cfg.max_steps != settings.config.train.max_steps:
            notes.append(f"budget: {cfg.max_steps:,} steps over the kept examples (train.max_steps "
                         f"{settings.config.train.max_steps:,} counted over all of them)")
        part = part_size(cfg.batch_size, cfg.max_seq_len, cfg.max_batch_tokens)
        if part < cfg.batch_size:
            notes.append(f"batches of {cfg.batch_size} go through the model in parts of {part} "
                         f"(train.max_batch_tokens {cfg.max_batch_tokens:,} at max_seq_len {cfg.max_seq_len:,}), "
                         "their gradients accumulated into one step")
        started_from = f"{start.lineage}@v{start.version}" if start else None
        key = _key(settings, data, base, strategy, started_from, chosen.name)
        with _lineage_lock(settings):
            done = _registered(db, settings.lineage, key)
            if done is not None and done.manifest.training is not None:
                shutil.rmtree(_work(settings, key), ignore_errors=True)
                return TrainResult(done, done.manifest.training, [note, *notes, "this run was registered before"],
                                   reused=True)
            _clear_abandoned(settings, key)
            work = _work(settings, key)
            work.mkdir(parents=True, exist_ok=True)
            trained = _load_trained(work)
            if trained is None:
                job = Job(base=base.path, train=rows, val=val, work=work, cfg=cfg,
                          init_adapter=start.path if start else None, resume=cfg.resume, progress=progress)
                try:
                    trained = chosen.train(job)
                except BackendError as e:
                    raise TrainError(str(e)) from None
                (work / TRAINED).write_text(json.dumps(asdict(trained), default=str))
            record = _record(key, chosen.name, strategy, started_from, len(rows), cfg.model_dump(), trained)
            record.covers = planned.covers
            manifests.write(trained.adapter, AdapterManifest(
                base_model=base.spec, base_fingerprint=base.fingerprint, ingest_cursor=data.ingest_cursor,
                dataset=data.hash, training=record))
            adapter = registry.register(db, settings.data_dir, settings.lineage, trained.adapter, base,
                                        settings.config.serve.max_lora_rank, actor="train",
                                        reason=f"trained on dataset {data.hash} ({strategy}, {chosen.name})")
            shutil.rmtree(work, ignore_errors=True)
    return TrainResult(adapter, record, [note, *notes])


def _examples(settings: Settings, db: Any, strategy: str, base: models.Base, folder: Path) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], registry.Adapter | None, list[str]]:
    """The training and val rows for `strategy`, the adapter it starts from, and what was decided."""
    try:
        rows, val = dataset_build.read(folder, "train"), dataset_build.read(folder, "val")
    except dataset_build.DataError as e:
        raise TrainError(str(e)) from None
    start = registry.promoted(db, settings.lineage) if strategy == "incremental" else None
    if start is not None:
        try:
            models.ensure_same_base(f"{start.lineage} v{start.version}, the promoted adapter,",
                                    start.base_fingerprint, base.spec, base.fingerprint, start.base_model)
        except models.IncompatibleBase as e:  # the base model changed: only a full run can follow
            return rows, val, None, [f"incremental: {e}; this run starts from the base on the whole dataset"]
        rows = [r for r in rows if r.get("new") or r.get("replay")]
        return rows, val, start, [f"incremental: from {start.lineage}@v{start.version}, on {len(rows):,} new and "
                                  "replayed examples"]
    if strategy == "incremental":
        return rows, val, None, [f"incremental: {settings.lineage} has no promoted adapter yet, so this run starts "
                                 "from the base on the whole dataset"]
    return rows, val, None, []


def _plan(settings: Settings, db: Any, base: models.Base, backend: Backend, rows: list[dict[str, Any]],
          notes: list[str]) -> budget.Plan:
    """The examples that fit the budget, newest facts first (`tuner.train.budget`); what was left out goes
    into `notes`. A budget in minutes is turned into tokens at the median speed of the lineage's last
    runs on this base and backend, or, with none, at a speed measured here first (`tuner.train.speed`)."""
    cfg = settings.config.train
    tokens = cfg.budget_tokens
    if cfg.budget_minutes:
        try:
            rate, trial = speed.for_budget(registry.versions(db, settings.lineage), backend, base, rows, cfg,
                                           settings.data_dir)
        except BackendError as e:
            raise TrainError(str(e)) from None
        if trial and rate > 0:
            notes.append(f"budget: no earlier {backend.name} run of {settings.lineage} on this base; "
                         f"{speed.STEPS} trial steps here ran at {rate:,.0f} tokens/s")
        if rate > 0:
            by_time = int(cfg.budget_minutes * 60 * rate)
            tokens = min(tokens, by_time) if tokens else by_time
        else:
            notes.append(f"budget: {speed.STEPS} trial steps here measured no speed, so {cfg.budget_minutes:g} "
                         "minutes could not be turned into the newest facts that fit; the run is not planned: "
                         "it trains on every example and stops when the time is up")
    if not tokens:
        return budget.Plan(rows, None)
    count = token_counter(base.path, cfg.max_seq_len)
    times = budget.passes(len(rows), cfg.epochs, cfg.max_steps, cfg.batch_size * cfg.grad_accum)
    planned = budget.plan(rows, count, tokens, times)
    if planned.covers:
        c = planned.covers
        notes.append(f"budget: {tokens:,} tokens hold the newest {c.facts:,} of {c.of:,} facts "
                     f"({c.since or '?'} to {c.until or '?'}), {len(planned.rows):,} of {len(rows):,} examples")
    if planned.more > 1:
        notes.append(f"budget: the room the next fact did not fit goes to {times * planned.more:.3g} passes over "
                     f"these examples instead of {times:.3g}")
    return planned


def token_counter(base: Path, max_seq_len: int) -> Callable[[list[dict[str, Any]]], list[int]]:
    """Each chat's tokens as training counts them: the base's chat template, cut at `max_seq_len`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)

    def count(chats: list[dict[str, Any]]) -> list[int]:
        texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in chats]
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_seq_len)["input_ids"]
        return [len(x) for x in ids]

    return count


def _with_passes(cfg: TrainSection, planned: budget.Plan) -> TrainSection:
    """The run's settings for what a budget kept (`budget.plan`): the passes it was planned for, times
    `planned.more`. Where `train.max_steps` decides, the steps are counted again over the kept examples:
    the configured steps went over all of them, and over fewer they would run past the budget, which would
    then cut the run (and its learning-rate schedule) short."""
    if planned.covers is None:
        return cfg
    if cfg.max_steps:
        per_step = cfg.batch_size * cfg.grad_accum
        return cfg.model_copy(update={"max_steps": max(1, round(planned.times * planned.more * len(planned.rows)
                                                                / per_step))})
    if planned.more <= 1:
        return cfg
    return cfg.model_copy(update={"epochs": round(cfg.epochs * planned.more, 3)})


def _base(settings: Settings) -> models.Base:
    try:
        return models.resolve(settings.config.model.base)
    except models.ModelError as e:
        raise TrainError(str(e)) from None


def _dataset(settings: Settings, name: str | None, base: models.Base) -> tuple[Path, DatasetManifest]:
    try:
        folder = dataset_build.latest(settings, name)
        data = dataset_build.manifest_of(folder)
    except dataset_build.DataError as e:
        raise TrainError(str(e)) from None
    try:
        models.ensure_same_base(f"dataset {data.hash}", data.base_fingerprint or "none", base.spec,
                                base.fingerprint, data.base_model)
    except models.IncompatibleBase as e:
        raise TrainError(f"{e}; build a dataset for it with `repotune data build`") from None
    return folder, data


def _backend(name: str) -> tuple[Backend, str]:
    try:
        return pick(name)
    except BackendError as e:
        raise TrainError(str(e)) from None


def config_key(settings: Settings) -> str:
    """A hash of the training settings that change what is trained (not the backend's choice or
    the process's niceness) and of the base: a cycle retrains when it changes."""
    text = json.dumps([settings.config.train.model_dump(exclude=_UNKEYED), settings.config.model.base],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _key(settings: Settings, data: DatasetManifest, base: models.Base, strategy: str, started_from: str | None,
         backend: str) -> str:
    hyper = settings.config.train.model_dump(exclude=_UNKEYED)
    text = json.dumps([data.hash, base.fingerprint, strategy, started_from, backend, hyper], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _work(settings: Settings, key: str) -> Path:
    return settings.data_dir / "work" / f"{settings.lineage}-{key}"


@contextmanager
def _lineage_lock(settings: Settings) -> Iterator[None]:
    path = settings.data_dir / "work" / f".{settings.lineage}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise TrainError(f"another training run for {settings.lineage} is in progress "
                             f"({f.read().strip() or 'pid unknown'})") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield


def _registered(db: Any, lineage: str, key: str) -> registry.Adapter | None:
    for adapter in registry.versions(db, lineage):
        if adapter.manifest.training and adapter.manifest.training.run == key:
            return adapter
    return None


def _clear_abandoned(settings: Settings, key: str) -> None:
    """The lineage's other runs' folders: another dataset or config, never to be resumed."""
    for other in (settings.data_dir / "work").glob(f"{settings.lineage}-*"):
        if other.name != f"{settings.lineage}-{key}" and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)


def _load_trained(work: Path) -> Trained | None:
    """A run that finished training but was killed before registering: its adapter and figures."""
    path = work / TRAINED
    if not (path.is_file() and (work / "adapter" / "adapter_config.json").is_file()):
        return None
    try:
        data = json.loads(path.read_text())
        data["adapter"] = Path(data["adapter"])
        return Trained(**data)
    except (ValueError, TypeError, KeyError):
        return None


def _record(key: str, backend: str, strategy: str, started_from: str | None, examples: int,
            hyper: dict[str, Any], t: Trained) -> TrainingRecord:
    return TrainingRecord(
        run=key, backend=backend, strategy=strategy, started_from=started_from, examples=examples,
        hyperparameters=hyper, libraries=_libraries(backend), loss_form=t.loss_form, steps=t.steps,
        tokens=t.tokens, seconds=round(t.seconds, 3), tokens_per_s=round(t.tokens_per_s, 1),
        peak_memory_mb=round(t.peak_memory_mb, 1), stopped=t.stopped, resumed_from_step=t.resumed_from,
        train_loss=[tuple(x) for x in t.train_loss], val_loss=[tuple(x) for x in t.val_loss],
        replay_kl=[tuple(x) for x in t.replay_kl],
    )


def _libraries(backend: str) -> dict[str, str]:
    names = ["repotune", "torch", "transformers", "peft", "trl", "accelerate"] + (["unsloth"] if backend == "unsloth"
                                                                                  else [])
    found = {}
    for name in names:
        with suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found
