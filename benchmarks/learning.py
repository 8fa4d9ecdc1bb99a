"""Learning: does an adapter know this repository's commits, asked in words training never
used, and does it keep what the base knew?

A slice of this repository's own history (its newest `--commits` commits on the first
parent, merges left out) is ingested and built into a dataset as `repotune data build`
makes it; training takes that slice's commit questions (forward and reverse, in
`--paraphrases` phrasings each) with the dataset's general replay in proportion, and
checkpoints at every epoch. Each checkpoint is then scored, in-process and greedy, on the
slice's held-out commit questions by their key facts (forward, reverse, and the control:
another commit's key facts), and on the general set's eval split; the base first. The
curve of scores against tokens trained on goes to a PNG beside the figures.

    python -m benchmarks.learning --base builtin:smol --commits 30 --epochs 6

With `--typescript N`, a generated TypeScript repository of N documented functions added
by N/2 pull requests (`benchmarks/ts_repo.py`) is learned instead: its commits, pull
requests and definitions (where each function lives and what it does), scored per kind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("commit", "commit_reverse")
FILE_KINDS = ("file", "definition", "doc", "section")  # of the files the slice touched (--all-kinds)
CODE_KINDS = ("code", "show")  # trained with --all-kinds unless --no-code; asked by no held-out question
BATCH = 8


def _cli(config: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "repotune.cli", *args, "--config", str(config)], check=True,
                   capture_output=True, cwd=ROOT)


def _build(config: Path, state: Path, base: str) -> None:
    """`repotune data build`, with the base's own replay answers kept between benchmark runs
    (they depend on the base alone, and take minutes to make on a CPU)."""
    from repotune import builtin, models
    from tuner.data import own

    resolved = models.resolve(base)
    kept = builtin.cache_root() / "benchmarks" / "answers" / f"{resolved.fingerprint}.json"
    here = own.cache_path(state, resolved)
    if kept.is_file() and not here.is_file():
        here.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, here)
    _cli(config, "data", "build")
    if here.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(here, kept)


def _slice(n: int, at: str = "HEAD") -> list[str]:
    """The newest `n` commits on the first parent at `at`, merges left out, newest first."""
    out = subprocess.run(["git", "-C", str(ROOT), "log", "--first-parent", "--no-merges", f"-n{n}", "--format=%H", at],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def checkout(repo: Path, at: str) -> None:
    """This repository as it stood at `at`, cloned into `repo` (its history up to `at`, its files then)."""
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "--quiet", "-B", "main", at], check=True)


def _touched(shas: set[str]) -> set[str]:
    """The paths the commits changed."""
    paths: set[str] = set()
    for sha in shas:
        out = subprocess.run(["git", "-C", str(ROOT), "diff-tree", "--no-commit-id", "--name-only", "-r", sha],
                             capture_output=True, text=True, check=True).stdout
        paths |= set(out.split())
    return paths


def _pick(rows: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool], replay: float) -> list[dict[str, Any]]:
    facts = [r for r in rows if keep(r)]
    general = [r for r in rows if r["kind"] == "general"][: round(replay * len(facts))]
    return facts + general


def _scores(base: Path, adapter: Path | None, evals: list[dict[str, Any]], general_mc: bool,
            store: tuple[Any, str] | None = None) -> dict[str, Any]:
    """Domain and general scores; with `store` (the database and the repo), also with the top 3
    chunks of full-text search before each question (the retrieval reference)."""
    from eval import domain, general, questions
    from eval.local import LocalModel
    from eval.retrieval import WithContext

    model = LocalModel(base, adapter)
    d = domain.run(model, evals, "bench", "slice")
    g = general.run(model, questions.load(split="eval"), "bench", mc=general_mc)
    out = {"forward": d.score, "commit": d.by_kind.get("commit", {}).get("score", 0.0), "reverse": d.reverse_score,
           "control": d.control, "general": g.score, "general_mc": g.mc_score,
           "by_kind": {k: v["score"] for k, v in d.by_kind.items()},
           "answers": [(r.kind, r.question, r.expected, r.reply, r.correct) for r in d.results],
           "general_answers": {r.id: [r.reply, r.correct] for r in g.results}}
    if store:
        r = domain.run(WithContext(model, *store, k=3), evals, "bench", "slice", context=3)
        out |= {"forward_retrieval": r.score, "reverse_retrieval": r.reverse_score, "control_retrieval": r.control}
    return out


def _base_from(figures: Path, evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The base's scores from an earlier run, refused unless it asked these very questions."""
    kept = json.loads(figures.read_text())["points"][0]
    asked = sorted(a[1] for a in kept["answers"])
    if asked != sorted(r["messages"][0]["content"] for r in evals):
        raise SystemExit(f"{figures} asked the base other held-out questions: score the base again (no --base-from)")
    return dict(kept)


def _base_scores(spec: str, evals: list[dict[str, Any]], store: tuple[Any, str]) -> dict[str, Any]:
    """The base's scores, kept between runs: they depend on the base, the held-out questions and the chunks
    retrieval reads (all hashed into the key), and take most of a run's scoring time on a CPU."""
    import hashlib

    from repotune import builtin, models

    db, repo = store
    chunks = hashlib.sha256()
    for (cid,) in db.execute("select id from chunks where repo = ? and stale = 0 order by id", [repo]).fetchall():
        chunks.update(cid.encode())
    base = models.resolve(spec)
    key = hashlib.sha256(json.dumps([base.fingerprint, evals, chunks.hexdigest()],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    kept = builtin.cache_root() / "benchmarks" / "base-scores" / f"{key}.json"
    if kept.is_file():
        cached: dict[str, Any] = json.loads(kept.read_text())
        if "general_answers" in cached:  # kept before each general answer was: scored again
            return cached
    scores = _scores(base.path, None, evals, general_mc=True, store=store)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(scores))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="builtin:smol")
    ap.add_argument("--commits", type=int, default=30)
    ap.add_argument("--typescript", type=int, default=0, metavar="N",
                    help="learn the definitions of a generated TypeScript repository of N functions instead")
    ap.add_argument("--paraphrases", type=int, default=8)
    ap.add_argument("--paraphrases-for", default="", metavar="KIND=N,…",
                    help="tuner.data.paraphrases_by_kind: a kind's own count (commit=16,file=16)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--embedding-lr", type=float, default=0.0,
                    help="train.embedding_learning_rate: the rate of a LoRA on embed_tokens (with --targets)")
    ap.add_argument("--targets", default="", metavar="M,M,…",
                    help="train.target_modules (default: the config's), e.g. add embed_tokens")
    ap.add_argument("--replay", type=float, default=0.25, help="general replay examples per commit example")
    ap.add_argument("--replay-answers", choices=("base", "gold", "both"), default="base",
                    help="the replayed general questions answered by the base itself or by the set's gold answers")
    ap.add_argument("--all-kinds", action="store_true", help="with --commits: also the files the slice touched, "
                    "their definitions and docs (file, definition, code, show, doc and doc section questions), "
                    "not only commits")
    ap.add_argument("--replay-kl", type=float, default=0.0, help="train.replay_kl: pin the base's distribution on "
                    "the general replay with a KL term of this weight (0: the replay is trained on as examples)")
    ap.add_argument("--kl-rows", type=int, default=0, help="train.replay_kl_rows: replay rows the KL term runs "
                    "at each step (0: the batch's rows)")
    ap.add_argument("--kl-top", type=int, default=0, help="train.replay_kl_top: keep the base's side of the KL as "
                    "its top this many tokens, computed once per replay row (0: the whole distribution, every step)")
    ap.add_argument("--no-code", action="store_true", help="with --all-kinds: leave out the code and show answers "
                    "(a definition's code, a whole file), which no held-out question asks")
    ap.add_argument("--scheduler", default="cosine", help="the learning-rate schedule (train.scheduler)")
    ap.add_argument("--score-epochs", default="", metavar="E,E,…",
                    help="score only these epochs' checkpoints (the last always; default: every epoch)")
    ap.add_argument("--score-only", default="", metavar="FOLDER",
                    help="score the checkpoints of a run stopped partway, or a finished run again (its folder, "
                         "printed at the start), without training; the other options must be the run's own")
    ap.add_argument("--minutes", type=float, default=0, help="train.budget_minutes: stop training after this "
                    "long (the adapter as it stands then is scored last)")
    ap.add_argument("--at", default="HEAD", help="the slice is the newest commits at this revision (with "
                    "--score-only: the revision the run started at, printed then)")
    ap.add_argument("--base-from", default="", metavar="JSON",
                    help="the base's scores from an earlier run's figures, when it asked the same questions with the "
                         "same key facts (a change to the training answers changes the reference answers, not them)")
    ap.add_argument("--data-from", default="", metavar="FOLDER",
                    help="the repository, store and dataset of an earlier run's folder, copied instead of ingested "
                         "and built again (its --at, --paraphrases, --paraphrases-for and --replay-answers must be "
                         "this run's)")
    ap.add_argument("--warmup", type=float, default=0.03,
                    help="train.warmup_ratio: the share of the steps spent warming up")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "learning"))
    a = ap.parse_args()
    if a.no_code and not a.all_kinds:
        ap.error("--no-code leaves out answers that only --all-kinds trains")
    a.at = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.at], capture_output=True, text=True,
                          check=True).stdout.strip()
    scored = {int(e) for e in a.score_epochs.split(",") if e.strip()}

    import tomli_w

    from repotune import datasets, models
    from repotune.config import TrainSection
    from tuner.train.backends import BACKENDS
    from tuner.train.sft import Job

    folder = Path(a.score_only) if a.score_only else Path(tempfile.mkdtemp(prefix="learning-"))
    if a.data_from and not a.score_only:
        for part in ("repository", "typescript", "state"):
            if (Path(a.data_from) / part).is_dir():
                shutil.copytree(Path(a.data_from) / part, folder / part, symlinks=True)
    print(f"run folder: {folder}; the slice at {a.at}", flush=True)
    repo = ROOT
    if a.typescript:
        from benchmarks.ts_repo import generate

        repo = folder / "typescript"
        if not (a.score_only or a.data_from):
            generate(repo, a.typescript)
        kinds: tuple[str, ...] = ("commit", "commit_reverse", "pull_request", "pull_request_reverse", "definition")

        def keep(r: dict[str, Any]) -> bool:
            return r["kind"] in kinds
    else:
        # this repository as it stood at --at, so that a run's questions and chunks are those of the revision
        # it names, whatever is checked out (and the base's scores can be kept between runs)
        repo = folder / "repository"
        if not (a.score_only or a.data_from):
            checkout(repo, a.at)
        kinds = KINDS + (FILE_KINDS if a.all_kinds else ())
        taught = kinds + (CODE_KINDS if a.all_kinds and not a.no_code else ())
        shas = set(_slice(a.commits, a.at))
        touched = _touched(shas) if a.all_kinds else set()

        def keep(r: dict[str, Any]) -> bool:
            if r["kind"] not in taught:
                return False
            if r["sources"].get("commit"):
                return r["sources"]["commit"] in shas
            return str(r["sources"].get("path", "")).split("@")[0] in touched
    try:
        by_kind = {k.strip(): int(n) for k, _, n in (item.partition("=") for item in a.paraphrases_for.split(",")
                                                     if item.strip())}
    except ValueError:
        raise SystemExit(f"--paraphrases-for {a.paraphrases_for!r}: KIND=N pairs, e.g. commit=16,file=16") from None
    config = folder / "config.toml"
    config.write_text(tomli_w.dumps({
        "model": {"base": a.base}, "ingest": {"repo": str(repo), "workers": 1},
        "paths": {"data_dir": str(folder / "state")},
        "tuner": {"lineage": "learn", "data": {"generators": ["templates", "replay"], "paraphrases": a.paraphrases,
                                                "paraphrases_by_kind": by_kind,
                                                "replay_general": 1.0, "eval_max": 100000,
                                                "replay_answers": a.replay_answers}}}))
    if not (a.score_only or a.data_from):
        _cli(config, "ingest")
        _build(config, folder / "state", a.base)
    data = datasets.find(folder / "state", "learn")
    train = _pick(datasets.read(data, "train"), keep, a.replay)
    val = _pick(datasets.read(data, "val"), keep, 0)
    evals = [r for r in datasets.read(data, "eval") if keep(r)]
    kept_base = _base_from(Path(a.base_from), evals) if a.base_from else None  # refused before training, not after
    base = models.resolve(a.base).path
    from tuner.train import pinned

    supervised = pinned.split(train)[0] if a.replay_kl else train  # the replay feeds the KL term only
    steps_per_epoch = -(-len(supervised) // BATCH)
    targets = {"target_modules": a.targets.split(",")} if a.targets else {}
    cfg = TrainSection(**targets, learning_rate=a.lr, embedding_learning_rate=a.embedding_lr,
                       epochs=a.epochs, scheduler=a.scheduler, lora_rank=a.rank,
                       lora_alpha=2 * a.rank, batch_size=BATCH, replay_kl=a.replay_kl,
                       replay_kl_rows=a.kl_rows, replay_kl_top=a.kl_top,
                       max_seq_len=256, checkpoint_steps=steps_per_epoch, keep_checkpoints=0, warmup_ratio=a.warmup,
                       budget_minutes=a.minutes)
    print(f"{len(train)} training examples ({len(evals)} held-out questions), {steps_per_epoch} steps an epoch",
          flush=True)
    record = folder / "trained.json"  # a finished training's figures, for scoring it again (--score-only)
    if a.score_only and record.is_file():
        kept = json.loads(record.read_text())
        trained: Any = SimpleNamespace(adapter=Path(kept["adapter"]), tokens=kept["tokens"],
                                       tokens_per_s=kept["tokens_per_s"])
        minutes = kept["minutes"]
    elif a.score_only:  # stopped partway: the time to the last checkpoint, from when training began
        newest = max((folder / "work" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
        seen = json.loads((newest / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)
        seconds = newest.stat().st_mtime - (folder / "work").stat().st_mtime
        trained = SimpleNamespace(tokens=seen, tokens_per_s=seen / seconds)
        minutes = seconds / 60
    else:
        started = time.monotonic()
        trained = BACKENDS["trl"].train(Job(base=base, train=train, val=val, work=folder / "work", cfg=cfg))
        minutes = (time.monotonic() - started) / 60
        record.write_text(json.dumps({"adapter": str(trained.adapter), "tokens": trained.tokens,
                                      "tokens_per_s": trained.tokens_per_s, "minutes": minutes}))
    from repotune import db as store_db

    store = (store_db.open_db(store_db.db_path(folder / "state")), str(repo))
    points = [{"epoch": 0, "tokens": 0, **(kept_base or _base_scores(a.base, evals, store))}]
    print("base", _shown(points[0]), flush=True)
    checkpoints = sorted((folder / "work" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    stages: list[tuple[float, int, Path]] = []  # (epoch, tokens, adapter)
    for i, ckpt in enumerate(checkpoints, start=1):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        stages.append((i, state.get("num_input_tokens_seen", 0), ckpt))
    adapter = getattr(trained, "adapter", None)
    if adapter and (not stages or trained.tokens > stages[-1][1]):  # stopped by the budget partway into an epoch
        epochs_done = len(stages) + (trained.tokens - (stages[-1][1] if stages else 0)) / max(1, (
            stages[0][1] if stages else trained.tokens))
        stages.append((round(epochs_done, 2), trained.tokens, adapter))
    for n, (epoch, tokens, weights) in enumerate(stages, start=1):
        last = n == len(stages)
        if scored and epoch not in scored and not last:
            continue
        points.append({"epoch": epoch, "tokens": tokens,
                       **_scores(base, weights, evals, general_mc=last, store=store if last else None)})
        points[-1]["general_churn"] = _churn(points[0], points[-1])
        print(f"epoch {epoch}", _shown(points[-1]), flush=True)
    result = {"base": a.base, "source": f"typescript:{a.typescript}" if a.typescript else f"commits:{a.commits}",
              "at": a.at,
              "kinds": list(kinds), "commits": a.commits, "paraphrases": a.paraphrases, "paraphrases_by_kind": by_kind,
              "epochs": a.epochs, "lr": a.lr, "rank": a.rank, "targets": list(cfg.target_modules),
              "embedding_lr": a.embedding_lr,
              "replay": a.replay, "replay_answers": a.replay_answers,
              "replay_kl": a.replay_kl, "kl_rows": a.kl_rows or BATCH, "kl_top": a.kl_top,
              "all_kinds": a.all_kinds,
              "code_answers": a.all_kinds and not a.no_code,
              "scheduler": a.scheduler, "warmup": a.warmup, "train_examples": len(train), "held_out": len(evals),
              "epochs_trained": stages[-1][0] if stages else 0, "minutes_budget": a.minutes,
              "train_tokens": trained.tokens, "train_minutes": round(minutes, 1),
              "tokens_per_s": round(trained.tokens_per_s, 1), "points": points}
    out = Path(f"{a.out}-{a.base.replace(':', '-')}" + ("-typescript" if a.typescript else "")
               + ("-all-kinds" if a.all_kinds else "") + (f"-kl{a.replay_kl:g}" if a.replay_kl else ""))
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, Path(f"{out}.png"))
    print(json.dumps({k: v for k, v in result.items() if k != "points"}, indent=2))


def _shown(point: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in point.items() if k not in ("answers", "general_answers")}


def _churn(base: dict[str, Any], after: dict[str, Any]) -> dict[str, int] | None:
    """How many general answers the adapter changed, against the base: turned wrong, turned right, and
    worded differently at all. The net score hides how much moved: +3 is 20 lost and 23 gained as well as 3
    gained; the churn is what a recipe that keeps the base's voice keeps low (None: the base's answers were
    not kept)."""
    before, now = base.get("general_answers"), after.get("general_answers")
    if not before or not now:
        return None
    both = before.keys() & now.keys()
    return {"right_to_wrong": sum(before[i][1] and not now[i][1] for i in both),
            "wrong_to_right": sum(now[i][1] and not before[i][1] for i in both),
            "replies_changed": sum(before[i][0] != now[i][0] for i in both)}


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    x = [p["tokens"] / 1000 for p in pts]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    what = result["kinds"][0] if len(result["kinds"]) <= 2 else "domain"
    other = "item" if what == "domain" else what
    lines = [("forward", f"held-out {what} questions"), ("reverse", "reverse (subject → sha or number)"),
             ("general", "general knowledge (eval split)"), ("control", f"control: another {other}'s facts")]
    for key, label in lines:
        if any(p.get(key) is not None for p in pts):
            ax.plot(x, [p.get(key) or 0 for p in pts], marker="o", label=label)
    kinds = sorted({k for p in pts for k in p.get("by_kind", {})})
    if len(kinds) > 2:  # several kinds: each on its own, thin
        for kind in kinds:
            ax.plot(x, [p.get("by_kind", {}).get(kind, 0.0) for p in pts], linestyle="--", linewidth=1,
                    marker=".", label=f"  {kind}")
    mc = [p for p in pts if p.get("general_mc") is not None]
    if mc:
        ax.scatter([p["tokens"] / 1000 for p in mc], [p["general_mc"] for p in mc], marker="s", s=40,
                   color="tab:green", zorder=3, label="general knowledge, multiple choice")
    starred = [p for p in (pts[0], pts[-1]) if p.get("forward_retrieval") is not None]
    for p in starred:
        ax.scatter([p["tokens"] / 1000], [p["forward_retrieval"]], marker="*", s=140, color="black", zorder=3)
    if starred:
        ax.scatter([], [], marker="*", s=140, color="black", label=f"{what} questions with 3 retrieved chunks")
    ax.set_xlabel("tokens trained on (thousands)")
    ax.set_ylabel("share right")
    ax.set_ylim(-0.02, 1.02)
    answers = {"base": "the base's own", "gold": "gold", "both": "the base's own and gold"}
    replay = f"general replay: {answers.get(result.get('replay_answers', 'gold'), 'gold')} answers"
    if result.get("replay_kl"):
        top = f", the base's top {result['kl_top']} tokens kept" if result.get("kl_top") else ""
        replay += f", pinned by KL (weight {result['replay_kl']:g}, {result.get('kl_rows', 8)} rows a step{top})"
    source = result["source"] + (", all kinds" if result.get("all_kinds") else "") \
        + (" but code" if result.get("all_kinds") and not result.get("code_answers", True) else "")
    own = ", ".join(f"{k} {n}" for k, n in sorted((result.get("paraphrases_by_kind") or {}).items()))
    phrasings = f"{result['paraphrases']} phrasings" + (f" ({own})" if own else "")
    embedding = f", embed_tokens at lr {result.get('embedding_lr') or result['lr']}" \
        if "embed_tokens" in result.get("targets", ()) else ""
    fig.suptitle(f"{result['base']}: {source}, {phrasings}, lr {result['lr']} "
                 f"{result.get('scheduler', '')}, rank {result['rank']}{embedding}\n{replay}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
