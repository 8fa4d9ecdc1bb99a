"""The training loop every backend shares: TRL's `SFTTrainer` over a model a backend loaded.

A backend only decides how the model is loaded (plain transformers + PEFT, or Unsloth's
patched kernels); what is trained, and how, is the same for both and lives here:

- **Loss on the answers only.** A chat template that marks assistant turns with
  `{% generation %}` gets TRL's `assistant_only_loss`; any other template gets the
  prompt–completion form, on whose completion alone TRL computes the loss.
- **Checkpoints** every `checkpoint_steps` into the run's folder; a checkpoint is complete
  once its `trainer_state.json` (transformers writes it last) parses, and only complete
  ones are resumed.
- **A budget** in tokens or minutes stops training between two steps; the record says why
  training stopped.
- **Progress** (step, loss, tokens/s) goes to a callback, and the same figures into the
  record (`Trained`): loss curves, tokens seen, time, peak memory.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repotune.config import TrainSection
from tuner.train import pinned

CHECKPOINTS = "checkpoints"
Progress = Callable[..., None]  # progress(step, total_steps, loss=..., tokens_per_s=...)


@dataclass
class Job:
    """What one training run is given: plain data, so a backend needs nothing else."""

    base: Path  # a Hugging Face model folder
    train: list[dict[str, Any]]  # rows of train.jsonl: {"messages": [...], ...}
    val: list[dict[str, Any]]
    work: Path  # the run's folder: checkpoints, then the adapter
    cfg: TrainSection
    init_adapter: Path | None = None  # continue from these LoRA weights (incremental)
    resume: bool = True
    progress: Progress | None = None


@dataclass
class Trained:
    """What a run produced and what it cost: the adapter's folder and the figures of the run."""

    adapter: Path
    backend: str
    steps: int
    tokens: int  # tokens trained on (prompt and answer, no padding), this run and the runs it resumed
    seconds: float  # wall time of this process's part of the run
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    replay_kl: list[tuple[int, float]] = field(default_factory=list)  # (step, KL to the base), with train.replay_kl
    stopped: str = "done"  # done, budget_tokens, budget_minutes, early_stopping
    resumed_from: int | None = None  # the checkpoint's step this run started at
    peak_memory_mb: float = 0.0  # the process's peak RSS, or the GPU's peak allocation
    loss_form: str = ""  # assistant_only (template markers) or prompt_completion

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def part_size(batch_size: int, max_seq_len: int, max_batch_tokens: int) -> int:
    """The rows of a batch that go through the model at once: the largest divisor of `batch_size` whose
    rows of `max_seq_len` tokens hold at most `max_batch_tokens` (at least 1; 0: no limit)."""
    if not max_batch_tokens:
        return batch_size
    fits = [d for d in range(1, batch_size + 1) if batch_size % d == 0 and d * max_seq_len <= max_batch_tokens]
    return max(fits, default=1)


def has_generation_markers(tokenizer: Any) -> bool:
    template = tokenizer.chat_template or ""
    return "{% generation %}" in template or "{%- generation %}" in template


def as_dataset_rows(rows: list[dict[str, Any]], markers: bool) -> list[dict[str, Any]]:
    """Chats as TRL takes them: whole conversations with markers, else prompt and completion."""
    if markers:
        return [{"messages": r["messages"]} for r in rows]
    out = []
    for r in rows:
        messages = r["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        out.append({"prompt": messages[:last], "completion": messages[last: last + 1]})
    return out


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written whole; newer broken ones are removed."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for p in found:
        try:
            json.loads((p / "trainer_state.json").read_text())
            return p
        except (OSError, ValueError):
            shutil.rmtree(p, ignore_errors=True)  # cut off mid-save by a kill: never resumed
    return None


@contextlib.contextmanager
def _embedding_notices() -> Iterator[None]:
    """PEFT's two warnings about a LoRA on `embed_tokens`, which say nothing to act on here: the LoRA is
    not tied to the output head on purpose (the engine serves no LoRA on the head), and checkpoints hold
    the base's embedding whole (they are resumed from, then removed; the adapter does not)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Model has `tie_word_embeddings=True` and a tied layer")
        warnings.filterwarnings("ignore", message=r"Setting `save_embedding_layers` to `True`")
        yield


def embedding_rate(trainer_class: Any, ratio: float) -> Any:
    """`trainer_class` with the LoRA parameters of embeddings (PEFT's `lora_embedding_A`/`_B`) in
    optimizer groups of their own, at `ratio` times their group's rate. The scheduler is made after
    the optimizer and scales each group's own initial rate, so they follow the same schedule."""

    class EmbeddingRate(trainer_class):  # type: ignore[misc]
        def create_optimizer(self, model: Any = None) -> Any:
            optimizer = super().create_optimizer(model)
            embedding = {id(p) for n, p in self.model.named_parameters() if "lora_embedding_" in n}
            for group in list(optimizer.param_groups):
                moved = [p for p in group["params"] if id(p) in embedding]
                if moved:
                    group["params"] = [p for p in group["params"] if id(p) not in embedding]
                    optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"},
                                               "params": moved, "lr": group["lr"] * ratio})
            return optimizer

    return EmbeddingRate


def run(job: Job, model: Any, tokenizer: Any, peft_config: Any, backend: str) -> Trained:
    """Train `model` (a PEFT model, or a plain one with `peft_config`) on the job; save the adapter."""
    import datasets
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # the run has its own bar; TRL's per-step dataset bars are noise
    cfg = job.cfg
    markers = has_generation_markers(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    supervised, replay = pinned.split(job.train) if cfg.replay_kl else (job.train, [])
    rows = part_size(cfg.batch_size, cfg.max_seq_len, cfg.max_batch_tokens)
    accumulated = cfg.grad_accum * (cfg.batch_size // rows)  # the same examples per optimizer step
    trainer_class: Any = SFTTrainer
    if replay:
        trainer_class = pinned.trainer_class(cfg.replay_kl, pinned.encode(replay, tokenizer, cfg.max_seq_len),
                                             cfg.replay_kl_rows or rows, cfg.seed, tokenizer.pad_token_id,
                                             cfg.replay_kl_top)
    if cfg.embedding_learning_rate:
        trainer_class = embedding_rate(trainer_class, cfg.embedding_learning_rate / cfg.learning_rate)
    train = datasets.Dataset.from_list(as_dataset_rows(supervised, markers))
    val = datasets.Dataset.from_list(as_dataset_rows(job.val, markers)) if job.val else None
    checkpoints = job.work / CHECKPOINTS
    evaluate = val is not None and (cfg.keep_best or cfg.early_stopping_patience or cfg.eval_steps)
    interval = "steps" if cfg.eval_steps else "epoch"
    args = SFTConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=rows,
        per_device_eval_batch_size=rows,
        gradient_accumulation_steps=accumulated,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the steps
        seed=cfg.seed,
        max_length=cfg.max_seq_len,
        packing=cfg.packing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing else "random",
        assistant_only_loss=markers,
        logging_steps=1,
        **_saving(cfg, interval),
        save_total_limit=cfg.keep_checkpoints or None,
        eval_strategy=interval if evaluate else "no",
        eval_steps=cfg.eval_steps or None,
        load_best_model_at_end=bool(cfg.keep_best and val is not None),
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        include_num_input_tokens_seen="non_padding",
        gradient_checkpointing=False,  # small models on CPU: recomputing costs more than memory saves
        bf16=False, fp16=False,  # compute in the dtype the backend loaded, no autocast on top
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    meter = _meter(job)
    callbacks: list[Any] = [meter]
    if cfg.early_stopping_patience and val is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    with _embedding_notices():
        trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=val if evaluate else None,
                                processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # it prints every log line; the progress callback shows them
    resume = last_complete_checkpoint(checkpoints) if job.resume else None
    if not job.resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    started = time.monotonic()
    with answers_only_head(), _embedding_notices():
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.monotonic() - started
    adapter = job.work / "adapter"
    tmp = job.work / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # With a LoRA on `embed_tokens`, PEFT saves the base's whole embedding matrix beside the
    # adapter unless told not to (113 MB on builtin:smol); the base already has it.
    trainer.model.save_pretrained(tmp, save_embedding_layers=False)
    shutil.rmtree(adapter, ignore_errors=True)
    tmp.rename(adapter)
    state = trainer.state
    stopped = meter.stopped or ("early_stopping" if state.global_step < state.max_steps else "done")
    return Trained(
        adapter=adapter, backend=backend, steps=state.global_step, tokens=int(state.num_input_tokens_seen),
        seconds=seconds, train_loss=_losses("loss", state), val_loss=_losses("eval_loss", state),
        replay_kl=_losses("replay_kl", state),
        stopped=stopped, resumed_from=int(resume.name.split("-")[-1]) if resume else None,
        peak_memory_mb=_peak_memory_mb(), loss_form="assistant_only" if markers else "prompt_completion",
    )


@contextlib.contextmanager
def answers_only_head() -> Iterator[None]:
    """TRL's fused head (`fused_lm_head`, how `SFTTrainer` takes the loss) projects onto the vocabulary only
    the positions that have a label when its Triton kernel runs, and every position elsewhere, so that a device
    which compiles its tiles (Neuron) sees one shape. PyTorch on a CPU compiles nothing, and there the prompt's
    positions (the system prompt and the question: most of a short-answer example) were projected and
    discarded: a vocabulary-wide product, a fifth of builtin:smol's forward. Within this block a CPU gets the
    compact path too; the loss is the same."""
    # Reaches into TRL's private `trl.trainer.utils._use_triton` (TRL 1.16), the name the fused forward reads to
    # choose the compact path; the kernel module keeps its own binding, so a CPU still folds its tiles in torch.
    # If TRL renames or moves it, nothing is patched and a CPU projects every position again: the same loss,
    # slower; tests/tuner/test_train.py::test_on_a_cpu_the_head_projects_only_the_answers fails then.
    from trl.trainer import utils

    original = getattr(utils, "_use_triton", None)
    if original is None:
        yield
        return
    utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        utils._use_triton = original


def _saving(cfg: TrainSection, interval: str) -> dict[str, Any]:
    """When checkpoints are written: every `checkpoint_steps`, except that keeping the best weights
    needs a checkpoint at each evaluation (transformers requires the two to coincide)."""
    if not cfg.keep_best:
        return {"save_strategy": "steps", "save_steps": cfg.checkpoint_steps}
    if interval == "epoch":
        return {"save_strategy": "epoch"}
    return {"save_strategy": "steps", "save_steps": cfg.eval_steps}


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated()) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _meter(job: Job) -> Any:
    """A trainer callback for progress and the budget; it records why training stopped."""
    from transformers import TrainerCallback

    cfg = job.cfg

    class Meter(TrainerCallback):  # type: ignore[misc]
        stopped = ""
        started = time.monotonic()
        tokens_at_start = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started = time.monotonic()
            self.tokens_at_start = int(state.num_input_tokens_seen)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            elapsed = time.monotonic() - self.started
            tokens = int(state.num_input_tokens_seen)
            if cfg.budget_tokens and tokens >= cfg.budget_tokens:
                self.stopped, control.should_training_stop = "budget_tokens", True
            elif cfg.budget_minutes and elapsed >= cfg.budget_minutes * 60:
                self.stopped, control.should_training_stop = "budget_minutes", True
            if job.progress:
                loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), float("nan"))
                rate = (tokens - self.tokens_at_start) / elapsed if elapsed else 0.0
                job.progress(state.global_step, state.max_steps, loss=loss, tokens_per_s=rate)

    return Meter()


def _losses(key: str, state: Any) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h[key])) for h in state.log_history if key in h]
