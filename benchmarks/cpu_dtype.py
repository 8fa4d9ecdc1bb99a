"""Matrix products in bfloat16 against float32 on this CPU, at the shapes a training step of a base runs.

`train.dtype = "auto"` trains in float32 on a CPU that multiplies the model's own
half-precision dtype more than twice as slowly (`tuner.train.backends.training_dtype`).
This times, in one process and taking turns, the products of one layer of the base's
linear projections for a batch of `--tokens` tokens in both dtypes, and prints each
shape's milliseconds and their ratio, with what torch says of the CPU.

    python -m benchmarks.cpu_dtype --base builtin:smol
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="builtin:smol")
    ap.add_argument("--tokens", type=int, default=768, help="rows of the products: a batch of 8 rows of 96 tokens")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "cpu-dtype"))
    a = ap.parse_args()

    import torch

    from repotune import models

    config = json.loads((models.resolve(a.base).path / "config.json").read_text())
    hidden, mlp = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    shapes = {"q_proj, o_proj": (hidden, hidden), "k_proj, v_proj": (hidden, hidden * kv // heads),
              "gate_proj, up_proj": (hidden, mlp), "down_proj": (mlp, hidden)}
    times: dict[str, dict[str, list[float]]] = {s: {"float32": [], "bfloat16": []} for s in shapes}
    for _ in range(a.rounds):
        for name, (k, n) in shapes.items():
            for dtype in ("float32", "bfloat16"):
                x = torch.randn(a.tokens, k, dtype=getattr(torch, dtype))
                w = torch.randn(k, n, dtype=getattr(torch, dtype))
                x @ w
                started = time.perf_counter()
                x @ w
                times[name][dtype].append(time.perf_counter() - started)
    figures = {"base": a.base, "tokens": a.tokens, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "threads": torch.get_num_threads(), "shapes": {}}
    for name, (k, n) in shapes.items():
        f32, b16 = (statistics.median(times[name][d]) * 1000 for d in ("float32", "bfloat16"))
        figures["shapes"][name] = {"k": k, "n": n, "float32_ms": round(f32, 2), "bfloat16_ms": round(b16, 2),
                                   "ratio": round(b16 / f32, 1)}
    print(json.dumps(figures, indent=2))
    Path(f"{a.out}-{a.base.replace(':', '-')}.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
