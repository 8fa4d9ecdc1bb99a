"""What the KL term (`train.replay_kl`) costs a training step, three ways, side by side.

The term runs a batch of general replay rows (the base's own answers) through the model
twice at every step: once without the adapter, for the base's distribution, and once with
it, with gradients. This times that work on one base, in one process, the ways taking
turns batch by batch so that the machine's drift falls on all of them alike:

- **random**: batches drawn in a random order, padded to their longest row (before
  the replay batches were grouped by length);
- **grouped**: batches of rows of like length (`pinned.batches`, the default);
- **top K**: grouped, with the base's side kept as its top K tokens per position
  (`train.replay_kl_top`): the forward without the adapter runs once per row, the first
  time it is drawn ("filling"), and never again;
- **grouped, head everywhere**: grouped, with the logits taken from the model's whole
  forward (every position projected onto the vocabulary, as before the head ran at the
  answers' positions alone).

And the supervised loss as `SFTTrainer` takes it (TRL's fused head), on the same batches
with labels on the answers: every position projected (TRL's way on a CPU) against the
answers' positions alone (`sft.answers_only_head`, the trainer's way).

Each way runs whole passes over the same replay rows (a partial pass of grouped batches
is not a fair sample: the longest batch comes first). What the term is of a whole step is
read from a learning run's own step time (`benchmarks.learning` prints it).

    python -m benchmarks.replay_kl_step --base builtin:smol --rows 240 --top 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _replay_rows(base: Any, count: int) -> list[dict[str, Any]]:
    """`count` general replay chats, half answered by the base itself (cached per base, as benchmarks.learning
    keeps them), half with the general set's gold answers (`replay_answers = "both"`, the learning runs' own)."""
    import shutil

    from repotune import builtin
    from tuner.data import others, own

    kept = builtin.cache_root() / "benchmarks" / "answers" / f"{base.fingerprint}.json"
    state = Path(tempfile.mkdtemp(prefix="replay-kl-step-"))
    here = own.cache_path(state, base)
    if kept.is_file():
        here.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, here)
    rows = others.general_replay(count - count // 2, 0, lambda qs: own.answers(base, qs, state))
    if here.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(here, kept)
    rows += others.general_replay(count // 2, 0)  # and the set's gold answers, as `replay_answers = "both"` has
    return [{"messages": r.messages} for r in rows]


def _random_batches(rows: list[Any], size: int, seed: int) -> list[list[Any]]:
    order = rows[:]
    random.Random(seed).shuffle(order)
    return [order[i: i + size] for i in range(0, len(order), size)]


def _padded(batches: list[list[Any]]) -> float:
    real = sum(len(r.ids) for b in batches for r in b)
    return 1 - real / sum(len(b) * max(len(r.ids) for r in b) for b in batches)


@contextlib.contextmanager
def _head_everywhere(on: bool) -> Any:
    """The replay logits from the model's whole forward, as a head that scales its logits gets them."""
    from tuner.train import pinned

    plain = pinned._plain_head
    if on:
        pinned._plain_head = lambda config: False
    try:
        yield
    finally:
        pinned._plain_head = plain


def _labelled(batch: list[Any], pad: int) -> tuple[Any, Any, Any]:
    """A replay batch as a supervised one: padded ids, attention, and labels on the answers alone."""
    import torch

    width = max(len(r.ids) for r in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(batch):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        attention[i, : len(r.ids)] = 1
        labels[i, r.start: len(r.ids)] = ids[i, r.start: len(r.ids)]
    return ids, attention, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="builtin:smol")
    ap.add_argument("--rows", type=int, default=240, help="general replay rows (a pass is rows / batch batches)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top", type=int, default=64)
    ap.add_argument("--passes", type=int, default=1, help="whole passes timed for each way")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "replay-kl-step"))
    a = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from repotune import models
    from tuner.train import pinned, sft

    base = models.resolve(a.base)
    tok = AutoTokenizer.from_pretrained(base.path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    chats = _replay_rows(base, a.rows)
    torch.manual_seed(0)
    causal = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    add_fused_lm_head(causal, outputs=("entropy", "is_top1"))  # as SFTTrainer adds it, before PEFT
    model = get_peft_model(causal,
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                           "gate_proj", "up_proj", "down_proj"]))
    model.train()
    ways: dict[str, list[list[pinned.Row]]] = {}
    for _ in range(a.passes):
        for name, top in (("random", 0), ("grouped", 0), ("grouped, head everywhere", 0), (f"top {a.top}", a.top)):
            rows = pinned.encode(chats, tok, 256)
            if name == "random":
                batches = _random_batches(rows, a.batch, len(ways.get(name, [])))
            else:
                stream = pinned.batches(rows, a.batch, seed=0)
                batches = [next(stream) for _ in range(-(-len(rows) // a.batch))]
            ways.setdefault(name, []).extend(batches)
            if top:  # the second pass of the same rows: the base's side is kept from the first
                ways.setdefault(f"{name}, filling", []).extend(batches)
    tops = {name: (a.top if name.startswith("top") else 0) for name in ways}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    order = [f"top {a.top}, filling"] + [n for n in ways if not n.endswith("filling")]
    count = len(ways["random"])
    supervised = {"supervised, every position": contextlib.nullcontext,
                  "supervised, answers only": sft.answers_only_head}
    seconds.update({name: [] for name in supervised})
    for i in range(count):
        for name in order if i % 2 == 0 else [order[0], *reversed(order[1:])]:
            batch = ways[name][i]
            started = time.perf_counter()
            with _head_everywhere(name.endswith("head everywhere")):
                pinned.kl_to_base(model, batch, pad, tops[name]).backward()
            seconds[name].append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
        for name, within in supervised.items() if i % 2 == 0 else reversed(supervised.items()):
            ids, attention, labels = _labelled(ways["grouped"][i], pad)
            started = time.perf_counter()
            with within():
                model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).loss.backward()
            seconds[name].append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
    figures: dict[str, Any] = {
        "base": a.base, "replay_rows": len(chats), "batch": a.batch, "passes": a.passes, "top": a.top,
        "threads": torch.get_num_threads(),
        "ways": {name: {"seconds_a_batch": round(statistics.fmean(s), 3), "batches": len(s),
                        "padded": round(_padded(ways.get(name, ways["grouped"])), 3)}
                 for name, s in seconds.items()},
    }
    print(json.dumps(figures, indent=2))
    Path(f"{a.out}-{a.base.replace(':', '-')}.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
