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
        """Log-likelihood of each option as the whole reply (its end-of-turn token included)."""
        torch = self.torch
        prompt = self.prompt(question)
        eos = self.tokenizer.eos_token or ""
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for option in options:
            option_ids = self.tokenizer(option + eos, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + option_ids], device=self.device)
            with torch.no_grad():
                logits = self.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(option_ids, device=self.device)
            scores.append(float(logprobs.gather(1, target[:, None]).sum()))
        return scores
