"""builtin:tiny: build time from nothing and when cached, size, and its general-knowledge score.

Builds into a fresh temporary cache (tokenizer and model, as on a new machine), builds
again to time the cached path, then answers the general set's eval split greedily
through transformers (and as multiple choice). The limits it is held to: at most
10 minutes from nothing, under 2 seconds cached, at least 95% on the eval split.

    python benchmarks/builtin_tiny.py [--keep]   # --keep: build into the user cache instead
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from eval import general, questions
from eval.local import LocalModel
from repotune import builtin, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="build into the user cache (a cold build only if absent)")
    args = parser.parse_args()
    cache = builtin.cache_root() if args.keep else Path(tempfile.mkdtemp(prefix="repotune-bench-"))

    start = time.perf_counter()
    built = builtin.build_model(cache=cache)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again = builtin.build_model(cache=cache)
    warm = time.perf_counter() - start
    assert again.cached

    record = json.loads((built.path / "repotune-build.json").read_text())
    qs = questions.load(split="eval")
    start = time.perf_counter()
    report = general.run(LocalModel(built.path), qs, model="builtin:tiny", mc=True)
    eval_s = time.perf_counter() - start
    result = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "cold_build_s": round(cold, 1) if not built.cached else None,
        "cached_build_s": round(warm, 3),
        "cold_vs_10min_limit": round(cold / 600, 2) if not built.cached else None,
        "parameters": record["parameters"],
        "train_steps": record["train_steps"],
        "final_loss": record["final_loss"],
        "fingerprint": models.fingerprint(built.path),
        "eval_questions": report.n,
        "eval_score": report.score,
        "eval_mc_score": report.mc_score,
        "eval_seconds": round(eval_s, 1),
        "wrong": [(r.question, r.expected, r.reply) for r in report.results if not r.correct],
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
