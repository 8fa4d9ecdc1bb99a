"""How fast this machine trains this base: what a budget in minutes is turned into tokens with.

A lineage's first run has no earlier run to tell its speed, and a budget that cannot be
planned only stops training when the time is up: a shuffled share of every fact, each
half-learned, instead of the newest facts fully. So the first run measures: a few steps
of the same backend and settings on a sample of its own examples, through the same
training loop, the first step (several times slower: allocations, first kernels) left
out of the timing, as it is a small share of a real run. The figure is kept in `data_dir/train-speed.json`,
keyed by what decides it, so that a run killed and taken up again plans the same
examples, and later runs use their predecessors' recorded speed instead.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from repotune import models, registry
from repotune.config import TrainSection
from tuner.train.backends import Backend, training_dtype
from tuner.train.sft import Job

STEPS = 5  # optimizer steps run; the first (warm-up: allocations, first kernels) is not timed
FILE = "train-speed.json"


def for_budget(versions: list[registry.Adapter], backend: Backend, base: models.Base, rows: list[dict[str, Any]],
               cfg: TrainSection, data_dir: Path) -> tuple[float, bool]:
    """Tokens a second to plan a budget in minutes with, and whether they come from a trial here (no
    earlier run): the lineage's recent runs first, then a trial measured before, then a new trial."""
    rate = recent(versions, backend.name, base.fingerprint)
    if rate:
        return rate, False
    name = key(backend.name, base.fingerprint, cfg, training_dtype(cfg.dtype, base.path))
    rate = known(data_dir, name)
    if not rate:
        rate = measure(backend, base.path, rows, cfg, data_dir / "work" / "speed-trial")
        if rate > 0:  # a trial that timed nothing is no speed to plan the next run with either
            remember(data_dir, name, rate)
    return rate, True


def recent(versions: list[registry.Adapter], backend: str, fingerprint: str, last: int = 3) -> float:
    """The median speed of the lineage's last `last` runs on this base and backend (0.0: none): one run
    made while a server was kept busy (a few tokens a second) does not make the next plan a tenth of
    what fits."""
    speeds = [a.manifest.training.tokens_per_s for a in reversed(versions)
              if a.manifest.training and a.manifest.training.backend == backend
              and a.base_fingerprint == fingerprint and a.manifest.training.tokens_per_s > 0][:last]
    return float(statistics.median(speeds)) if speeds else 0.0


def key(backend: str, fingerprint: str, cfg: TrainSection, dtype: str) -> str:
    """What decides the speed: the backend, the base, the dtype it trains in, and the settings that change
    a step's cost."""
    return ":".join(str(x) for x in (backend, fingerprint, dtype, cfg.batch_size,
                                     cfg.grad_accum, cfg.max_seq_len, cfg.max_batch_tokens, cfg.packing, cfg.lora_rank,
                                     ",".join(cfg.target_modules), cfg.replay_kl, cfg.replay_kl_rows,
                                     cfg.replay_kl_top, cfg.load_in_4bit))


def known(data_dir: Path, name: str) -> float:
    """A speed measured before under `name` (0.0: none)."""
    try:
        return float(json.loads((data_dir / FILE).read_text()).get(name, 0.0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0.0


def measure(backend: Backend, base: Path, rows: list[dict[str, Any]], cfg: TrainSection, work: Path) -> float:
    """Tokens a second over `STEPS` steps on a sample of `rows`; the trial's folder is removed."""
    sample = random.Random(cfg.seed).sample(rows, min(len(rows), cfg.batch_size * cfg.grad_accum * STEPS))
    trial = cfg.model_copy(update={"max_steps": STEPS, "budget_tokens": 0, "budget_minutes": 0.0,
                                   "checkpoint_steps": 10 * STEPS, "keep_checkpoints": 1, "eval_steps": 0,
                                   "early_stopping_patience": 0, "keep_best": False})
    ended: list[float] = []  # when each step ended
    shutil.rmtree(work, ignore_errors=True)
    try:
        trained = backend.train(Job(base=base, train=sample, val=[], work=work, cfg=trial, resume=False,
                                    progress=lambda *a, **kw: ended.append(time.monotonic())))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(ended) < 2 or not trained.steps:
        return trained.tokens_per_s
    per_step = (ended[-1] - ended[0]) / (len(ended) - 1)  # the steady steps, after the first
    return trained.tokens / trained.steps / per_step if per_step > 0 else trained.tokens_per_s


def remember(data_dir: Path, name: str, speed: float) -> None:
    path = data_dir / FILE
    try:
        saved = json.loads(path.read_text())
        saved = saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        saved = {}
    saved[name] = round(speed, 1)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
