"""The domain policy with a large repository as the domain: index build time and memory, and the
time one decision adds to every request (p50 and p99), against this repository's index.

A history of `--commits` commits (with `--prs` merged pull requests; the ingest benchmark's
generator) is ingested with `repotune ingest`, which builds and saves the index. Then, in
a child process of its own for each repository (so its peak RSS is the build's): the
documents read from the store, the index fitted (time, the child's peak RSS, the saved
file's size). Then per request, in-process: every item of the shipped refusal sets (one
to three user turns each) decided `--rounds` times in a shuffled order, each decision
timed alone; p50 and p99 over all of them. The gateway runs this decision before it
forwards a request, and nothing else of the policy, so it is what the policy adds to a
request end to end.

    python -m benchmarks.refusal_scale [--commits 10000] [--prs 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=10000)
    ap.add_argument("--prs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "refusal-scale.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)  # a config: build its index here, print the figures
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_build(Path(a.child))))
        return

    from benchmarks.ingest_history import generate

    work = Path(tempfile.mkdtemp(prefix="refusal-scale-"))
    history, _ = generate(work, a.commits, a.prs, 0)
    result: dict[str, Any] = {"commits": a.commits, "prs": a.prs}
    for name, repo in (("this repository", ROOT), (f"generated, {a.commits:,} commits", history)):
        config = work / f"{len(result)}.toml"
        config.write_text(f'[ingest]\nrepo = "{repo}"\n[paths]\ndata_dir = "{work / config.stem}"\n'
                          '[tuner]\nlineage = "scale"\n')
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "repotune.cli", "ingest", "--json", "--config", str(config)],
                       check=True, capture_output=True)
        ingest_s = time.monotonic() - started
        built = json.loads(subprocess.run([sys.executable, "-m", "benchmarks.refusal_scale", "--child", str(config)],
                                          check=True, capture_output=True, text=True).stdout)
        built["ingest_with_index_s"] = round(ingest_s, 1)
        built["decision_ms"] = _latency(config, a.rounds)
        result[name] = built
        print(f"{name}: {built}", flush=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {a.out}")


def _build(config: Path) -> dict[str, Any]:
    from repotune import config as cfg
    from repotune import db as store
    from repotune import relevance

    settings = cfg.load(config)
    db = store.open_db(store.db_path(settings.data_dir))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    docs = relevance.documents(db, settings.data_dir, settings.lineage, settings.config.policy.index_skip)
    read_s = time.perf_counter() - started
    index = relevance.build(docs)
    build_s = time.perf_counter() - started - read_s
    assert index is not None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"documents": index.documents, "read_s": round(read_s, 2), "fit_s": round(build_s, 2),
            "peak_rss_mb": round(peak / 1024), "rss_growth_mb": round((peak - before) / 1024),
            "index_file_mb": round(relevance.path(settings.data_dir).stat().st_size / 2**20, 1)}


def _latency(config: Path, rounds: int) -> dict[str, float]:
    from eval import refusal
    from repotune import config as cfg
    from repotune import relevance
    from repotune.policy import decide

    settings = cfg.load(config)
    index = relevance.load(settings.data_dir)
    requests = [list(i.turns) for i in refusal.items(settings)] * rounds
    random.Random(0).shuffle(requests)
    times = []
    for turns in requests:
        t = time.perf_counter()
        decide(turns, index, 0.7, settings.config.policy.refusal)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"n": len(times), "p50": round(statistics.median(times), 3), "p99": round(times[int(0.99 * len(times))], 3),
            "max": round(times[-1], 3)}


if __name__ == "__main__":
    main()
