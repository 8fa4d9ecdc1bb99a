"""The gate on a real project: does it promote a sensible adapter, reject a destructive one, and at what cost?

A generated TypeScript repository (`benchmarks/ts_repo.py`: documented functions no model
can know, added by squash-merged pull requests) goes through the product's own path —
`repotune ingest`, `data build`, `train` — and the adapter `train` registers (the
*sensible* one) is judged by `repotune eval run` against a running `repotune serve`.
Then the *destructive* adapter (a high rate on shuffled tokens, fixed in code:
`tests/lora.py`) is registered and judged twice: once with the stored answers cleared
(every model asked: base twice, the promoted version, the candidate), once with them
kept (only the candidate asked). A sensible adapter the gate rejected is promoted by
hand first, so that those runs have a promoted version to compare with. Each run's
time, every model's scores and the decision go to a JSON file beside the script's name.

    python -m benchmarks.gate --base builtin:tiny
    python -m benchmarks.gate --base builtin:smol --functions 8 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "gate-bench-admin"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="builtin:tiny")
    ap.add_argument("--functions", type=int, default=8)
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--paraphrases", type=int, default=8)
    ap.add_argument("--replay", type=float, default=0.25, help="general replay examples per Q&A example "
                    "(tuner.data.replay_general), answered by the base itself")
    ap.add_argument("--replay-kl", type=float, default=0.0, help="train.replay_kl: the weight of the KL term that "
                    "pins the base's distribution on the replay (0: the replay is trained on as examples)")
    ap.add_argument("--replay-answers", choices=("base", "gold", "both"), default="base", help="the general replay's "
                    "answers: the base's own or the set's gold ones (tuner.data.replay_answers)")
    ap.add_argument("--rank", type=int, default=16, help="train.lora_rank (alpha is twice the rank)")
    ap.add_argument("--sensible-only", action="store_true", help="judge the trained adapter only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gate"))
    ap.add_argument("--resume", help="the folder of a run whose judge did not finish (printed after training): "
                    "judge its trained version again; the other options must be the run's own")
    a = ap.parse_args()

    import tomli_w

    from benchmarks.learning import _build
    from benchmarks.ts_repo import generate
    from eval import judge
    from repotune import config as cfg
    from repotune import db as store
    from repotune import models, promotion, registry
    from serve.engine import free_port, wait_healthy
    from tests.lora import destructive_lora
    from tuner.train.run import train

    env = {**os.environ, "REPOTUNE_API_KEYS": ADMIN_KEY, "REPOTUNE_ADMIN_KEY": ADMIN_KEY}
    env.pop("REPOTUNE_CONFIG", None)
    if a.resume:  # a run whose judge did not finish: its trained v1 is judged again
        folder = Path(a.resume)
        config = folder / "config.toml"
        settings = cfg.load(config, env=env)
        port = settings.config.serve.port
        adapter = registry.get(store.open_db(store.db_path(settings.data_dir)), "bench", 1)
        assert adapter.manifest.training is not None
        record, train_minutes = adapter.manifest.training, adapter.manifest.training.seconds / 60
    else:
        folder = Path(tempfile.mkdtemp(prefix="gate-"))
        repo = folder / "typescript"
        generate(repo, a.functions)
        port = free_port()
        config = folder / "config.toml"
        config.write_text(tomli_w.dumps({
            "model": {"base": a.base}, "ingest": {"repo": str(repo), "workers": 1},
            "paths": {"data_dir": str(folder / "state")},
            "serve": {"port": port, "max_model_len": 2048},
            "tuner": {"lineage": "bench", "data": {"generators": ["templates", "replay"],
                                                    "paraphrases": a.paraphrases, "replay_general": a.replay,
                                                    "replay_answers": a.replay_answers}},
            "train": {"learning_rate": a.lr, "epochs": a.epochs, "scheduler": "constant_with_warmup",
                      "replay_kl": a.replay_kl, "lora_rank": a.rank, "lora_alpha": 2 * a.rank, "max_seq_len": 256,
                      "batch_size": 8, "checkpoint_steps": 100000}}))
        settings = cfg.load(config, env=env)
        subprocess.run([sys.executable, "-m", "repotune.cli", "ingest", "--config", str(config)], check=True,
                       capture_output=True, env=env)
        _build(config, folder / "state", a.base)
        started = time.monotonic()
        sensible = train(settings)
        adapter, record = sensible.adapter, sensible.record
        train_minutes = (time.monotonic() - started) / 60
    print(f"trained v{adapter.version} in {folder}: {record.tokens} tokens in {train_minutes:.1f} min",
          flush=True)

    log = (folder / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "repotune.cli", "serve", "--config", str(config)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        wait_healthy(f"http://127.0.0.1:{port}", proc, 600)
        serve_start = time.monotonic() - t0
        runs = [_judge(judge, settings, "sensible")]
        base = models.resolve(a.base)
        db = store.open_db(store.db_path(settings.data_dir))
        if not a.sensible_only:
            if runs[0]["status"] != "promoted":  # so that the next runs have a promoted version to compare with
                promotion.promote(settings, "bench", runs[0]["version"], "benchmark",
                                  "promoted by hand: the destructive runs compare with a promoted version")
            bad = destructive_lora(base.path, folder / "destructive")
            models.record_base(bad, base)
        for cache in () if a.sensible_only else ("cleared", "kept"):
            if cache == "cleared":
                db.execute("delete from eval_cache")
                db.conn.commit()
            registry.register(db, settings.data_dir, "bench", bad, base, settings.config.serve.max_lora_rank,
                              "benchmark", "destructive")
            runs.append(_judge(judge, settings, f"destructive, stored answers {cache}"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    result = {"base": a.base, "functions": a.functions, "epochs": a.epochs, "lr": a.lr, "paraphrases": a.paraphrases,
              "replay": a.replay, "replay_answers": a.replay_answers, "replay_kl": a.replay_kl, "rank": a.rank,
              "dataset": adapter.manifest.dataset, "train_examples": record.examples,
              "train_tokens": record.tokens, "train_minutes": round(train_minutes, 1),
              "serve_start_s": round(serve_start, 1), "runs": runs}
    out = Path(f"{a.out}-{a.base.replace(':', '-')}" + (f"-replay{a.replay:g}" if a.sensible_only else "")
               + (f"-kl{a.replay_kl:g}" if a.replay_kl else "")
               + (f"-{a.replay_answers}" if a.replay_answers != "base" else "")
               + (f"-r{a.rank}" if a.rank != 16 else "") + ".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['what']}: {r['status']} in {r['seconds']} s; asked {r['asked']}")
        for label, m in r["models"].items():
            mc = "—" if m["general_mc"] is None else f"{m['general_mc']:.3f}"  # base#2: not asked again
            print(f"  {label:10} general {m['general']:.3f}  mc {mc:5}  domain {m['domain']:.3f}  "
                  f"{m['by_kind']}")
        for reason in r["reasons"]:
            print(f"  ✗ {reason}")
    print(f"noise {[r['noise'] for r in runs]}; written to {out}")


def _judge(judge: Any, settings: Any, what: str) -> dict[str, Any]:
    started = time.monotonic()
    run = judge.judge(settings)
    seconds = round(time.monotonic() - started, 1)
    return {"what": what, "version": run.candidate, "status": run.status, "seconds": seconds, "noise": run.noise,
            "asked": [k for k, m in run.models.items() if not m.cached],
            "models": {k: {"general": m.general, "general_mc": m.general_mc, "domain": m.domain,
                           "domain_reverse": m.domain_reverse, "by_kind": m.by_kind} for k, m in run.models.items()},
            "reasons": run.verdict["reasons"], "report": run.report}


if __name__ == "__main__":
    main()
