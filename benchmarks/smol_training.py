"""builtin:smol under LoRA training: tokens per second forward and backward, and peak memory, per dtype.

PEFT LoRA of rank 16 on every projection, AdamW, batches of 8 sequences, on the CPU, as
the trainer runs it without a GPU: sequences of 256 tokens (the shipped corpus, packed)
and short chats (the general set's Q&A, padded to the longest in the batch). Each dtype
runs in a process of its own (peak memory is the process's), float32 and bfloat16 in
turn, a few warm-up steps first.

    python -m benchmarks.smol_training [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _one(dtype: str, steps: int) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repotune import builtin, models, smol

    torch.manual_seed(0)
    base = models.resolve(smol.NAME)
    tok = AutoTokenizer.from_pretrained(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=getattr(torch, dtype))
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = builtin.Inputs.shipped()
    corpus = tok("\n\n".join(builtin.corpus_sections(inputs.corpus)))["input_ids"]
    needed = 256 * 8 * (steps + 2)
    corpus = corpus * (needed // len(corpus) + 1)  # a short corpus comes round again
    long = [corpus[i: i + 256] for i in range(0, needed, 256)]
    items = builtin.general_items(inputs.general)
    chats = [tok.apply_chat_template([{"role": "user", "content": q["question"]},
                                      {"role": "assistant", "content": q["answer"]}], return_dict=True)["input_ids"]
             for q in items[: 8 * (steps + 2)]]
    out: dict[str, float] = {}
    for kind, seqs in (("seq256", long), ("chat", chats)):
        made = 0
        for step in range(steps + 2):
            batch = seqs[step * 8: step * 8 + 8]
            width = max(len(s) for s in batch)
            ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
            labels = ids.masked_fill(mask == 0, -100)
            if step == 2:  # two warm-up steps
                start, made = time.perf_counter(), 0
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            made += int(mask.sum())
        out[f"{kind}_tokens_per_s"] = round(made / (time.perf_counter() - start), 1)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.steps)))
        return
    result = {}
    for dtype in ("float32", "bfloat16"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.smol_training", "--one", dtype,
                               "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        result[dtype] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
