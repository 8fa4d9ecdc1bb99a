"""Full or incremental: which strategy should the nightly cycle train with?

A slice of this repository's history (its newest `--commits` commits on the first parent,
the repository as it stood at `--at`) is split at its midpoint. An adapter is trained on
the older half (as the promoted adapter of a first cycle), then the newer half arrives
and is trained both ways, with the examples each strategy takes (`tuner.train.run`): `full` from the base on every
example of both halves; `incremental` from the first adapter's weights on the new
examples, `replay_earlier` of the old ones (0.5 per new example, as `repotune data build`
marks them) and the general replay. Each adapter is scored on the held-out questions of
the old and of the new commits (forward and reverse), and on the general set's eval
split; the time of each run is measured in the same process.

    python -m benchmarks.strategy --base builtin:smol --commits 20 --epochs 6

Each training and each scoring is written to the run folder as it ends: `--folder` goes on
with a folder an interrupted invocation printed (what is there is not trained or scored again).

With `--replay-kl W` the general replay is the KL pin of `train.replay_kl` (and `--kl-top K`,
`train.replay_kl_top`), not examples: the learning runs' recipe (`benchmarks.learning`).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.learning import KINDS, ROOT, _build, _cli, _scores, _slice, checkout


def _facts(rows: list[dict[str, Any]], shas: set[str]) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] in KINDS and r["sources"].get("commit") in shas]


def _split(answers: list[Any], evals: list[dict[str, Any]]) -> dict[str, Any]:
    """Forward (commit) and reverse shares right among the answers to these held-out questions."""
    asked = {r["messages"][0]["content"] for r in evals}
    mine = [a for a in answers if a[1] in asked]
    forward = [a[4] for a in mine if a[0] == "commit"]
    reverse = [a[4] for a in mine if a[0] == "commit_reverse"]
    return {"commit": sum(forward) / len(forward) if forward else 0.0, "commit_n": [sum(forward), len(forward)],
            "reverse": sum(reverse) / len(reverse) if reverse else None, "reverse_n": [sum(reverse), len(reverse)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="builtin:smol")
    ap.add_argument("--commits", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scheduler", default="constant_with_warmup")
    ap.add_argument("--replay", type=float, default=0.25, help="general replay examples per commit example")
    ap.add_argument("--replay-earlier", type=float, default=0.5, help="old examples per new one (incremental)")
    ap.add_argument("--replay-answers", choices=("base", "gold", "both"), default="base",
                    help="the replayed general questions answered by the base itself or by the set's gold answers")
    ap.add_argument("--replay-kl", type=float, default=0.0, help="train.replay_kl (0: the replay is trained on)")
    ap.add_argument("--kl-top", type=int, default=0, help="train.replay_kl_top")
    ap.add_argument("--at", default="HEAD", help="the slice is the newest commits at this revision")
    ap.add_argument("--folder", default="", help="go on with this run folder (printed by an earlier invocation)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "strategy"))
    a = ap.parse_args()

    import tomli_w

    from repotune import datasets, models
    from repotune.config import TrainSection
    from tuner.train.backends import BACKENDS
    from tuner.train.sft import Job

    order = _slice(a.commits, a.at)  # newest first
    folder = Path(a.folder) if a.folder else Path(tempfile.mkdtemp(prefix="strategy-"))
    print(f"run folder: {folder}", flush=True)
    fresh = not (folder / "state").is_dir()
    if fresh:
        checkout(folder / "repository", a.at)
    config = folder / "config.toml"
    config.write_text(tomli_w.dumps({
        "model": {"base": a.base}, "ingest": {"repo": str(folder / "repository"), "workers": 1},
        "paths": {"data_dir": str(folder / "state")},
        "tuner": {"lineage": "learn", "data": {"generators": ["templates", "replay"], "paraphrases": 8,
                                                "replay_general": 1.0, "eval_max": 100000,
                                                "replay_answers": a.replay_answers}}}))
    if fresh:
        _cli(config, "ingest")
        _build(config, folder / "state", a.base)
    data = datasets.find(folder / "state", "learn")
    train_rows, evals = datasets.read(data, "train"), datasets.read(data, "eval")
    general = [r for r in train_rows if r["kind"] == "general"]
    new, old = set(order[: a.commits // 2]), set(order[a.commits // 2:])
    old_rows, new_rows = _facts(train_rows, old), _facts(train_rows, new)
    rng = random.Random(0)
    replayed = rng.sample(old_rows, min(len(old_rows), round(a.replay_earlier * len(new_rows))))

    def gen(n: int) -> list[dict[str, Any]]:
        return general[: round(a.replay * n)]

    runs = {
        "first half": (old_rows + gen(len(old_rows)), None),
        "full": (old_rows + new_rows + gen(len(old_rows) + len(new_rows)), None),
        "incremental": (new_rows + replayed + gen(len(new_rows)), "first half"),
    }
    base = models.resolve(a.base).path
    cfg = TrainSection(learning_rate=a.lr, epochs=a.epochs, scheduler=a.scheduler, lora_rank=16, lora_alpha=32,
                       batch_size=8, max_seq_len=256, keep_checkpoints=1, warmup_ratio=0.03,
                       replay_kl=a.replay_kl, replay_kl_top=a.kl_top)
    adapters: dict[str, Path] = {}
    results: dict[str, Any] = {}
    old_evals = [r for r in evals if r["kind"] in KINDS and r["sources"].get("commit") in old]
    new_evals = [r for r in evals if r["kind"] in KINDS and r["sources"].get("commit") in new]
    for name, (rows, start) in runs.items():
        kept = folder / name / "figures.json"
        if kept.is_file():
            results[name] = json.loads(kept.read_text())
            adapters[name] = folder / name / "adapter"
            print(name, "(kept)", results[name], flush=True)
            continue
        print(f"{name}: {len(rows)} examples", flush=True)
        record = folder / name / "trained.json"  # a finished training, not yet scored
        if not record.is_file():
            began = time.monotonic()
            trained = BACKENDS["trl"].train(Job(base=base, train=rows, val=[], work=folder / name, cfg=cfg,
                                                init_adapter=adapters.get(start) if start else None))
            record.write_text(json.dumps({"adapter": str(trained.adapter), "tokens": trained.tokens,
                                          "minutes": (time.monotonic() - began) / 60}))
        done = json.loads(record.read_text())
        adapters[name], tokens, minutes = Path(done["adapter"]), done["tokens"], done["minutes"]
        # One scoring of each adapter: the old and new questions together, told apart after.
        s = _scores(base, adapters[name], old_evals + new_evals, general_mc=False)
        results[name] = {"examples": len(rows), "tokens": tokens, "minutes": round(minutes, 1),
                         "old": _split(s["answers"], old_evals), "new": _split(s["answers"], new_evals),
                         "control": s["control"], "general": s["general"], "answers": s["answers"]}
        kept.write_text(json.dumps(results[name]))
        print(name, results[name], flush=True)
    base_kept = folder / "base.json"
    if not base_kept.is_file():
        base_kept.write_text(json.dumps(_scores(base, None, old_evals + new_evals, general_mc=False)))
    base_s = json.loads(base_kept.read_text())
    out = {"base": a.base, "at": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.at],
                                                 capture_output=True, text=True, check=True).stdout.strip(),
           "commits": a.commits, "epochs": a.epochs, "lr": a.lr, "scheduler": a.scheduler,
           "replay": a.replay, "replay_earlier": a.replay_earlier, "replay_answers": a.replay_answers,
           "replay_kl": a.replay_kl, "kl_top": a.kl_top, "held_out": {"old": len(old_evals),
                                                                               "new": len(new_evals)},
           "base_scores": {"commit": base_s["commit"], "reverse": base_s["reverse"], "general": base_s["general"]},
           "runs": results}
    path = Path(f"{a.out}-{a.base.replace(':', '-')}")
    path.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    _plot(out, path.with_suffix(".png"))
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))


def _plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["runs"])
    bars: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
            ("old commits", lambda r: r["old"]["commit"]), ("new commits", lambda r: r["new"]["commit"]),
            ("old reverse", lambda r: r["old"]["reverse"] or 0), ("new reverse", lambda r: r["new"]["reverse"] or 0),
            ("general", lambda r: r["general"])]
    fig, ax = plt.subplots(figsize=(8, 5))
    width = 0.8 / len(bars)
    for i, (label, get) in enumerate(bars):
        ax.bar([x + i * width for x in range(len(names))], [get(out["runs"][n]) for n in names], width, label=label)
    ax.axhline(out["base_scores"]["general"], color="grey", linestyle="--", linewidth=1, label="base, general")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))],
                  [f"{n}\n{out['runs'][n]['minutes']} min" for n in names])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share right (held-out phrasings)")
    held = out["held_out"]
    ax.set_title(f"{out['base']}: {out['commits']} commits split at the midpoint, {out['epochs']} epochs each\n"
                 f"held-out questions: {held['old']} old, {held['new']} new (forward and reverse)", fontsize=11)
    ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
