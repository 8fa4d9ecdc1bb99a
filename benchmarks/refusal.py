"""The domain policy on this repository: how many real questions it refuses, how many
off-domain questions and attacks it lets through, before and after calibration.

This repository at HEAD is ingested into a temporary store (`repotune ingest`, which
builds the domain index; with `--data`, `repotune data build` too, whose training
questions join the index), then `repotune eval refusal` scores the shipped sets at the
configured threshold, and `repotune eval refusal --calibrate` picks one on half of each
set and reports it on the other half. Also timed, in the same run: building the index,
and one decision (every user turn scored) against the same request passed through
unscored — the gateway's added cost per request. Beside it, in the same run and
in-process: the same sets with each turn's parts scored too (`policy.score_parts`), at
the configured threshold and calibrated the same way.

    python -m benchmarks.refusal [--data]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _cli(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "repotune.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return done.stdout


def domain(prefix: str, data: bool) -> Path:
    """This repository ingested into a new store (with `data`, built into a dataset too): its config."""
    import tomli_w

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    config = folder / "config.toml"
    config.write_text(tomli_w.dumps({"ingest": {"repo": str(ROOT), "workers": 1},
                                     "paths": {"data_dir": str(folder / "state")},
                                     "tuner": {"lineage": "repotune", "data": {"generators": ["templates"]}}}))
    _cli(config, "ingest")
    if data:
        _cli(config, "data", "build")
    return config


def ids_at(rev: str) -> set[str]:
    """The ids of the shipped refusal sets as they were at `rev`."""
    out: set[str] = set()
    for name in ("indomain", "offdomain", "attacks"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:eval/data/refusal/{name}.jsonl"],
                              capture_output=True, text=True, check=True).stdout
        out |= {json.loads(line)["id"] for line in text.splitlines() if line.strip()}
    return out


def scored_sets(prefix: str, until: str = "") -> tuple[Any, Any, list[Any], list[float]]:
    """This repository ingested and built into a dataset (`domain`), its saved index, and the shipped sets
    with the dataset's held-out questions (`eval.refusal.items`; without the items added after `until`, when
    given) scored as the gateway scores them: (settings, index, items, scores)."""
    from eval import refusal as suite
    from repotune import config as cfg
    from repotune import relevance

    settings = cfg.load(domain(prefix, data=True))
    policy = settings.config.policy
    index = relevance.load(settings.data_dir)
    assert index is not None, "the ingest built no domain index"
    found = suite.items(settings)
    if until:
        kept = ids_at(until)
        found = [i for i in found if i.id in kept or suite.source(i) == "dataset"]
    return settings, index, found, suite.scores(found, index, policy.refusal, policy.score_parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="store_true", help="also build a dataset (its training questions join the index)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "refusal.json"))
    a = ap.parse_args()

    from repotune import config as cfg
    from repotune import db as store
    from repotune import relevance

    config = domain("refusal-", a.data)
    settings = cfg.load(config)
    db = store.open_db(store.db_path(settings.data_dir))
    started = time.perf_counter()
    docs = relevance.documents(db, settings.data_dir, settings.lineage, settings.config.policy.index_skip)
    index = relevance.build(docs)
    build_s = time.perf_counter() - started
    assert index is not None
    before = json.loads(_cli(config, "eval", "refusal", "--json"))
    after = json.loads(_cli(config, "eval", "refusal", "--calibrate", "--json"))
    decide_ms, passthrough_ms = _decision_cost(index, settings.config.policy.refusal)
    from eval import refusal as suite

    found = suite.items(settings)  # beside the default: each turn's parts scored too (policy.score_parts)
    by_parts = suite.scores(found, index, settings.config.policy.refusal, split=True)
    parts_calibrated = suite.calibrate(found, by_parts, settings.config.policy.max_false_refusal)
    parts_figures = {"configured": suite.figures(found, by_parts, settings.config.policy.threshold).as_dict(),
                     "calibrated": suite.figures(found, by_parts, parts_calibrated["threshold"]).as_dict(),
                     "calibration": parts_calibrated}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = {"commit": commit, "data": a.data, "documents": index.documents, "background": index.background,
              "index_build_s": round(build_s, 2), "decision_ms": round(decide_ms, 3),
              "passthrough_ms": round(passthrough_ms, 4), "configured": before, "calibrated": after,
              "score_parts": parts_figures}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, r in (("threshold 0.7 (configured)", before), ("calibrated", after)):
        f = r["figures"]
        print(f"{name}: threshold {r['threshold']:.3f}; false refusals {f['false_refusal']['hits']}/"
              f"{f['false_refusal']['total']}, off-domain answered {f['offdomain']['hits']}/{f['offdomain']['total']}, "
              f"attacks answered {f['attacks']['hits']}/{f['attacks']['total']}")
    w = parts_figures["calibrated"]
    print(f"policy.score_parts, calibrated: threshold {w['threshold']:.3f}; false refusals "
          f"{w['false_refusal']['hits']}/{w['false_refusal']['total']}, off-domain answered "
          f"{w['offdomain']['hits']}/{w['offdomain']['total']}, attacks answered {w['attacks']['hits']}/"
          f"{w['attacks']['total']}")
    c = after["calibration"]["check"]
    print(f"calibrated, on the half it did not see: false refusals {c['false_refusal']['hits']}/"
          f"{c['false_refusal']['total']}, off-domain or attacks answered {c['attack_success']['hits']}/"
          f"{c['attack_success']['total']}")
    print(f"index: {index.documents:,} documents, built in {build_s:.1f} s; a decision {decide_ms:.2f} ms "
          f"(unscored: {passthrough_ms:.4f} ms); written to {a.out}")


def _decision_cost(index: object, refusal: str) -> tuple[float, float]:
    """Milliseconds per request: the decision on a three-turn chat, and the same request not scored
    (reading its turns only), alternated over rounds."""
    from repotune.policy import decide, user_turns

    body = {"messages": [{"role": "user", "content": "Where does the gateway count tokens?"},
                         {"role": "assistant", "content": "In serve/metrics.py."},
                         {"role": "user", "content": "and how are the streamed chunks' usage read there?"}]}
    scored, passed = [], []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(200):
            decide(user_turns(body), index, 0.7, refusal)  # type: ignore[arg-type]
        scored.append((time.perf_counter() - t) / 200 * 1000)
        t = time.perf_counter()
        for _ in range(200):
            user_turns(body)
        passed.append((time.perf_counter() - t) / 200 * 1000)
    return sorted(scored)[2], sorted(passed)[2]


if __name__ == "__main__":
    main()
