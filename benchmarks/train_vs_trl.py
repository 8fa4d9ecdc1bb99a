"""`repotune train` against a minimal TRL script with identical settings: tokens/s and peak memory.

Both train a rank-16 LoRA (every projection) on the same dataset — this repository's
own history, ingested and built into a dataset once at the start — with the same
hyper-parameters, loss on the answers only, for the same number of steps. Each run is a
process of its own (peak memory is the process's RSS); the two alternate for `--rounds`
rounds so that a busy host slows both alike. tokens/s counts the tokens trained on
(padding excluded) over the time of `trainer.train()` in both, so model loading and
tokenizing are left out of both.

    python -m benchmarks.train_vs_trl --base builtin:tiny --steps 30 --rounds 3
    python -m benchmarks.train_vs_trl --base builtin:smol --steps 6 --rounds 3
    python -m benchmarks.train_vs_trl --base builtin:smol --steps 6 --rounds 3 --group-by-length

`--group-by-length` makes both batch examples of similar length together (what
`train.group_by_length` does; off by default here, as TRL's is). `--trl-only DATASET
BASE STEPS` is the reference script itself (what the pairs run).

`--vs-dtype DTYPE` pairs `repotune train` as configured (`train.dtype = "auto"`) with
`repotune train` at `train.dtype = DTYPE` instead of the TRL script:

    python -m benchmarks.train_vs_trl --base builtin:smol --steps 6 --rounds 3 --vs-dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {"batch_size": 8, "learning_rate": 1e-3, "max_seq_len": 512, "checkpoint_steps": 1000, "warmup_ratio": 0.0,
         "scheduler": "constant", "group_by_length": False}


def trl_only(dataset: Path, base: Path, steps: int, grouped: bool) -> None:
    """The reference: TRL's SFTTrainer and a PEFT LoraConfig, nothing of repotune."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    rows = [{"messages": json.loads(line)["messages"]} for line in (dataset / "train.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=TRAIN["batch_size"],
                     learning_rate=TRAIN["learning_rate"], max_steps=steps, lr_scheduler_type="constant",
                     max_length=TRAIN["max_seq_len"], assistant_only_loss=True, logging_steps=1, save_strategy="no",
                     include_num_input_tokens_seen="non_padding", gradient_checkpointing=False, bf16=False,
                     report_to=[], disable_tqdm=True, dataloader_pin_memory=False, seed=0,
                     train_sampling_strategy="group_by_length" if grouped else "random")
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok, peft_config=lora)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    tokens = int(trainer.state.num_input_tokens_seen)
    print(json.dumps({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                      "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _repotune(config: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "repotune.cli", "train", "--json", "--config", str(config)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    t = json.loads(done.stdout)["training"]
    return {"tokens": t["tokens"], "seconds": t["seconds"], "tokens_per_s": t["tokens_per_s"],
            "peak_memory_mb": t["peak_memory_mb"]}


def _reference(dataset: Path, base: Path, steps: int) -> dict[str, float]:
    grouped = ["--group-by-length"] if TRAIN["group_by_length"] else []
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_vs_trl", "--trl-only", str(dataset), str(base),
                           str(steps), *grouped], capture_output=True, text=True, check=True, cwd=ROOT)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _config(folder: Path, base: str, steps: int, round_: int, dtype: str = "auto") -> Path:
    """The config of one round. A budget no run reaches, of each round's own, gives each run a key of
    its own, so that no round is taken for the one before (the same training otherwise)."""
    import tomli_w

    path = folder / f"config-{round_}-{dtype}.toml"
    path.write_text(tomli_w.dumps({
        "model": {"base": base}, "ingest": {"repo": str(ROOT), "workers": 1},
        "paths": {"data_dir": str(folder / "state")}, "tuner": {"lineage": "bench"},
        "train": {**TRAIN, "max_steps": steps, "seed": 0, "niceness": 0, "budget_minutes": 1000.0 + round_,
                  "dtype": dtype}}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="builtin:tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--group-by-length", action="store_true", help="both: batches of similar lengths")
    ap.add_argument("--trl-only", nargs=3, metavar=("DATASET", "BASE", "STEPS"))
    ap.add_argument("--vs-dtype", default="", help="the reference: repotune train at this train.dtype")
    a = ap.parse_args()
    TRAIN["group_by_length"] = a.group_by_length
    if a.trl_only:
        trl_only(Path(a.trl_only[0]), Path(a.trl_only[1]), int(a.trl_only[2]), a.group_by_length)
        return
    from repotune import models

    folder = Path(tempfile.mkdtemp(prefix="train-bench-"))
    first = _config(folder, a.base, a.steps, 0)
    for step in (["ingest"], ["data", "build"]):
        subprocess.run([sys.executable, "-m", "repotune.cli", *step, "--config", str(first)], check=True,
                       capture_output=True, cwd=ROOT)
    dataset = next(p for p in (folder / "state" / "datasets" / "bench").iterdir() if p.is_dir())
    base = models.resolve(a.base).path
    ours, ref = [], []
    reference = f"at train.dtype = {a.vs_dtype}" if a.vs_dtype else "TRL script"
    for r in range(a.rounds):
        ref.append(_repotune(_config(folder, a.base, a.steps, r, a.vs_dtype)) if a.vs_dtype
                   else _reference(dataset, base, a.steps))
        ours.append(_repotune(_config(folder, a.base, a.steps, r)))
        print(f"round {r + 1}: repotune train {ours[-1]['tokens_per_s']:.1f} tokens/s "
              f"({ours[-1]['peak_memory_mb']:.0f} MiB), {reference} {ref[-1]['tokens_per_s']:.1f} tokens/s "
              f"({ref[-1]['peak_memory_mb']:.0f} MiB), ratio {ours[-1]['tokens_per_s'] / ref[-1]['tokens_per_s']:.3f}",
              flush=True)
    ratios = [o["tokens_per_s"] / f["tokens_per_s"] for o, f in zip(ours, ref, strict=True)]
    print(json.dumps({
        "base": a.base, "steps": a.steps, "rounds": a.rounds, "reference": reference,
        "dataset_examples": sum(1 for _ in (dataset / "train.jsonl").open()),
        "tokens_per_run": [o["tokens"] for o in ours],
        "reference_tokens_per_run": [f["tokens"] for f in ref],
        "repotune_tokens_per_s": [round(o["tokens_per_s"], 1) for o in ours],
        "reference_tokens_per_s": [round(f["tokens_per_s"], 1) for f in ref],
        "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
        "repotune_peak_mb": [round(o["peak_memory_mb"]) for o in ours],
        "reference_peak_mb": [round(f["peak_memory_mb"]) for f in ref]}, indent=2))


if __name__ == "__main__":
    main()
