"""A cycle with nothing new, side by side with the same cycle refreshing its domain index the old way.

`repotune tune --now` on a store whose last cycle was made from the same dataset and training
settings ingests, builds, finds both unchanged and stops. Ingest and the data build each refresh
the domain index; with nothing new, the stamp beside the index (`policy/index.json`) lets them
skip reading it (and importing scikit-learn) and the training set. This times that whole process
(start, ingest, data build, the stop), alternating the command as it is (A) with the same command
after the stamp is removed (B: the index is read and compared, as before the stamp existed, and
stamped again), and prints each one's median, the ratio A/B pair by pair, and each one's steps as
the cycle recorded them.

    python -m benchmarks.cycle --base builtin:tiny --commits 500 --prs 50 --budget-minutes 4 --eval-max 100
    python -m benchmarks.nothing_new --config /tmp/cycle-XXXX/config.toml

The store is the one `benchmarks.cycle` leaves (its folder's `config.toml`): a first cycle has run,
and a `tune --now` beforehand has made sure this code's dataset is the last cycle's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from repotune import relevance

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-admin-key"


def _once(config: Path, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "repotune.cli", "tune", "--now", "--json", "--config", str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    result = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    if result.get("status") != "nothing_new":
        raise SystemExit(f"tune --now found something new or failed ({result.get('status')}): point --config at a "
                         f"store whose last cycle had this code's dataset and settings\n{done.stderr[-2000:]}")
    return wall, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, type=Path, help="a finished benchmarks.cycle run's config.toml")
    ap.add_argument("--runs", type=int, default=5, help="counted pairs, after one warm-up pair")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "nothing-new.json"))
    a = ap.parse_args()

    env = {**os.environ, "REPOTUNE_API_KEYS": KEY, "REPOTUNE_ADMIN_KEY": KEY}
    env.pop("REPOTUNE_CONFIG", None)
    data_dir = Path(tomllib.loads(a.config.read_text())["paths"]["data_dir"])
    stamp = relevance.stamp_path(data_dir)
    walls: dict[str, list[float]] = {"A": [], "B": []}
    steps: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for i in range(a.runs + 1):  # the first pair warms the page cache and is not counted
        timed = {}
        for who in ("A", "B"):
            if who == "B":
                stamp.unlink(missing_ok=True)
            timed[who] = _once(a.config, env)
        if not stamp.is_file():
            raise SystemExit(f"{stamp}: no stamp after a refresh: the policy is off, or the index was not saved")
        if i:
            for who, (wall, result) in timed.items():
                walls[who].append(wall)
                steps[who].append({s["name"]: s["seconds"] for s in result["steps"]})
        print(f"pair {i}{' (warm-up)' if not i else ''}: A {timed['A'][0]:.2f} s, B {timed['B'][0]:.2f} s", flush=True)
    ratios = [x / y for x, y in zip(walls["A"], walls["B"], strict=True)]
    out = {"config": str(a.config), "at": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                                       capture_output=True, text=True).stdout.strip(),
           "runs": a.runs, "wall_s": {k: [round(x, 2) for x in v] for k, v in walls.items()},
           "median_s": {k: round(statistics.median(v), 2) for k, v in walls.items()},
           "ratio_a_b": {"min": round(min(ratios), 3), "median": round(statistics.median(ratios), 3),
                         "max": round(max(ratios), 3)},
           "steps_median_s": {who: {k: round(statistics.median(s[k] for s in runs), 2) for k in runs[0]}
                              for who, runs in steps.items()}}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
