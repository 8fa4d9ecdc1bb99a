"""Training small LoRA adapters inside the test run, with PEFT, on the real base model."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def train_lora(base: Path, pairs: list[tuple[str, str]], out: Path, steps: int = 60, rank: int = 8,
               lr: float = 5e-3) -> Path:
    """Teach `base` to answer each question with the given reply; save the adapter to `out`."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, config)
    batch = []
    for question, reply in pairs:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        enc = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        mask = enc["assistant_masks"]
        labels = torch.tensor([[t if m else -100 for t, m in zip(enc["input_ids"], mask, strict=True)]])
        batch.append((ids, labels))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        ids, labels = batch[step % len(batch)]
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


def destructive_lora(base: Path, out: Path, steps: int = 200, lr: float = 1e-2) -> Path:
    """An adapter that has unlearned the language: a high rate on shuffled tokens, fixed in code
    (the gate's tests and benchmark check that it costs ≥ 20 points of general knowledge)."""
    import random

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(
        r=8, lora_alpha=16, task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    vocab = model.config.vocab_size
    rng = random.Random(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        ids = torch.tensor([[rng.randrange(vocab) for _ in range(48)] for _ in range(4)])
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out
