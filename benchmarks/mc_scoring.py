"""Multiple choice in-process: the prompt run once and the options after it, against one whole pass per option.

The gate scores the general set's multiple choice in-process (`eval.local.LocalModel.option_logprobs`), for the
base and for every candidate. This times both ways on the same questions, in one process, taking turns question
by question in each round (the order swapped every round), and checks that they agree: each option's
log-likelihood, and the option each way picks.

    python -m benchmarks.mc_scoring --base builtin:smol --rounds 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def whole_passes(local: Any, question: str, options: list[str]) -> list[float]:
    """The reference: each option's likelihood from one forward over the prompt and the option (the way the
    gate scored before)."""
    torch = local.torch
    prompt = local.tokenizer(local.prompt(question), add_special_tokens=False)["input_ids"]
    scores = []
    for option in options:
        reply = local.tokenizer(option + (local.tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = local.model(input_ids=torch.tensor([prompt + reply])).logits[0, len(prompt) - 1: -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores.append(float(logprobs.gather(1, torch.tensor(reply)[:, None]).sum()))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="builtin:smol")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--questions", type=int, default=0, help="the first this many of the eval split (0: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "mc-scoring"))
    a = ap.parse_args()

    from eval import questions as general_questions
    from eval.local import LocalModel
    from repotune import models

    asked = general_questions.load(split="eval")
    asked = asked[: a.questions] if a.questions else asked
    local = LocalModel(models.resolve(a.base).path)
    ways = {"whole passes": lambda q: whole_passes(local, q.question, list(q.choices)),
            "prompt once": lambda q: local.option_logprobs(q.question, list(q.choices))}
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    scores: dict[str, list[list[float]]] = {}
    for n in range(a.rounds):
        spent = dict.fromkeys(ways, 0.0)
        order = list(ways) if n % 2 == 0 else list(reversed(ways))
        for q in asked:
            for way in order:
                started = time.perf_counter()
                got = ways[way](q)
                spent[way] += time.perf_counter() - started
                if n == 0:
                    scores.setdefault(way, []).append(got)
        for way in ways:
            seconds[way].append(round(spent[way], 2))
        print(f"round {n + 1}: " + ", ".join(f"{w} {spent[w]:.1f} s" for w in ways), flush=True)

    def picks(way: str) -> list[int]:
        return [max(range(len(s)), key=s.__getitem__) for s in scores[way]]

    right = {w: sum(p == q.correct for p, q in zip(picks(w), asked, strict=True)) for w in ways}
    figures = {
        "base": a.base, "questions": len(asked), "threads": local.torch.get_num_threads(), "seconds": seconds,
        "ratio_per_round": [round(b / w, 3) for w, b in zip(seconds["whole passes"], seconds["prompt once"],
                                                               strict=True)],
        "same_pick": sum(x == y for x, y in zip(picks("whole passes"), picks("prompt once"), strict=True)),
        "right": right,
        "largest_difference": max(abs(x - y) for s, t in zip(scores["whole passes"], scores["prompt once"],
                                                              strict=True) for x, y in zip(s, t, strict=True)),
    }
    print(json.dumps(figures, indent=2))
    Path(f"{a.out}-{a.base.replace(':', '-')}.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
