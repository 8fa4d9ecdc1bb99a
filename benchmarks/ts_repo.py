"""A generated TypeScript repository: modules of documented functions, added by pull requests.

Each function does one made-up, specific thing in a made-up domain ("Computes the late fee
of a parcel in cents."), in a file of its domain (`src/parcels/fees.ts`), with a JSDoc
comment saying so: what the definition questions ask (where it lives, what it does) and
no pre-trained model can know. Every `per_commit` functions are one squash-merged pull
request ("Compute the late fee for parcels in cents (#101)"), which ingest recovers from
the history: commit and pull-request questions too. Deterministic for a seed.

    python -m benchmarks.ts_repo /tmp/ts-repo --functions 40
"""

from __future__ import annotations

import argparse
import random
import subprocess
from pathlib import Path

DOMAINS = ("parcels", "invoices", "tenants", "vouchers", "shipments", "badges", "rentals", "tickets", "warehouses",
           "subscriptions", "coupons", "drivers")
TOPICS = ("fees", "limits", "routing", "history", "reminders", "exports", "scoring", "audits")
VERBS = (("compute", "Computes"), ("estimate", "Estimates"), ("validate", "Validates"), ("archive", "Archives"),
         ("merge", "Merges"), ("schedule", "Schedules"), ("round", "Rounds"), ("rank", "Ranks"),
         ("flag", "Flags"), ("summarize", "Summarizes"))
THINGS = (("lateFee", "the late fee"), ("weeklyQuota", "the weekly quota"), ("refundWindow", "the refund window"),
          ("carbonCost", "the carbon cost"), ("loyaltyTier", "the loyalty tier"), ("taxBand", "the tax band"),
          ("pickupSlot", "the pickup slot"), ("riskScore", "the risk score"), ("graceDays", "the grace days"),
          ("batchSize", "the batch size"), ("discountCap", "the discount cap"), ("retryDelay", "the retry delay"))
UNITS = ("in cents", "in minutes", "per region", "per customer", "for the next quarter", "before midnight UTC",
         "across all depots", "from the audit log")


def generate(path: Path, functions: int = 40, per_commit: int = 2, seed: int = 0) -> list[dict[str, str]]:
    """Write and commit the repository at `path`; the functions made, each {name, path, doc}."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "main")
    made: list[dict[str, str]] = []
    names: set[str] = set()
    files: dict[str, list[str]] = {}
    while len(made) < functions:
        (verb, verb_doc), (thing, thing_doc) = rng.choice(VERBS), rng.choice(THINGS)
        domain, topic, unit = rng.choice(DOMAINS), rng.choice(TOPICS), rng.choice(UNITS)
        singular = domain.removesuffix("s")
        name = f"{verb}{thing[0].upper()}{thing[1:]}For{singular.capitalize()}"
        if name in names:
            continue
        names.add(name)
        file = f"src/{domain}/{topic}.ts"
        doc = f"{verb_doc} {thing_doc} of {'an' if singular[0] in 'aeiou' else 'a'} {singular} {unit}."
        files.setdefault(file, []).append(
            f"/**\n * {doc}\n * @param {singular} the {singular} to look at\n */\n"
            f"export function {name}({singular}: {{ id: string; total: number }}): number {{\n"
            f"  return Math.round({singular}.total * {rng.randint(2, 97)}) / 100;\n}}\n")
        made.append({"name": name, "path": file, "doc": doc,
                     "title": f"{verb.capitalize()} {thing_doc} for {domain} {unit}"})
        if len(made) % per_commit == 0 or len(made) == functions:
            for f, blocks in files.items():
                (path / f).parent.mkdir(parents=True, exist_ok=True)
                (path / f).write_text("\n".join(blocks))
            _git(path, "add", "-A")
            number = len(made) // per_commit + 100
            _git(path, "commit", "-q", "-m", f"{made[-1]['title']} (#{number})")  # squash-merged pull request
    return made


def _git(path: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_NAME": "Grace Hopper", "GIT_AUTHOR_EMAIL": "grace@example.com",
           "GIT_COMMITTER_NAME": "Grace Hopper", "GIT_COMMITTER_EMAIL": "grace@example.com",
           "GIT_AUTHOR_DATE": "2026-06-01T12:00:00Z", "GIT_COMMITTER_DATE": "2026-06-01T12:00:00Z",
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "-C", str(path), "-c", "commit.gpgsign=false", *args], check=True, env=env,
                   capture_output=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("path", type=Path)
    ap.add_argument("--functions", type=int, default=40)
    a = ap.parse_args()
    for f in generate(a.path, a.functions):
        print(f"{f['path']}: {f['name']} — {f['doc']}")
