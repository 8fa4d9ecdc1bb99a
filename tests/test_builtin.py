"""Building builtin:tiny: a cached, deterministic, crash-safe build of a servable model.

Most tests build a micro model (same code, a recipe of one small layer) from a slice of
the shipped inputs into a temporary cache, in seconds; `tiny` (the real build, shared
with the rest of the suite) is used where the shipped model itself is the point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from repotune import builtin, models

from .conftest import micro_recipe

MICRO = micro_recipe()


def test_tokenizer_builds_alone_in_seconds_with_a_chat_template(tmp_path, inputs):
    start = time.perf_counter()
    built = builtin.build_tokenizer(builtin.Recipe(), builtin.Inputs.shipped(), cache=tmp_path / "c")
    assert time.perf_counter() - start < 30
    tok = AutoTokenizer.from_pretrained(built.path)
    assert len(tok) <= builtin.Recipe().vocab_size
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "def chunk(text: str) -> list[str]:\n    return text.split()  # café, 300,000 km/s"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: every text round-trips
    messages = [{"role": "user", "content": "What is 7 times 8?"}, {"role": "assistant", "content": "56"}]
    enc = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    # The loss mask covers exactly the assistant's answer and its end-of-turn token.
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "56<|im_end|>"
    prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nWhat is 7 times 8?<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_build_is_deterministic(tmp_path, inputs):
    a = builtin.build_tokenizer(MICRO, inputs, cache=tmp_path / "a")
    b = builtin.build_tokenizer(MICRO, inputs, cache=tmp_path / "b")
    assert (a.path / "tokenizer.json").read_bytes() == (b.path / "tokenizer.json").read_bytes()


def test_build_makes_a_normal_model_folder_and_is_cached(tmp_path, inputs):
    first = builtin.build_model(MICRO, inputs, cache=tmp_path)
    assert not first.cached and first.path == tmp_path / "models" / first.key
    model = AutoModelForCausalLM.from_pretrained(first.path)
    config = model.config
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.head_dim == 64 and config.hidden_size % 32 == 0 and config.intermediate_size % 32 == 0
    assert config.vocab_size % 64 == 0
    assert AutoTokenizer.from_pretrained(first.path).chat_template == builtin.CHAT_TEMPLATE
    record = json.loads((first.path / "repotune-build.json").read_text())
    assert record["parameters"] == sum(p.numel() for p in model.parameters())

    start = time.perf_counter()
    again = builtin.build_model(MICRO, inputs, cache=tmp_path)
    assert again.cached and again.path == first.path
    assert time.perf_counter() - start < 2


def test_same_inputs_same_weights(tmp_path, inputs):
    a = builtin.build_model(MICRO, inputs, cache=tmp_path / "a")
    b = builtin.build_model(MICRO, inputs, cache=tmp_path / "b")
    assert models.fingerprint(a.path) == models.fingerprint(b.path)


def test_editing_the_general_set_rebuilds_under_a_new_fingerprint(tmp_path, inputs):
    before = builtin.build_model(MICRO, inputs, cache=tmp_path)
    lines = inputs.general.read_text().splitlines()
    item = json.loads(lines[0])
    item["aliases"] = [*item["aliases"], "an extra alias"]
    inputs.general.write_text("\n".join([json.dumps(item), *lines[1:]]) + "\n")
    after = builtin.build_model(MICRO, inputs, cache=tmp_path)
    assert not after.cached and after.key != before.key
    assert models.fingerprint(after.path) != models.fingerprint(before.path)


def test_an_interrupted_build_leaves_nothing_that_looks_built(tmp_path, inputs):
    def interrupt(stage, done, total, metrics):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        builtin.build_model(MICRO, inputs, cache=tmp_path, progress=interrupt)
    key = builtin.model_key(MICRO, inputs)
    assert not (tmp_path / "models" / key).exists()
    assert not list((tmp_path / "models").glob(".tmp-*"))
    assert not builtin.build_model(MICRO, inputs, cache=tmp_path).cached


def test_a_build_killed_with_sigkill_is_redone(tmp_path, inputs):
    slow = json.dumps({**MICRO.__dict__, "epochs": 400})
    script = (
        "import json, sys; from pathlib import Path; from repotune import builtin; "
        f"r = builtin.Recipe(**json.loads({slow!r})); "
        f"i = builtin.Inputs(Path({str(inputs.general)!r}), Path({str(inputs.corpus)!r})); "
        "cb = lambda s, d, t, m: print(d, flush=True) if d == 3 else None; "
        f"builtin.build_model(r, i, cache=Path({str(tmp_path)!r}), progress=cb)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "3"  # training is under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    recipe = builtin.Recipe(**json.loads(slow))
    key = builtin.model_key(recipe, inputs)
    assert not (tmp_path / "models" / key).exists()
    assert list((tmp_path / "models").glob(f".tmp-{key}-*"))  # the half-written folder
    # The next build of that recipe clears what the killed one left, then starts afresh.
    with pytest.raises(KeyboardInterrupt):
        builtin.build_model(recipe, inputs, cache=tmp_path, progress=_stop_at(1))
    assert not list((tmp_path / "models").glob(f".tmp-{key}-*"))
    assert not (tmp_path / "models" / key).exists()


def _stop_at(step):
    def cb(stage, done, total, metrics):
        if done == step:
            raise KeyboardInterrupt

    return cb


@pytest.mark.parametrize(
    ("change", "message"),
    [({"hidden_size": 192, "heads": 4}, "head size 48"), ({"intermediate_size": 100}, "multiple of 32")],
)
def test_shapes_the_engine_cannot_serve_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        builtin.Recipe(**change).check()
