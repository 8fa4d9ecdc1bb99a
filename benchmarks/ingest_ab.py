"""Two checkouts of repotune side by side on the same history: full ingests and reruns.

A change to ingest that saves a few percent is lost in this machine's drift (tens of
percent over a minute) when the two versions are timed minutes apart. Here they take
turns: each pair is one full ingest through the CLI by each checkout, in alternating
order, into an empty store, and the figure is the median of the pairs' differences
(and how many pairs the second checkout won). Then the same for reruns with nothing new.
Each checkout runs its own code (`python -m repotune.cli` from its folder) in this
environment; compile its byte-code first (`python -m compileall -q repotune ingest`).

    python -m benchmarks.ingest_ab OLD_CHECKOUT NEW_CHECKOUT [--pairs 20] [--keep DIR]

The history is the one `benchmarks.ingest_history` generates (kept in `--keep`, and
reused from there when it is already made).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.ingest_history import generate, timed


def _pairs(a: Path, b: Path, pairs: int, run) -> dict[str, float | int | list[float]]:
    one, two = [], []
    for i in range(pairs):
        if i % 2 == 0:
            one.append(run(a))
            two.append(run(b))
        else:
            two.append(run(b))
            one.append(run(a))
    differences = [y - x for x, y in zip(one, two, strict=True)]
    return {"old_median_s": statistics.median(one), "new_median_s": statistics.median(two),
            "difference_median_s": statistics.median(differences), "new_faster_in": sum(d < 0 for d in differences),
            "pairs": pairs, "old_s": one, "new_s": two}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--prs", type=int, default=1_000)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (the history is reused)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="repotune-ingest-ab-"))
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "history"
    if not (repo / ".git").is_dir():
        repo, _ = generate(root, args.commits, args.prs, 50)
    config = root / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{root / "state"}"\n[ingest]\nrepo = "{repo}"\n')
    cli = [sys.executable, "-m", "repotune.cli", "ingest", "--config", str(config), "--json"]

    def full(checkout: Path) -> float:
        shutil.rmtree(root / "state", ignore_errors=True)
        return timed([*cli, "--full"], cwd=checkout)

    def rerun(checkout: Path) -> float:
        return timed(cli, cwd=checkout)

    result = {"full": _pairs(args.old, args.new, args.pairs, full)}
    timed(cli, cwd=args.new)  # a store with everything in it, for the reruns
    result["rerun"] = _pairs(args.old, args.new, args.pairs, rerun)
    for name, r in result.items():
        print(f"{name}: old {r['old_median_s']:.3f} s, new {r['new_median_s']:.3f} s (medians); "
              f"new - old {r['difference_median_s']:+.3f} s (median of {r['pairs']} pairs), "
              f"new faster in {r['new_faster_in']}", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
