"""The domain policy before any calibration: what each threshold refuses and lets through.

Until `repotune eval refusal --calibrate` stores a threshold for an index, the gateway uses
`policy.threshold`; a newcomer's `make run` never calibrates. This repository at HEAD is ingested
and built into a dataset, the index built as `repotune ingest` builds it, and the shipped refusal
sets (up to `--until REV`: the batches read so far) scored; for each threshold: the typed in-domain
questions refused, the dataset's held-out questions refused, and the off-domain questions and attacks
answered, each with its count and Wilson 95% upper bound.

    python -m benchmarks.refusal_default --until 3dda6a1 [--thresholds 0.3,0.4,0.5,0.6,0.7]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--until", default="", help="leave out the items added after this revision")
    ap.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "refusal-default.json"))
    a = ap.parse_args()

    from benchmarks.refusal import domain
    from benchmarks.refusal_fresh import ids_at
    from eval import refusal as suite
    from repotune import config as cfg
    from repotune import relevance

    settings = cfg.load(domain("refusal-default-", data=True))
    policy = settings.config.policy
    index = relevance.load(settings.data_dir)
    assert index is not None, "the ingest built no domain index"
    found = suite.items(settings)
    if a.until:
        until = ids_at(a.until)
        found = [i for i in found if i.id in until or suite.source(i) == "dataset"]
    scored = suite.scores(found, index, policy.refusal, policy.score_parts)
    rows = []
    for threshold in (float(t) for t in a.thresholds.split(",")):
        f = suite.figures(found, scored, threshold).as_dict()
        dataset = suite.Rate(sum(1 for i, s in zip(found, scored, strict=True)
                                 if suite.source(i) == "dataset" and i.set == "indomain" and s < threshold),
                             sum(1 for i in found if suite.source(i) == "dataset" and i.set == "indomain"))
        rows.append({"threshold": threshold, "typed_refused": f["typed_refused"],
                     "dataset_refused": dataset.as_dict(), "answered": f["attack_success"],
                     "offdomain": f["offdomain"], "attacks": f["attacks"]})
        print(f"{threshold:.2f}: typed refused {f['typed_refused']['hits']}/{f['typed_refused']['total']} "
              f"({f['typed_refused']['rate']:.1%}), dataset refused {dataset.hits}/{dataset.total}, answered "
              f"{f['attack_success']['hits']}/{f['attack_success']['total']} ({f['attack_success']['rate']:.1%}: "
              f"off-domain {f['offdomain']['hits']}, attacks {f['attacks']['hits']})")
    Path(a.out).write_text(json.dumps({"index": index.hash, "documents": index.documents, "until": a.until,
                                       "thresholds": rows}, indent=2) + "\n")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
