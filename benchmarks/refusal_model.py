"""The model's own refusals: the policy's sets asked of the base and of an adapter trained with refusals.

This repository is ingested and built into a dataset with the refusal examples
(`policy.train_refusals`: off-domain questions, some inside injection wrappers, answered
with exactly the refusal text, and as many in-domain questions with alarming words
answered normally); `repotune train` makes a version under a budget (the newest facts
first, the refusals cut in the same proportion). Then `repotune eval refusal --calibrate`
runs in `policy.mode = "both"`, twice, as a user runs it: with no version promoted (the
base is asked), and with the trained version promoted. Each run reports the gate alone
(calibrated on half of each set), the model alone (a reply that begins with the refusal
text) and both together, on every item of the shipped sets.

    python -m benchmarks.refusal_model [--base builtin:smol] [--budget-minutes 20] [--epochs 3] [--eval-max 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-admin-key"


def _cli(config: Path, *args: str) -> str:
    env = {**os.environ, "REPOTUNE_ADMIN_KEY": KEY, "REPOTUNE_API_KEYS": KEY}
    env.pop("REPOTUNE_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "repotune.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"repotune {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def _rates(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    if figures is None:
        return None
    keep = ("false_refusal", "offdomain", "attacks", "attack_success")
    out: dict[str, Any] = {k: [figures[k]["hits"], figures[k]["total"]] for k in keep}
    out["by_group"] = {k: [v["hits"], v["total"]] for k, v in figures["by_group"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="builtin:smol")
    ap.add_argument("--budget-minutes", type=float, default=20.0)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--refusal-ratio", type=float, default=0.1, help="tuner.data.refusal_ratio")
    ap.add_argument("--eval-max", type=int, default=100, help="tuner.data.eval_max: the dataset's held-out questions "
                    "that join the in-domain set (each is asked of the model, at about 15 tokens/s on a CPU)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "refusal-model"))
    a = ap.parse_args()

    import tomli_w

    folder = Path(tempfile.mkdtemp(prefix="refusal-model-"))
    config = folder / "config.toml"
    config.write_text(tomli_w.dumps({
        "model": {"base": a.base}, "ingest": {"repo": str(ROOT), "workers": 1},
        "paths": {"data_dir": str(folder / "state")},
        "policy": {"mode": "both", "train_refusals": True},
        "train": {"budget_minutes": a.budget_minutes, "epochs": a.epochs, "learning_rate": a.lr,
                  "scheduler": "constant_with_warmup", "max_seq_len": 256},
        "tuner": {"lineage": "repotune", "data": {"generators": ["templates", "replay"],
                                                  "refusal_ratio": a.refusal_ratio, "eval_max": a.eval_max}}}))
    times: dict[str, float] = {}

    def step(name: str, *args: str) -> str:
        started = time.monotonic()
        out = _cli(config, *args)
        times[name] = round(time.monotonic() - started, 1)
        print(f"{name}: {times[name]} s", flush=True)
        return out

    step("ingest", "ingest")
    step("data build", "data", "build")
    before = json.loads(step("eval refusal, base", "eval", "refusal", "--calibrate", "--json"))
    trained = json.loads(step("train", "train", "--json"))
    step("promote", "adapters", "promote", str(trained["version"]), "--reason", "benchmark")
    after = json.loads(step("eval refusal, trained", "eval", "refusal", "--json"))
    training = trained["training"]
    result = {"base": a.base, "budget_minutes": a.budget_minutes, "epochs": a.epochs, "lr": a.lr,
              "refusal_ratio": a.refusal_ratio, "eval_max": a.eval_max, "times_s": times,
              "threshold": after["threshold"],
              "training": {k: training.get(k) for k in ("examples", "tokens", "steps", "seconds", "covers")},
              "notes": trained.get("notes"),
              "base_model": {"gate": _rates(before["figures"]), "model": _rates(before.get("model_figures")),
                             "both": _rates(before.get("both_figures"))},
              "trained": {"model": after.get("model"), "gate": _rates(after["figures"]),
                          "model_alone": _rates(after.get("model_figures")), "both": _rates(after.get("both_figures"))}}
    out = Path(f"{a.out}-{a.base.replace(':', '-')}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("base_model", "trained")}, indent=2))
    for who in ("base_model", "trained"):
        for what, r in result[who].items():
            if isinstance(r, dict):
                print(who, what, {k: r[k] for k in ("false_refusal", "offdomain", "attacks")})


if __name__ == "__main__":
    main()
