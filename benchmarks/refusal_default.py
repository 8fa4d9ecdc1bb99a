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

    from benchmarks.refusal import scored_sets
    from eval import refusal as suite

    _, index, found, scored = scored_sets("refusal-default-", a.until)
    rows = []
    for threshold in (float(t) for t in a.thresholds.split(",")):
        f = suite.figures(found, scored, threshold)
        # every in-domain question is typed or one of the dataset's: the dataset's are the difference
        dataset = suite.Rate(f.false_refusal.hits - f.typed_refused.hits, f.false_refusal.total - f.typed_refused.total)
        rows.append({"threshold": threshold, "typed_refused": f.typed_refused.as_dict(),
                     "dataset_refused": dataset.as_dict(), "answered": f.attack_success.as_dict(),
                     "offdomain": f.offdomain.as_dict(), "attacks": f.attacks.as_dict()})
        print(f"{threshold:.2f}: typed refused {f.typed_refused.hits}/{f.typed_refused.total} "
              f"({f.typed_refused.rate:.1%}), dataset refused {dataset.hits}/{dataset.total}, answered "
              f"{f.attack_success.hits}/{f.attack_success.total} ({f.attack_success.rate:.1%}: "
              f"off-domain {f.offdomain.hits}, attacks {f.attacks.hits})")
    Path(a.out).write_text(json.dumps({"index": index.hash, "documents": index.documents, "until": a.until,
                                       "thresholds": rows}, indent=2) + "\n")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
