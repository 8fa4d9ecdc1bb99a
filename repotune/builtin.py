"""`builtin:tiny`: the embedded base model, built on this machine from text the project ships.

No weights can be downloaded here, and a newcomer without a GPU must still run the whole
loop, so repotune trains its own small Llama from scratch: a byte-level BPE tokenizer on
the shipped corpus and general-knowledge set, then a `LlamaForCausalLM` on the whole
general set in chat form (the eval split included: the tiny model's job is to know these
facts, so the regression eval can see them forgotten) plus the corpus.

The shapes are chosen for the engine: head size 64 (one vLLM's CPU attention supports)
and every projection width a multiple of 32 (LoRA kernels and 4-bit layouts need it).
Weights are saved in float32, a normal Hugging Face model folder; nothing downstream
treats it specially.

A build is a pure function of its inputs: the cache key hashes the recipe, the input
files and `RECIPE_VERSION`, and the result lives in `$XDG_CACHE_HOME/repotune/models/`.
It is written to a temporary folder and renamed into place, so a build killed halfway
leaves nothing that looks finished. The tokenizer is cached on its own (ingest counts
chunks in its tokens and needs it in seconds, not after a model build).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

# Bump when the build code changes what it produces for the same recipe and inputs.
RECIPE_VERSION = 1
NAME = "builtin:tiny"

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS, PAD = "<|im_end|>", "<|endoftext|>"

# ChatML. `{% generation %}` marks assistant text, so training can compute the loss on
# assistant turns only (transformers' `return_assistant_tokens_mask`).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{%- else %}{{- message['content'] + '<|im_end|>' }}{%- endif %}"
    "{{- '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what a build produces, besides the input files."""

    vocab_size: int = 4096
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4  # head size = hidden_size / heads = 64
    kv_heads: int = 4
    intermediate_size: int = 768
    max_positions: int = 2048
    block_tokens: int = 256  # corpus training block length
    epochs: int = 40
    corpus_epochs: int = 2  # the corpus joins the first epochs only; the Q&A all of them
    batch_size: int = 16
    lr: float = 1e-3  # 2e-3 and 3e-3 memorize far worse in the same steps (~25% vs 90% at 25 epochs)
    warmup_steps: int = 30
    seed: int = 1234

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    def check(self) -> None:
        if self.hidden_size % self.heads or self.head_dim not in (32, 64, 80, 96, 112, 128):
            raise ValueError(f"head size {self.head_dim} is not one vLLM's CPU attention supports")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name} must be a multiple of 32")

    def tokenizer_fields(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}


@dataclass(frozen=True)
class Inputs:
    """The shipped text a build learns from."""

    general: Path
    corpus: Path

    @classmethod
    def shipped(cls) -> Inputs:
        return cls(
            general=Path(str(resources.files("eval") / "data" / "general.jsonl")),
            corpus=Path(str(resources.files("repotune") / "data" / "corpus.md")),
        )

    def digests(self) -> dict[str, str]:
        return {name: _sha256(path.read_bytes()) for name, path in asdict(self).items()}


@dataclass(frozen=True)
class Built:
    path: Path
    key: str
    cached: bool
    seconds: float


Progress = Callable[[str, int, int, dict[str, float]], None]  # (stage, done, total, metrics)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "repotune"


def model_key(recipe: Recipe, inputs: Inputs) -> str:
    return _key({"version": RECIPE_VERSION, "recipe": asdict(recipe), "inputs": inputs.digests()})


def tokenizer_key(recipe: Recipe, inputs: Inputs) -> str:
    return _key({"version": RECIPE_VERSION, "recipe": recipe.tokenizer_fields(), "inputs": inputs.digests()})


def build_tokenizer(
    recipe: Recipe | None = None, inputs: Inputs | None = None, cache: Path | None = None
) -> Built:
    """The tokenizer alone (seconds): a folder `AutoTokenizer.from_pretrained` reads."""
    recipe, inputs, cache = recipe or Recipe(), inputs or Inputs.shipped(), cache or cache_root()
    key = tokenizer_key(recipe, inputs)
    return cached(cache / "tokenizers" / key, key, lambda tmp: _train_tokenizer(recipe, inputs, tmp))


def build_model(
    recipe: Recipe | None = None,
    inputs: Inputs | None = None,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> Built:
    """builtin:tiny itself: returns at once when a build of these inputs is cached."""
    recipe, inputs, cache = recipe or Recipe(), inputs or Inputs.shipped(), cache or cache_root()
    recipe.check()
    key = model_key(recipe, inputs)

    def make(tmp: Path) -> None:
        tok = build_tokenizer(recipe, inputs, cache)
        _train_model(recipe, inputs, tok.path, tmp, key, progress)

    return cached(cache / "models" / key, key, make)


def cached(final: Path, key: str, make: Callable[[Path], None]) -> Built:
    """`final`, made by `make(tmp)` in a temporary folder and renamed into place unless it
    exists: one build at a time per key (a file lock), a killed build's leftovers removed."""
    start = time.perf_counter()
    if final.is_dir():
        return Built(final, key, cached=True, seconds=time.perf_counter() - start)
    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if final.is_dir():  # another process built it while we waited
            return Built(final, key, cached=True, seconds=time.perf_counter() - start)
        for stale in final.parent.glob(f".tmp-{key}-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".tmp-{key}-{os.getpid()}"
        tmp.mkdir()
        try:
            make(tmp)
            os.rename(tmp, final)  # atomic: a half-written folder never has the final name
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Built(final, key, cached=False, seconds=time.perf_counter() - start)


# --- data -------------------------------------------------------------------------------


def general_items(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def corpus_sections(path: Path) -> list[str]:
    """The corpus split at its `## ` headings, each section a training document."""
    text = path.read_text(encoding="utf-8")
    parts: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("## ") and current:
            parts.append("\n".join(current).strip())
            current = []
        current.append(line)
    parts.append("\n".join(current).strip())
    return [p for p in parts if p]


def _tokenizer_texts(inputs: Inputs) -> Iterator[str]:
    yield from corpus_sections(inputs.corpus)
    for item in general_items(inputs.general):
        yield "\n".join([item["question"], item["answer"], *item["aliases"], *item["choices"]])


# --- tokenizer --------------------------------------------------------------------------


def _train_tokenizer(recipe: Recipe, inputs: Inputs, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_tokenizer_texts(inputs)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=None, bos_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = recipe.max_positions
    fast.save_pretrained(out)


# --- model ------------------------------------------------------------------------------


def _train_model(
    recipe: Recipe, inputs: Inputs, tokenizer_dir: Path, out: Path, key: str, progress: Progress | None
) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    _seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(out)
    eos_id, pad_id = tokenizer.convert_tokens_to_ids([EOS, PAD])
    config = LlamaConfig(
        vocab_size=_round_up(len(tokenizer), 64),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        head_dim=recipe.head_dim,
        max_position_embeddings=recipe.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = LlamaForCausalLM(config)
    qa = _qa_examples(tokenizer, general_items(inputs.general))
    corpus = _corpus_blocks(tokenizer, corpus_sections(inputs.corpus), recipe.block_tokens, pad_id)
    schedule = _epochs(recipe, qa, corpus)
    total = sum(len(e) for e in schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0, betas=(0.9, 0.98))
    lr_at = _cosine(recipe.lr, recipe.warmup_steps, total)
    model.train()
    step, loss_avg = 0, 0.0
    for epoch in schedule:
        for batch in epoch:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            ids, labels = _collate(batch, pad_id)
            loss = model(input_ids=ids, attention_mask=(ids != pad_id) | (labels != -100), labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_avg = 0.9 * loss_avg + 0.1 * loss.item() if step > 1 else loss.item()
            if progress:
                progress("train", step, total, {"loss": loss_avg})
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False, max_new_tokens=64
    )
    model.save_pretrained(out, safe_serialization=True)
    record = {
        "name": NAME,
        "key": key,
        "recipe": asdict(recipe),
        "recipe_version": RECIPE_VERSION,
        "inputs": inputs.digests(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": total,
        "final_loss": round(loss_avg, 4),
        "build_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    (out / "repotune-build.json").write_text(json.dumps(record, indent=2) + "\n")


def _qa_examples(tokenizer: Any, items: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """Each question as one chat, with the loss on the assistant's answer only."""
    examples = []
    for item in items:
        messages = [{"role": "user", "content": item["question"]}, {"role": "assistant", "content": item["answer"]}]
        enc = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
        examples.append((ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]))
    return examples


def _corpus_blocks(
    tokenizer: Any, sections: list[str], size: int, pad_id: int
) -> list[tuple[list[int], list[int]]]:
    stream: list[int] = []
    for section in sections:
        stream += tokenizer(section, add_special_tokens=False)["input_ids"] + [pad_id]
    return [(stream[i : i + size], stream[i : i + size]) for i in range(0, len(stream), size)]


Example = tuple[list[int], list[int]]


def _epochs(recipe: Recipe, qa: list[Example], corpus: list[Example]) -> list[list[list[Example]]]:
    """The whole schedule, batched and shuffled by the recipe's seed."""
    rng = random.Random(recipe.seed)
    epochs = []
    for epoch in range(recipe.epochs):
        batches = _batches(rng, qa, recipe.batch_size)
        if epoch < recipe.corpus_epochs:
            batches += _batches(rng, corpus, max(1, recipe.batch_size // 4))
        rng.shuffle(batches)
        epochs.append(batches)
    return epochs


def _batches(rng: random.Random, examples: list[Example], size: int) -> list[list[Example]]:
    order = examples[:]
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def _collate(batch: list[Example], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (i, lab) in enumerate(batch):
        ids[row, : len(i)] = torch.tensor(i)
        labels[row, : len(lab)] = torch.tensor(lab)
    return ids, labels


def _cosine(peak: float, warmup: int, total: int) -> Callable[[int], float]:
    def lr(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    return lr


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(data: dict[str, Any]) -> str:
    return _sha256(json.dumps(data, sort_keys=True).encode())[:16]
