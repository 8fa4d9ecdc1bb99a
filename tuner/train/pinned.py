"""Learning the repository without forgetting: the base's distribution pinned on general replay.

Replaying the base's own greedy answers as ordinary examples pins what it *says* (its
argmax), not the likelihoods it gives every other reply, and multiple-choice scores move
with those likelihoods (RESULTS.md: 8 points lost on builtin:smol with the greedy score
kept). With `train.replay_kl` above 0 the general replay examples leave the supervised
set and become a second stream: at every step a batch of them is run through the model
twice, once with the adapter and once without (PEFT's `disable_adapter`), and the loss
gains `replay_kl` times the KL divergence KL(base ‖ adapter) over the vocabulary at
their answers' positions. The adapter is free to learn the domain; on general prompts it
is held to the base's whole next-token distribution (self-distillation with soft targets).

Costs: each step adds one forward without gradients and one with, on a replay batch. With
`train.replay_kl_top` above 0 the forward without the adapter runs once per replay row, the
first time the row is drawn: the base's distribution at each answer position is kept as its
top tokens' log-probabilities and the rest's, and the KL is taken between the two
distributions coarsened to those tokens and "the rest" (a lower bound of the whole KL, equal
to it when the two agree on the rest's shape).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

REPLAY_KIND = "general"  # rows of train.jsonl the replay generator made (tuner.data.others.general_replay)


def split(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The supervised rows and the general replay rows the KL term takes."""
    supervised: list[dict[str, Any]] = []
    replay: list[dict[str, Any]] = []
    for r in rows:
        (replay if r.get("kind") == REPLAY_KIND and r.get("generator") == "replay" else supervised).append(r)
    return supervised, replay


@dataclass
class Row:
    """A replay chat as token ids (the chat template's, as training sees them)."""

    ids: list[int]
    start: int  # where its answer starts
    # with train.replay_kl_top: the base's top token ids and log-probabilities at each answer position, and the
    # log-probability of all the other tokens together; filled the first time the row is drawn
    ref: tuple[Any, Any, Any] | None = None


def encode(rows: list[dict[str, Any]], tokenizer: Any, max_len: int) -> list[Row]:
    """Each chat as token ids and where its answer starts; chats whose answer the cut leaves out are dropped."""
    out = []
    for r in rows:
        messages = r["messages"]
        full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
        prompt = _ids(tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True))
        start = len(prompt)
        if start < min(len(full), max_len) and full[:start] == prompt:  # some answer left after the cut
            out.append(Row(full[:max_len], start))
    return out


def _ids(x: Any) -> list[int]:
    return list(x["input_ids"] if hasattr(x, "keys") else x)  # a BatchEncoding, or plain ids


def batches(encoded: list[Row], size: int, seed: int) -> Iterator[list[Row]]:
    """Batches of replay chats without end: each pass over them in a new order, fixed by the seed,
    and grouped by length as the supervised batches are (`group_by_length`), so that a batch is
    padded to little more than its rows: the KL term runs each batch twice, and the replay rows'
    lengths vary by a factor of four (the base's answers run to 80 tokens, the questions vary)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [len(r.ids) for r in encoded]
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = get_length_grouped_indices(lengths, size, generator=generator)
        for i in range(0, len(order), size):
            yield [encoded[j] for j in order[i: i + size]]


def _answer_logits(model: Any, batch: list[Row], pad_id: int) -> Any:
    """The model's logits at the positions that predict each row's answer tokens, rows one after another."""
    import torch

    device = next(model.parameters()).device
    width = max(len(r.ids) for r in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    # position t predicts token t + 1: the answer's tokens are predicted from start - 1 to len - 2
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, r in enumerate(batch):
        input_ids[i, : len(r.ids)] = torch.tensor(r.ids)
        attention[i, : len(r.ids)] = 1
        mask[i, r.start - 1: len(r.ids) - 1] = True
    input_ids, attention, mask = input_ids.to(device), attention.to(device), mask.to(device)
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not _plain_head(causal.config):  # the head scales or caps its logits: the model's own forward applies it
        return model(input_ids=input_ids, attention_mask=attention).logits[mask].float()
    # the head (a vocabulary-wide product, a fifth of builtin:smol's) only where an answer token is predicted
    hidden = causal.get_decoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
    return causal.get_output_embeddings()(hidden[mask]).float()


# config fields with which a causal model's head does more than its projection (Gemma 2's soft cap, Cohere's scale,
# Granite's and Falcon-H1's multipliers): such a model's logits are taken from its own forward
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")


def _plain_head(config: Any) -> bool:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return all(getattr(text, name, None) is None for name in _HEAD_TRANSFORMS)


def _remember(model: Any, rows: list[Row], pad_id: int, top: int) -> None:
    """The base's top-`top` tokens and the rest's mass at each answer position of `rows`, kept on the rows."""
    import torch

    with torch.no_grad(), model.disable_adapter():
        logp = torch.log_softmax(_answer_logits(model, rows, pad_id), dim=-1)
    values, ids = logp.topk(min(top, logp.shape[-1]), dim=-1)
    rest = logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    at = 0
    for r in rows:
        n = len(r.ids) - r.start
        r.ref = (ids[at: at + n].to(torch.int32), values[at: at + n], rest[at: at + n])
        at += n


def kl_to_base(model: Any, batch: list[Row], pad_id: int, top: int = 0) -> Any:
    """Mean KL(base ‖ model) over the answers' tokens of `batch`; `model` is a PEFT model. With `top`, the
    base's side is each row's kept top tokens and the rest (computed the first time the row is drawn)."""
    import torch

    if not top:
        with torch.no_grad(), model.disable_adapter():
            ref_logp = torch.log_softmax(_answer_logits(model, batch, pad_id), dim=-1)
        cur_logp = torch.log_softmax(_answer_logits(model, batch, pad_id), dim=-1)
        return (ref_logp.exp() * (ref_logp - cur_logp)).sum(-1).mean()
    missing = [r for r in batch if r.ref is None]
    if missing:
        _remember(model, missing, pad_id, top)
    cur_logp = torch.log_softmax(_answer_logits(model, batch, pad_id), dim=-1)
    refs = [r.ref for r in batch if r.ref is not None]
    ids = torch.cat([x[0] for x in refs]).to(cur_logp.device, torch.long)
    ref_top, ref_rest = (torch.cat([x[i] for x in refs]).to(cur_logp.device) for i in (1, 2))
    cur_top = cur_logp.gather(-1, ids)
    cur_rest = cur_logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    head = (ref_top.exp() * (ref_top - cur_top)).sum(-1)
    # the rest's term; none where the kept tokens are the whole vocabulary (0 · log 0 = 0), and only the others
    # reach the graph (a where() over both would carry the empty rest's nan into the gradient)
    some = ref_rest > float("-inf")
    tail = torch.zeros_like(head)
    tail[some] = ref_rest[some].exp() * (ref_rest[some] - cur_rest[some])
    return (head + tail).mean()


def trainer_class(weight: float, replay: list[Row], batch_size: int, seed: int, pad_id: int, top: int = 0) -> Any:
    """TRL's SFTTrainer with the KL term added to each training step's loss."""
    from trl import SFTTrainer

    stream = batches(replay, batch_size, seed)

    class PinnedSFTTrainer(SFTTrainer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.kl_seen: list[float] = []

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not self.model.training:
                return result
            kl = kl_to_base(self.accelerator.unwrap_model(model), next(stream), pad_id, top)
            self.kl_seen.append(float(kl.detach()))
            added = weight * kl / self.args.gradient_accumulation_steps
            if return_outputs:
                return result[0] + added, result[1]
            return result + added

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.kl_seen and "loss" in logs:
                logs["replay_kl"] = sum(self.kl_seen) / len(self.kl_seen)
                self.kl_seen.clear()
            super().log(logs, start_time)

    return PinnedSFTTrainer
