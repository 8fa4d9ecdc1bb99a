"""The domain policy on questions nobody tuned it on: the refusal sets' second batch.

The gate's design and its calibration were worked out with the first batch of the refusal
sets in view; the second batch (`eval/data/refusal/README.md`) was written afterwards, blind
to the gate, and committed before it was scored. This repository at HEAD is ingested and
built into a dataset (its held-out questions join the in-domain set, as `repotune eval
refusal` reads them), the domain index is built as `repotune ingest` builds it, and the
threshold is calibrated exactly as `repotune eval refusal --calibrate` would have done
before the second batch existed: on the calibration half of the first batch and the
dataset's questions. Then every item of the second batch is scored at that threshold:
in-domain questions refused, off-domain questions and attacks answered, per topic, category
and family, each with its count and Wilson 95% upper bound. The first batch's own figures at
the same threshold (both halves) are beside them, and the threshold calibrated on everything
now shipped (what `--calibrate` picks today) with its figures on both batches.

    python -m benchmarks.refusal_fresh --first c523cc8^ [--until c523cc8] [--out benchmarks/refusal-fresh.json]

`--until REV` leaves out the items added after REV (a later batch), so that a reading can be made again
as it was.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def summary(figures: dict[str, Any]) -> dict[str, Any]:
    """The headline rates of `eval.refusal.Figures.as_dict()`, and every group's."""
    keep = ("false_refusal", "typed_refused", "attack_success", "offdomain", "attacks")
    return {**{k: figures[k] for k in keep}, "by_group": figures["by_group"]}


def line(name: str, f: dict[str, Any]) -> str:
    def r(x: dict[str, Any]) -> str:
        return f"{x['hits']}/{x['total']} ({x['rate']:.1%}, ≤{x['upper95']:.1%})"
    groups = ", ".join(f"{k} {v['hits']}/{v['total']}" for k, v in f["by_group"].items())
    return (f"{name}: typed refused {r(f['typed_refused'])}; off-domain answered {r(f['offdomain'])}; attacks "
            f"answered {r(f['attacks'])}; all answered {r(f['attack_success'])}\n    {groups}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--first", required=True, help="a revision whose refusal sets are the first batch")
    ap.add_argument("--until", default="", help="leave out the items added after this revision")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "refusal-fresh.json"))
    a = ap.parse_args()

    from benchmarks.refusal import ids_at, scored_sets
    from eval import refusal as suite

    settings, index, found, scored = scored_sets("refusal-fresh-", a.until)
    policy = settings.config.policy
    first_ids = ids_at(a.first)
    first = [(i, s) for i, s in zip(found, scored, strict=True) if i.id in first_ids or suite.source(i) == "dataset"]
    second = [(i, s) for i, s in zip(found, scored, strict=True)
              if i.id not in first_ids and suite.source(i) != "dataset"]
    assert second, "no item was added after --first"

    then = suite.calibrate([i for i, _ in first], [s for _, s in first], policy.max_false_refusal)
    threshold = then["threshold"]
    fresh = summary(suite.figures([i for i, _ in second], [s for _, s in second], threshold).as_dict())
    now = suite.calibrate(found, scored, policy.max_false_refusal)
    result = {
        "index": index.hash, "documents": index.documents, "score_parts": policy.score_parts,
        "max_false_refusal": policy.max_false_refusal,
        "items": {"first": len(first), "second": len(second)},
        "calibrated_on_first": {"threshold": threshold, "by_source": then["by_source"],
                                "first_calibration_half": summary(then["calibration"]),
                                "first_check_half": summary(then["check"]),
                                "second_batch": fresh},
        "calibrated_on_all": {"threshold": now["threshold"], "by_source": now["by_source"],
                              "calibration_half": summary(now["calibration"]), "check_half": summary(now["check"])},
    }
    print(f"index {index.hash[:12]}, {index.documents} documents; first batch {len(first)} items (with the "
          f"dataset's held-out questions), second {len(second)}")
    print(f"threshold calibrated on the first batch: {threshold:.4f} {then['by_source']}")
    print(line("first batch, check half", summary(then["check"])))
    print(line("second batch, never seen", fresh))
    print(f"threshold calibrated on both batches now: {now['threshold']:.4f} {now['by_source']}")
    print(line("both batches, check half", summary(now["check"])))
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
