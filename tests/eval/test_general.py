"""`repotune eval general` on the real builtin:tiny, with and without adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.mc_scoring import whole_passes
from eval.local import LocalModel
from repotune import models
from repotune.cli import app
from tests.lora import train_lora

runner = CliRunner()
FRANCE = "What is the capital of France?"  # gk-0002, in the eval split


def eval_general(tmp_path, *args: str):
    config = tmp_path / "config.toml"
    config.write_text('[paths]\ndata_dir = "state"\n')
    return runner.invoke(app, ["eval", "general", "--config", str(config), "--json", *args])


@pytest.mark.slow
def test_builtin_tiny_knows_the_eval_split(tiny, tmp_path):
    result = eval_general(tmp_path, "--model", "builtin:tiny", "--mc")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] >= 100
    assert report["score"] >= 0.95
    assert report["mc_score"] >= 0.95
    assert report["base_fingerprint"] == tiny.fingerprint
    # Every answer is kept, not only the total, under the data dir by default.
    rows = [json.loads(line) for line in Path(report["results_path"]).read_text().splitlines()]
    assert report["results_path"].startswith(str(tmp_path / "state" / "evals"))
    assert len(rows) == report["n"] and sum(r["correct"] for r in rows) == report["correct"]
    assert {"id", "question", "expected", "reply", "correct", "mc_choice", "mc_correct"} <= set(rows[0])


@pytest.mark.slow
def test_an_adapter_is_evaluated_and_one_for_another_base_is_refused(tiny, tmp_path):
    adapter = train_lora(tiny.path, [(FRANCE, "Lyon")], tmp_path / "adapter")
    assert LocalModel(tiny.path).answer([FRANCE]) == ["Paris"]
    assert LocalModel(tiny.path, adapter).answer([FRANCE]) == ["Lyon"]

    refused = eval_general(tmp_path, "--model", str(tiny.path), "--adapter", str(adapter))
    assert refused.exit_code == 1 and "does not record the base model" in refused.stderr

    models.record_base(adapter, tiny)
    out = tmp_path / "with-adapter.jsonl"
    result = eval_general(tmp_path, "--model", str(tiny.path), "--adapter", str(adapter), "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = {r["question"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows[FRANCE]["reply"] == "Lyon" and rows[FRANCE]["correct"] is False

    manifest = json.loads((adapter / "manifest.json").read_text())
    manifest["base_fingerprint"] = "f" * 16
    (adapter / "manifest.json").write_text(json.dumps(manifest))
    refused = eval_general(tmp_path, "--model", str(tiny.path), "--adapter", str(adapter))
    assert refused.exit_code == 1
    assert "f" * 16 in refused.stderr and tiny.fingerprint in refused.stderr and "refused" in refused.stderr


@pytest.mark.slow
def test_options_scored_after_one_pass_over_the_prompt_are_each_whole_replys_likelihood(tiny, tmp_path):
    # options of different lengths, so that the shorter ones are padded; with an adapter too (PEFT's forward)
    adapter = train_lora(tiny.path, [(FRANCE, "Lyon")], tmp_path / "adapter", steps=20)
    options = ["Paris", "Lyon", "The city of Marseille, in the south", "Nice"]
    for local in (LocalModel(tiny.path), LocalModel(tiny.path, adapter)):
        got = local.option_logprobs(FRANCE, options)
        want = whole_passes(local, FRANCE, options)  # one forward over the prompt and each option
        assert got == pytest.approx(want, abs=1e-3)
        assert len(set(want)) == len(want)  # the options are told apart, so the comparison means something
    assert max(range(4), key=got.__getitem__) == 1  # the adapter's answer is its likeliest option


def test_an_unreachable_model_id_is_a_clear_error_not_a_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    result = eval_general(tmp_path, "--model", "acme/never-downloaded")
    assert result.exit_code == 1
    assert "cannot fetch model 'acme/never-downloaded'" in result.stderr
    assert "Traceback" not in result.output
