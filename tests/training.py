"""A small repository ingested into a dataset, and settings to train on it, for the trainer's tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune import config as cfg
from tests.ingest.conftest import GitRepo

# What the trainer is taught in the tests: one phrasing of each fact, few steps, a high
# constant rate, so that builtin:tiny memorises a handful of answers in seconds (the
# recipe that generalises is the learning issue's, measured in benchmarks/).
MEMORISE = {"learning_rate": 5e-3, "scheduler": "constant", "warmup_ratio": 0.0, "batch_size": 8, "epochs": 100}
SUBJECTS = ("Teach the parser to skip blank lines", "Strip trailing spaces before parsing",
            "Count the words of each parsed line")


def small_repo(path: Path) -> GitRepo:
    repo = GitRepo(path)
    repo.commit(SUBJECTS[0], {"parse.py": "def parse(text):\n    return [l for l in text.splitlines() if l]\n"})
    repo.commit(SUBJECTS[1], {"parse.py": "def parse(text):\n    return [l.rstrip() for l in text.splitlines()]\n"})
    repo.commit(SUBJECTS[2], {"words.py": "def words(line):\n    return len(line.split())\n"})
    return repo


def settings(root: Path, repo: Path, data: dict[str, Any] | None = None, **train: Any) -> cfg.Settings:
    raw = {"paths": {"data_dir": str(root / "state")}, "ingest": {"repo": str(repo), "workers": 1},
           "tuner": {"lineage": "proj", "data": {"generators": ["templates"], "paraphrases": 1, **(data or {})}},
           "train": train}
    return cfg.Settings(config=cfg.parse(raw), source=None, root=root, secrets=cfg.Secrets())


def write_config(root: Path, repo: Path, **train: Any) -> Path:
    """The same settings as a config file, for the command line."""
    import tomli_w

    path = root / "config.toml"
    path.write_text(tomli_w.dumps({
        "paths": {"data_dir": str(root / "state")}, "ingest": {"repo": str(repo), "workers": 1},
        "tuner": {"lineage": "proj", "data": {"generators": ["templates"], "paraphrases": 1}}, "train": train}))
    return path


def prepared(root: Path, data: dict[str, Any] | None = None, **train: Any) -> cfg.Settings:
    """A repository of three commits, ingested and built into a dataset, under `root`."""
    from ingest.run import ingest
    from tuner.data.build import build

    repo = small_repo(root / "project")
    s = settings(root, repo.path, data, **train)
    ingest(s)
    build(s)
    return s


@dataclass
class Trained:
    settings: cfg.Settings
    adapter: Path
    question: str  # a trained commit question, and the subject of that commit
    subject: str


def trained(root: Path, **train: Any) -> tuple[Any, Trained]:
    """`repotune train`'s function run on the small repository under `root` with these `[train]`
    settings: its result, and the adapter with a trained commit question and that commit's subject."""
    from tuner.data.build import latest
    from tuner.train.run import train as run

    s = prepared(root, **train)
    result = run(s)
    question, subject = commit_example(latest(s))
    return result, Trained(s, result.adapter.path, question, subject)


def commit_example(folder: Path) -> tuple[str, str]:
    """A commit question of the training split and its commit's subject."""
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    for r in rows:
        subject = next((s for s in SUBJECTS if s in r["messages"][-1]["content"]), None)
        if r["kind"] == "commit" and subject:
            return r["messages"][0]["content"], subject
    raise AssertionError(f"no commit question in {folder}/train.jsonl")


def greedy(base: Path, adapter: Path | None, question: str, tokens: int = 48) -> str:
    """The greedy answer of the base, or of the base with `adapter` loaded by PEFT."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=False)
    return str(tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True))
