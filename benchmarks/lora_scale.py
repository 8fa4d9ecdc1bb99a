"""An adapter's LoRA scaled down after training: what it keeps of the domain, and of the base's general answers.

A LoRA adds `scale · B·A` to each weight it targets, with `scale = lora_alpha / r`. Scaling it by s < 1
after training moves the model part of the way back to the base (an interpolation between the base and
the fine-tuned weights, as WiSE-FT does between whole models). Facts trained to a very low loss may
survive a smaller step while the drift that changes general answers shrinks with it. This probe takes a
gate's candidate (a `benchmarks.first_answer` run folder, or any data_dir with a registered version),
writes copies of its adapter with `lora_alpha` multiplied by each scale, and scores the base and every
copy in-process, the same way for all: the general set's eval split (greedy; multiple choice with
`--mc`) and the held-out domain questions the gate asked (those about the facts the budget covered).
The general answers are compared with the base's one by one: turned wrong, turned right.

    python -m benchmarks.lora_scale --run /tmp/first-answer-XXXX [--version 1] [--scales 1,0.75,0.5] [--mc]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def scaled(adapter: Path, scale: float, folder: Path) -> Path:
    """A copy of `adapter` whose LoRA adds `scale` times what it did (its `lora_alpha` scaled)."""
    out = folder / f"scale-{scale:g}"
    shutil.copytree(adapter, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["lora_alpha"] = config["lora_alpha"] * scale
    if config.get("alpha_pattern"):
        config["alpha_pattern"] = {k: v * scale for k, v in config["alpha_pattern"].items()}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def score(base: Path, adapter: Path | None, rows: list[dict[str, Any]], mc: bool) -> dict[str, Any]:
    from eval import domain, general, questions
    from eval.local import LocalModel

    started = time.monotonic()
    model = LocalModel(base, adapter)
    g = general.run(model, questions.load(split="eval"), "probe", mc=mc)
    d = domain.run(model, rows, "probe", "covered")
    return {"general": g.score, "general_mc": g.mc_score, "domain": d.score,
            "by_kind": {k: v["score"] for k, v in d.by_kind.items()}, "seconds": round(time.monotonic() - started, 1),
            "general_answers": {r.id: [r.reply, r.correct] for r in g.results},
            "domain_answers": [[r.question, r.reply, r.correct] for r in d.results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a benchmarks.first_answer run folder (its config.toml and state)")
    ap.add_argument("--version", type=int, default=0, help="the version to scale (default: the lineage's newest)")
    ap.add_argument("--scales", default="1,0.75,0.5")
    ap.add_argument("--mc", action="store_true", help="multiple choice as well (about 40 s a model on smol)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "lora-scale"))
    a = ap.parse_args()

    from benchmarks.learning import _churn
    from eval.judge import covered
    from repotune import config as cfg
    from repotune import datasets, models, registry
    from repotune import db as store

    settings = cfg.load(Path(a.run) / "config.toml", env={})
    db = store.open_db(store.db_path(settings.data_dir))
    versions = registry.versions(db, settings.lineage)
    adapter = next(v for v in reversed(versions) if not a.version or v.version == a.version)
    base = models.resolve(settings.config.model.base)
    folder = datasets.find(settings.data_dir, settings.lineage, adapter.manifest.dataset)
    rows, scope = covered([r for r in datasets.read(folder, "eval") if r.get("key_facts")], adapter)
    print(f"{settings.lineage} v{adapter.version} on {base.spec}; {scope}", flush=True)
    scales = [float(s) for s in a.scales.split(",")]
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lora-scale-") as tmp:
        points.append({"scale": 0.0, **score(base.path, None, rows, a.mc)})
        print("base", {k: v for k, v in points[-1].items() if not k.endswith("_answers")}, flush=True)
        for s in scales:
            points.append({"scale": s, **score(base.path, scaled(adapter.path, s, Path(tmp)), rows, a.mc)})
            points[-1]["general_churn"] = _churn(points[0], points[-1])
            print(f"scale {s:g}", {k: v for k, v in points[-1].items() if not k.endswith("_answers")}, flush=True)
    result = {"run": a.run, "base": base.spec, "lineage": settings.lineage, "version": adapter.version,
              "covered": scope, "held_out": len(rows), "points": points}
    out = Path(f"{a.out}-{base.spec.replace(':', '-')}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
