"""Asking a model questions in-process, with transformers: greedy answers and option scores.

This is the eval's local backend: it loads the model folder (and optionally a PEFT
adapter) on the CPU or GPU and answers in batches. The live-endpoint backend asks the
same questions through the OpenAI API; both render the prompt with the model's own chat
template and decode greedily, so their scores are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_NEW_TOKENS = 48


class LocalModel:
    def __init__(self, path: Path, adapter: Path | None = None, batch_size: int = 32):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size

    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": question}]
        text: str = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text

    def answer(self, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        """Greedy replies, one per question."""
        return [reply for reply, _ in self.generate(questions, max_new_tokens)]

    def generate(self, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[tuple[str, bool]]:
        """Greedy replies, each with whether it ended by itself (an end-of-turn token) rather
        than at `max_new_tokens`."""
        ends = self.model.generation_config.eos_token_id
        ends = set(ends if isinstance(ends, list) else [ends if ends is not None else self.tokenizer.eos_token_id])
        replies: list[tuple[str, bool]] = []
        for i in range(0, len(questions), self.batch_size):
            prompts = [self.prompt(q) for q in questions[i : i + self.batch_size]]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(self.device)
            with self.torch.no_grad():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            width = enc["input_ids"].shape[1]
            replies += [(self.tokenizer.decode(row[width:], skip_special_tokens=True).strip(),
                         bool(ends & set(row[width:].tolist()))) for row in out]
        return replies

    def option_logprobs(self, question: str, options: Sequence[str]) -> list[float]:
        """Log-likelihood of each option as the whole reply (its end-of-turn token included).

        The prompt goes through the model once, and the options together after it, from its cached keys
        and values: the prompt is most of each sequence, and was run once per option before. The options
        are padded on the right, where no option's own tokens attend, so the padding changes nothing."""
        torch = self.torch
        prompt_ids = self.tokenizer(self.prompt(question), add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token or ""
        option_ids = [self.tokenizer(option + eos, add_special_tokens=False)["input_ids"] for option in options]
        if not option_ids:
            return []
        width = max(len(ids) for ids in option_ids)
        batch = torch.full((len(option_ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        for i, ids in enumerate(option_ids):
            batch[i, : len(ids)] = torch.tensor(ids)
        with torch.no_grad():
            head = self.model(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True,
                              logits_to_keep=1)
            first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)  # predicts each option's first token
            cache = head.past_key_values
            cache.batch_repeat_interleave(len(option_ids))
            logits = self.model(input_ids=batch.to(self.device), past_key_values=cache, use_cache=False).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores = []
        for i, ids in enumerate(option_ids):
            rest = torch.tensor(ids[1:], device=self.device)
            scores.append(float(first[ids[0]] + logprobs[i, : len(ids) - 1].gather(1, rest[:, None]).sum()))
        return scores
