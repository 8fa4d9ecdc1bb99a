"""The domain suite: held-out questions of a real dataset, scored by key facts, with the control."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from eval import domain
from repotune import datasets
from tests import training


class Oracle:
    """Answers every question with the dataset's own answer (what a model that knew it all would say)."""

    def __init__(self, rows):
        self.answers = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in rows}

    def answer(self, questions, max_new_tokens=64):
        return [self.answers[q] for q in questions]


class Parrot:
    """Says the same thing whatever it is asked."""

    def answer(self, questions, max_new_tokens=64):
        return ["This commit changed the code of the repository and its files." for _ in questions]


def test_right_answers_score_and_generic_or_other_items_answers_do_not(tmp_path, tiny):
    settings = training.prepared(tmp_path)
    folder = datasets.find(settings.data_dir, "proj")
    rows = datasets.read(folder, "eval")
    kinds = {r["kind"] for r in rows}
    assert {"commit", "commit_reverse", "definition"} <= kinds
    right = domain.run(Oracle(rows), rows, "oracle", folder.name)
    assert right.n == len(rows) and right.score == 1.0 and right.reverse_score == 1.0
    # The same right answers against another item's key facts: the scorer does not credit them.
    assert right.control <= 0.2, [(r.question, r.reply) for r in right.results if r.control]
    assert right.by_kind["commit"]["control"] == 0.0 and right.by_kind["commit_reverse"]["control"] == 0.0
    generic = domain.run(Parrot(), rows, "parrot", folder.name)
    assert generic.score == 0.0 and generic.reverse_score == 0.0


def test_the_cli_scores_the_base_and_writes_every_answer(tmp_path, tiny):
    training.prepared(tmp_path)
    config = training.write_config(tmp_path, tmp_path / "project")
    done = subprocess.run([sys.executable, "-m", "repotune.cli", "eval", "domain", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["score"] == 0.0 and report["n"] > 0  # the base knows nothing of this repository
    lines = [json.loads(line) for line in Path(report["results_path"]).read_text().splitlines()]
    assert len(lines) == report["n"] and all(r["reply"] is not None for r in lines)
    none = subprocess.run([sys.executable, "-m", "repotune.cli", "eval", "domain", "--dataset", "ffff", "--config",
                           str(config)], capture_output=True, text=True, timeout=600)
    assert none.returncode == 1 and "no dataset 'ffff'" in none.stderr
