"""The domain index at two revisions (its code, `repotune/relevance.py`, and its background):
what the policy refuses and lets through with each.

The background is what the domain is told apart from (`repotune.relevance.background`: the
general set's questions, `tuner/data/offdomain.txt`, and those inside the wrappers of
`tuner/data/injections.txt`); the code is which documents it reads from the store, how texts
are cut into words, fitted and scored. This repository at HEAD is ingested and built into a
dataset once (`repotune ingest`, `repotune data build`); its documents are then read and
indexed by `repotune/relevance.py` as it was at `--against` (loaded from git) against the
background as it was then, by the working tree's against its own, and by the working tree's
with the words the domain never uses not weighed (`UNKNOWN_WEIGHT = 0`: what the scoring adds,
apart from which documents are read), and the shipped sets are scored with each, whole turns
and by parts (`policy.score_parts`), each calibrated the same way (`repotune eval refusal
--calibrate`'s rule: false refusals at most `policy.max_false_refusal` of the calibration
half) and reported on both halves. (Which parts of a turn are long enough to be scored on
their own is counted with the working tree's words in all.)

With `--splits N`, each calibration is also made on N other halvings of the sets (`eval.refusal.half`
with seeds 0 to N-1), and the figures on the half each did not see are summed up (mean,
10th and 90th percentile): how much a calibrated rate owes to which questions fell in which half.

    python -m benchmarks.refusal_background --against 9e22cdb [--splits 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _at(rev: str) -> Any:
    def read(name: str) -> str | None:
        done = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{name}"], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None
    return read


def _relevance_at(rev: str) -> Any:
    """`repotune/relevance.py` as it was at `rev`, as a module of its own."""
    import sys
    import types

    source = _at(rev)("repotune/relevance.py")
    assert source is not None, f"no repotune/relevance.py at {rev}"
    module = types.ModuleType(f"relevance_at_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up by name
    exec(compile(source, f"{rev}:repotune/relevance.py", "exec"), module.__dict__)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", required=True, help="the revision whose background is the reference")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "refusal-background.json"))
    ap.add_argument("--splits", type=int, default=0, help="also calibrate on this many random halvings")
    a = ap.parse_args()

    from benchmarks.refusal import domain
    from eval import refusal as suite
    from repotune import config as cfg
    from repotune import db as store
    from repotune import relevance

    settings = cfg.load(domain("refusal-background-", data=True))
    policy = settings.config.policy
    db = store.open_db(store.db_path(settings.data_dir))
    found = suite.items(settings)
    result: dict[str, Any] = {"against": a.against, "items": len(found), "runs": {}}
    weight = relevance.UNKNOWN_WEIGHT
    for name, read, code, unknown in ((a.against, _at(a.against), _relevance_at(a.against), None),
                                      ("working tree, unknown words not weighed", None, relevance, 0.0),
                                      ("working tree", None, relevance, weight)):
        docs = code.documents(db, settings.data_dir, settings.lineage, policy.index_skip)
        others = code.background(read)
        index = code.build(docs, others)
        assert index is not None
        if unknown is not None:
            relevance.UNKNOWN_WEIGHT = unknown  # read by DomainIndex.scores at each call
        for split in (False, True):
            scored = suite.scores(found, index, policy.refusal, split)
            calibration = suite.calibrate(found, scored, policy.max_false_refusal)
            at = suite.figures(found, scored, calibration["threshold"]).as_dict()
            typed = at["typed_refused"]
            configured = suite.figures(found, scored, policy.threshold).as_dict()
            run = {"documents": len(docs), "background": len(others), "threshold": calibration["threshold"],
                   "by_source": calibration["by_source"], "figures": at,
                   "configured": configured,
                   "user_typed_refused": [typed["hits"], typed["total"]],
                   "check": calibration["check"]}
            if a.splits:
                run["splits"] = _resampled(suite, found, scored, policy.max_false_refusal, a.splits)
            label = f"{name}, {'parts' if split else 'whole turns'}"
            result["runs"][label] = run
            families = {k: f"{v['hits']}/{v['total']}" for k, v in at["by_group"].items()
                        if not k.startswith("in-domain")}
            print(f"{label}: background {len(others)}, threshold {calibration['threshold']:.3f}, "
                  f"user-typed refused {typed['hits']}/{typed['total']}, all in-domain refused "
                  f"{at['false_refusal']['hits']}/{at['false_refusal']['total']}, answered: off-domain "
                  f"{at['offdomain']['hits']}/{at['offdomain']['total']}, attacks "
                  f"{at['attacks']['hits']}/{at['attacks']['total']}; check half: refused "
                  f"{calibration['check']['false_refusal']['hits']}/{calibration['check']['false_refusal']['total']}"
                  f", answered {calibration['check']['attack_success']['hits']}/"
                  f"{calibration['check']['attack_success']['total']}; {families}; at the configured "
                  f"{policy.threshold}: refused {configured['false_refusal']['hits']}, answered "
                  f"{configured['attack_success']['hits']}; check half, user-typed refused "
                  f"{calibration['check']['typed_refused']['hits']}/{calibration['check']['typed_refused']['total']}"
                  + (f"; {a.splits} halvings, on the unseen half: {run['splits']}" if a.splits else ""), flush=True)
        relevance.UNKNOWN_WEIGHT = weight
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


def _resampled(suite: Any, found: list[Any], scored: list[float], bound: float, n: int) -> dict[str, Any]:
    """The calibration made on `n` random halvings: on the half each did not see, the typed questions refused,
    the in-domain ones refused and the off-domain questions and attacks answered (rates: mean, p10, p90)."""
    import statistics

    rates: dict[str, list[float]] = {"typed_refused": [], "false_refusal": [], "attack_success": []}
    for seed in range(n):
        check = suite.calibrate(found, scored, bound, seed=seed)["check"]
        for key in rates:
            rates[key].append(check[key]["hits"] / max(check[key]["total"], 1))
    out = {}
    for key, values in rates.items():
        cuts = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
        out[key] = {"mean": round(statistics.fmean(values), 4), "p10": round(cuts[0], 4), "p90": round(cuts[-1], 4)}
    return out


if __name__ == "__main__":
    main()
