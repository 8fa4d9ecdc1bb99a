"""How long `make test` spends before pytest starts, on an already set-up checkout.

That time is the install check (the stamp), ruff over the tree and mypy over the kernel:
`make lint`. The reference beside it is the bare Python start-up that any command pays,
so the ratio shows what the set-up adds on this machine at this moment.

    python benchmarks/setup_overhead.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    subprocess.run(["make", "-s", "install"], cwd=ROOT, check=True)  # set up first, untimed
    lint, bare = [], []
    for _ in range(args.repeat):
        lint.append(timed(["make", "-s", "lint"]))
        bare.append(timed([sys.executable, "-c", "pass"]))
    lint_s, bare_s = statistics.median(lint), statistics.median(bare)
    print(f"make lint (before pytest): median {lint_s:.2f} s over {args.repeat} runs "
          f"(min {min(lint):.2f}, max {max(lint):.2f})")
    print(f"python start-up (reference): median {bare_s:.3f} s; ratio {lint_s / bare_s:.0f}x")


if __name__ == "__main__":
    main()
